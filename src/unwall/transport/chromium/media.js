// The media carrier, the page's half: a video call whose encoded frames carry the tunnel.
//
// Each end sends one video track (a canvas, 640x360 at 30 frames a second: a webcam-sized
// call) through RTCRtpScriptTransform into carrier-worker.js, which appends QUIC datagrams to
// the encoded frames and takes them out at the other end. The codecs are VP8 with RTX (NACK
// repairs losses; no RED or ULPFEC, which doubled the bytes); GoogCC paces the call, and this
// page reads its estimate (availableOutgoingBitrate) every RATE_POLL_MS for the worker, which
// never feeds much above it. The SDP asks for a start bitrate so that the first seconds are not
// spent probing from 300 kbit/s (x-google-start-bitrate).
//
// Start-up: GoogCC alone grows its estimate by about 8 % a second once past its first probes,
// half a minute from 2 to 16 Mbit/s, and burst loss can spoil those probes. But it probes
// again, at once, whenever the encoder's maximum bitrate is raised above its estimate. So the
// encoding's maxBitrate starts at twice the start bitrate and doubles whenever the estimate
// comes within RAISE_AT of it (at most once a RAISE_EVERY_MS), up to maxKbps: each raise is a
// probe, and a path's rate is found in a few seconds. (A fixed high maxBitrate would lift the
// cap a small picture puts on the estimate, but probe only once.)
//
// Negotiation is the SDP's: the offer has a sendrecv video section beside the data channel;
// an answer that sends video back (sendrecv) chose the media carrier, anything else (an older
// peer: recvonly or inactive) the data channel, and then no video is sent at all.
"use strict";

const RATE_POLL_MS = 200;
const RAISE_AT = 0.6;
const RAISE_EVERY_MS = 1000;
const CODECS = new Set(["video/vp8", "video/rtx"]);

export const DEFAULTS = {
  width: 640,
  height: 360,
  fps: 30,
  startKbps: 2500,
  maxKbps: 50000,
  fill: 0.9,
};

function picture(width, height, fps) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  const started = performance.now();
  // A room with a clock on the wall: mostly still, as a webcam's picture is, so the encoder's
  // own frames stay small and the call's bytes are the tunnel's.
  const draw = () => {
    const t = (performance.now() - started) / 1000;
    const gradient = context.createLinearGradient(0, 0, width, height);
    gradient.addColorStop(0, "#35424a");
    gradient.addColorStop(1, "#6b7b83");
    context.fillStyle = gradient;
    context.fillRect(0, 0, width, height);
    context.fillStyle = "#d9c8a9";
    context.beginPath();
    context.ellipse(width / 2 + 6 * Math.sin(t / 3), height * 0.55, width * 0.12, height * 0.22, 0, 0, 2 * Math.PI);
    context.fill();
    context.fillStyle = "#eeeeee";
    context.font = `${Math.round(height / 18)}px sans-serif`;
    context.fillText(new Date().toLocaleTimeString(), width * 0.04, height * 0.1);
  };
  draw();
  const timer = setInterval(draw, 1000 / fps);
  const track = canvas.captureStream(fps).getVideoTracks()[0];
  return { track, stop: () => { clearInterval(timer); track.stop(); } };
}

function preferCodecs(transceiver) {
  if (!transceiver.setCodecPreferences || !RTCRtpReceiver.getCapabilities) return;
  const capabilities = RTCRtpReceiver.getCapabilities("video");
  const codecs = capabilities.codecs.filter((c) => CODECS.has(c.mimeType.toLowerCase()));
  if (codecs.length) transceiver.setCodecPreferences(codecs);
}

/** The SDP with a start and a maximum bitrate on every VP8 payload type. */
export function withStartBitrate(sdp, startKbps, maxKbps) {
  const lines = sdp.split("\r\n");
  const vp8 = new Set();
  for (const line of lines) {
    const match = /^a=rtpmap:(\d+) VP8\/90000/i.exec(line);
    if (match) vp8.add(match[1]);
  }
  const extra = `x-google-start-bitrate=${startKbps};x-google-max-bitrate=${maxKbps}`;
  const out = [];
  for (const line of lines) {
    const fmtp = /^a=fmtp:(\d+) (.*)$/.exec(line);
    if (fmtp && vp8.has(fmtp[1])) {
      if (!line.includes("x-google-start-bitrate")) {
        out.push(`${line};${extra}`);
        vp8.delete(fmtp[1]);
        continue;
      }
    }
    out.push(line);
    const rtpmap = /^a=rtpmap:(\d+) VP8\/90000/i.exec(line);
    if (rtpmap && !lines.some((l) => l.startsWith(`a=fmtp:${rtpmap[1]} `))) {
      out.push(`a=fmtp:${rtpmap[1]} ${extra}`);
      vp8.delete(rtpmap[1]);
    }
  }
  return out.join("\r\n");
}

/**
 * Whether an SDP's video section sends and receives (sendrecv, said or by default) on a
 * non-zero port: both ways, as the media carrier needs (an end that only sends would have
 * its other direction black-holed).
 */
export function sendsVideo(sdp) {
  const sections = sdp.split(/\r\nm=/).slice(1);
  return sections.some((section) =>
    section.startsWith("video ") && !section.startsWith("video 0 ")
    && !/\r\na=(recvonly|sendonly|inactive)\r\n/.test(`\r\n${section}\r\n`));
}

