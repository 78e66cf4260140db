// One peer connection of unwall.transport.chromium, and the WebSocket that joins it to the
// unwall process: text frames are commands and events (JSON), binary frames are QUIC
// datagrams, unchanged, both ways.
//
// Every connection has a data channel (label "unwall", unordered, no retransmissions). With
// the media carrier wanted (command.carriers starts with "media") the offer also has a video
// section, and the datagrams ride in the call's video frames instead (media.js) when the
// other end sends video back; otherwise they ride the data channel, as with older peers.
"use strict";

import { MediaCarrier, sendsVideo } from "./media.js";

const GATHER_TIMEOUT_MS = 15000; // TURN over TCP or TLS on a slow path takes a while

function gathered(pc) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") {
        clearTimeout(timer);
        resolve();
      }
    });
  });
}

export function openPeer(command, base, token) {
  const ws = new WebSocket(`${base}/peer/${command.id}?t=${encodeURIComponent(token)}`);
  ws.binaryType = "arraybuffer";
  const wantsMedia = (command.carriers || []).includes("media") && "RTCRtpScriptTransform" in self;
  let pc = null;
  let channel = null;
  let media = null;
  let carrier = null; // "media" or "datachannel", once known
  let told = false;
  let dead = false;

  const tell = (message) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
  };
  const die = (why) => {
    if (dead) return;
    dead = true;
    tell({ type: "dead", why });
    if (media) media.stop();
    try { if (channel) channel.close(); } catch (error) { /* already closed */ }
    try { if (pc) pc.close(); } catch (error) { /* already closed */ }
    try { ws.close(); } catch (error) { /* already closed */ }
  };
  const deliver = (data) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(data);
  };
  // Open once the chosen carrier can carry: its data channel, or the call once connected.
  const maybeOpen = () => {
    if (told || dead || carrier === null) return;
    const ready = carrier === "media"
      ? pc.connectionState === "connected"
      : channel !== null && channel.readyState === "open";
    if (!ready) return;
    told = true;
    if (carrier === "media") media.start();
    tell({
      type: "open",
      carrier,
      maxMessageSize: pc.sctp ? pc.sctp.maxMessageSize : 0,
    });
  };
  const choose = (chosen) => {
    carrier = chosen;
    if (chosen !== "media" && media) {
      media.decline();
      media = null;
    }
    maybeOpen();
  };
  const attach = (ch) => {
    channel = ch;
    ch.binaryType = "arraybuffer";
    ch.onopen = maybeOpen;
    ch.onclose = () => die("its data channel closed");
    ch.onmessage = (event) => {
      if (event.data instanceof ArrayBuffer) deliver(event.data);
    };
    if (ch.readyState === "open") maybeOpen();
  };

  ws.onclose = () => die("closed");
  ws.onmessage = async (event) => {
    if (typeof event.data !== "string") {
      if (carrier === "media" && media) {
        media.send(event.data);
      } else if (channel && channel.readyState === "open" && channel.bufferedAmount <= command.maxBuffered) {
        // Above the bound the message is dropped: QUIC, end to end, resends it.
        channel.send(event.data);
      }
      return;
    }
    const message = JSON.parse(event.data);
    if (message.type === "answer") {
      try {
        const sdp = media ? media.munge(message.sdp) : message.sdp;
        await pc.setRemoteDescription({ type: "answer", sdp });
        tell({ type: "remote-set" });
        choose(media && sendsVideo(message.sdp) ? "media" : "datachannel");
      } catch (error) {
        tell({ type: "error", message: `${error.name}: ${error.message}` });
      }
    } else if (message.type === "counts") {
      tell({ type: "counts", counts: media ? await media.counts() : null, carrier });
    } else if (message.type === "close") {
      die("closed");
    }
  };
  ws.onopen = async () => {
    try {
      pc = new RTCPeerConnection(command.config);
      pc.onconnectionstatechange = () => {
        if (pc.connectionState === "failed" || pc.connectionState === "closed") {
          die(`WebRTC connection ${pc.connectionState}`);
        } else {
          maybeOpen();
        }
      };
      pc.oniceconnectionstatechange = () => {
        if (pc.iceConnectionState === "failed") die("ICE failed: no candidate pair got through");
      };
      const mediaOptions = { workerUrl: command.workerUrl, onDatagram: deliver, settings: command.media };
      if (command.role === "offer") {
        attach(pc.createDataChannel(command.label, command.channel));
        if (wantsMedia) {
          media = new MediaCarrier(pc, mediaOptions);
          media.offer();
        }
        const offer = await pc.createOffer();
        await pc.setLocalDescription(media ? { type: "offer", sdp: media.munge(offer.sdp) } : offer);
      } else {
        pc.ondatachannel = (event) => {
          if (channel === null) attach(event.channel);
          else event.channel.close(); // one channel per client; anything more is not ours
        };
        const offersVideo = sendsVideo(command.offer);
        if (wantsMedia && offersVideo) media = new MediaCarrier(pc, mediaOptions);
        await pc.setRemoteDescription({ type: "offer", sdp: media ? media.munge(command.offer) : command.offer });
        if (media && !media.answer()) {
          media.stop();
          media = null;
        }
        const answer = await pc.createAnswer();
        await pc.setLocalDescription(media ? { type: "answer", sdp: media.munge(answer.sdp) } : answer);
        choose(media ? "media" : "datachannel");
      }
      await gathered(pc);
      tell({ type: "sdp", sdp: pc.localDescription.sdp });
    } catch (error) {
      tell({ type: "error", message: `${error.name}: ${error.message}` });
    }
  };
}
