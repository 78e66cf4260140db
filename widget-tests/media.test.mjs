// The media carrier's pure parts (src/unwall/transport/chromium/media.js), shared by the
// Chromium engine and the widget: which SDP carries video, and the start bitrate it asks.
import { describe, test } from "node:test";
import assert from "node:assert/strict";

import { sendsVideo, withStartBitrate } from "../src/unwall/transport/chromium/media.js";

const session = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
const video = (direction, port = 9) =>
  `m=video ${port} UDP/TLS/RTP/SAVPF 96 97\r\na=mid:0\r\na=${direction}\r\n` +
  "a=rtpmap:96 VP8/90000\r\na=rtcp-fb:96 nack\r\na=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n";
const data = "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:1\r\n";

describe("media.js: the SDP", () => {
  test("an end carries media when its video section is sendrecv, port not 0", () => {
    assert.equal(sendsVideo(session + video("sendrecv") + data), true);
    // an end that only sends (or only takes) video would leave one direction black-holed;
    // an older peer takes no video, or answers the section inactive or rejected
    assert.equal(sendsVideo(session + video("sendonly") + data), false);
    assert.equal(sendsVideo(session + video("recvonly") + data), false);
    assert.equal(sendsVideo(session + video("inactive") + data), false);
    assert.equal(sendsVideo(session + video("sendrecv", 0) + data), false);
    assert.equal(sendsVideo(session + data), false);
  });

  test("VP8 asks for a start and a maximum bitrate; other codecs are left alone", () => {
    const munged = withStartBitrate(session + video("sendrecv") + data, 2500, 50000);
    assert.ok(munged.includes(
      "a=rtpmap:96 VP8/90000\r\na=fmtp:96 x-google-start-bitrate=2500;x-google-max-bitrate=50000\r\n"));
    assert.ok(munged.includes("a=fmtp:97 apt=96\r\n"));
    // an existing fmtp line is extended, once; munging twice changes nothing more
    const withFmtp = (session + video("sendrecv")).replace("a=rtcp-fb:96", "a=fmtp:96 max-fr=30\r\na=rtcp-fb:96");
    const once = withStartBitrate(withFmtp, 2500, 50000);
    assert.ok(once.includes("a=fmtp:96 max-fr=30;x-google-start-bitrate=2500;x-google-max-bitrate=50000\r\n"));
    assert.equal(withStartBitrate(once, 2500, 50000), once);
    assert.equal(withStartBitrate(munged, 2500, 50000), munged);
  });
});