export class MediaCarrier {
  /**
   * @param {RTCPeerConnection} pc
   * @param {{workerUrl: string, onDatagram: (data: ArrayBuffer) => void, settings?: object}} options
   */
  constructor(pc, options) {
    this.pc = pc;
    this.settings = { ...DEFAULTS, ...(options.settings || {}) };
    this.onDatagram = options.onDatagram;
    this.worker = new Worker(options.workerUrl);
    this.worker.postMessage({ type: "settings", settings: {
      fill: this.settings.fill, ceilingBps: this.settings.maxKbps * 1000 } });
    this.worker.postMessage({ type: "rate", bps: this.settings.startKbps * 1000 });
    this._countsWanted = []; // resolvers of counts(), answered in order
    this.worker.onmessage = (event) => {
      if (event.data.type === "datagrams") for (const data of event.data.datagrams) this.onDatagram(data);
      else if (event.data.type === "counts" && this._countsWanted.length) this._countsWanted.shift()(event.data.counts);
    };
    this.stopped = false;
    this.transceiver = null;
    this.picture = null;
    this.timer = null;
    this.active = false;
    this.estimateBps = 0;
    this.maxBps = this.settings.startKbps * 2000;
    this.raisedAt = 0;
  }

  _attach(transceiver) {
    this.transceiver = transceiver;
    this.picture = this.picture || picture(this.settings.width, this.settings.height, this.settings.fps);
    preferCodecs(transceiver);
    transceiver.sender.transform = new RTCRtpScriptTransform(this.worker, { side: "send" });
    transceiver.receiver.transform = new RTCRtpScriptTransform(this.worker, { side: "receive" });
  }

  /** Before the offer is made: a sendrecv video section carrying the tunnel. */
  offer() {
    this.picture = picture(this.settings.width, this.settings.height, this.settings.fps);
    const transceiver = this.pc.addTransceiver(this.picture.track, {
      direction: "sendrecv",
      sendEncodings: [{ maxBitrate: this.maxBps }],
    });
    this._attach(transceiver);
  }

  /** After the remote offer is set: take its video section as the carrier, if it has one. */
  answer() {
    const transceiver = this.pc.getTransceivers().find(
      (t) => t.receiver.track && t.receiver.track.kind === "video" && !t.stopped);
    if (!transceiver) return false;
    this._attach(transceiver);
    transceiver.direction = "sendrecv";
    transceiver.sender.replaceTrack(this.picture.track);
    return true;
  }

  /** An SDP this end sets or sends, with the start bitrate asked for. */
  munge(sdp) {
    return withStartBitrate(sdp, this.settings.startKbps, this.settings.maxKbps);
  }

  /** The carrier is in use (both ends send video): start following the estimate. */
  async start() {
    if (this.stopped) return;
    this.active = true;
    await this._setMaxBitrate(this.maxBps);
    if (this.stopped) return; // stopped meanwhile: no timer to outlive it
    this.timer = setInterval(() => this._pollRate(), RATE_POLL_MS);
  }

  async _setMaxBitrate(bps) {
    const sender = this.transceiver.sender;
    const parameters = sender.getParameters();
    if (!parameters.encodings || !parameters.encodings.length) return;
    parameters.encodings[0].maxBitrate = bps;
    try { await sender.setParameters(parameters); } catch (error) { /* keep the last one */ }
  }

  /** Raise the encoder's maximum (and so make GoogCC probe) while the estimate nears it. */
  _raise() {
    const limit = this.settings.maxKbps * 1000;
    const now = performance.now();
    if (this.maxBps >= limit || this.estimateBps < RAISE_AT * this.maxBps) return;
    if (now - this.raisedAt < RAISE_EVERY_MS) return;
    this.raisedAt = now;
    this.maxBps = Math.min(limit, 2 * Math.max(this.maxBps, this.estimateBps));
    this._setMaxBitrate(this.maxBps);
  }

  /** Not used after all (the other end answered without video): send no video. */
  async decline() {
    if (this.transceiver) {
      try { await this.transceiver.sender.replaceTrack(null); } catch (error) { /* closed */ }
    }
    this.stop();
  }

  async _pollRate() {
    if (this.pc.connectionState === "closed") return;
    try {
      const stats = await this.pc.getStats();
      for (const report of stats.values()) {
        if (report.type === "outbound-rtp" && report.kind === "video") {
          this.sent = { nacks: report.nackCount, rtxBytes: report.retransmittedBytesSent,
            bytes: report.bytesSent, target: report.targetBitrate, limit: report.qualityLimitationReason };
        } else if (report.type === "remote-inbound-rtp" && report.kind === "video") {
          this.remote = { lost: report.packetsLost, fraction: report.fractionLost, rtt: report.roundTripTime };
        }
        if (report.type === "candidate-pair" && report.nominated && report.availableOutgoingBitrate) {
          this.estimateBps = report.availableOutgoingBitrate;
          this.worker.postMessage({ type: "rate", bps: this.estimateBps });
          this._raise();
        }
      }
    } catch (error) { /* the connection is closing */ }
  }

  send(data) {
    if (!this.active) return false;
    this.worker.postMessage({ type: "datagram", data }, [data]);
    return true;
  }

  counts() {
    if (this.stopped) return Promise.resolve(null);
    return new Promise((resolve) => {
      this._countsWanted.push((counts) => resolve({ ...counts, maxBps: this.maxBps, sent: this.sent, remote: this.remote }));
      this.worker.postMessage({ type: "counts" });
    });
  }

  stop() {
    this.stopped = true;
    this.active = false;
    for (const resolve of this._countsWanted.splice(0)) resolve(null);
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    if (this.picture) this.picture.stop();
    this.worker.terminate();
  }
}
