// The media carrier's encoded transform (RTCRtpScriptTransform), in a worker: QUIC datagrams
// ride at the end of the encoded video frames of a real call.
//
// Sending, each frame the encoder makes leaves as
//
//     [the encoder's frame][u16 length, datagram]...[padding]
//     [u32 frame number][u32 datagrams' length][u32 padding length][u32 MAGIC]
//
// (big-endian), with as many datagrams as the congestion controller's estimate allows for the
// time since the last frame (a token bucket filled at FILL x availableOutgoingBitrate, which the
// page reads from getStats and posts here). Datagrams beyond that wait here, up to QUEUE_SECONDS
// at the estimate (older ones are dropped): QUIC, end to end, sees the delay and then the loss;
// nothing here fights GoogCC. At least one datagram rides each frame, whatever the estimate.
//
// Padding: GoogCC raises its estimate only while the call uses it; a sender that uses less is
// "application limited" and held where it is. QUIC's own controller starts slowly too, and
// neither would then grow: the two would wait for each other. So while datagrams have been
// waiting for room within the last BUSY_MS (a download is under way), the frames are filled to
// the budget with padding, as a call's encoder fills its target; idle, the call sends only the
// encoder's own small frames. Once the estimate nears the ceiling (the encoding's maximum)
// there is nothing left to grow, and no padding: on a fast path it cost CPU the data needed.
// Receiving, the trailer is read, each frame number is taken once (frames are sometimes delivered
// twice), the datagrams go to the page, and the decoder gets the encoder's frame back unchanged.
// SRTP encrypts all of it: the box sees a video call's packets, sizes and timing.
"use strict";

const MAGIC = 0x756e776c; // "unwl"
const TRAILER = 16;
const ENTRY_HEADER = 2;
const MAX_DATAGRAM = 0xffff;
const SEEN_FRAMES = 1024;
// Empty entries carry nothing, and a frame gives at most MAX_ENTRIES datagrams: a hostile
// peer's frame of tiny entries must not become hundreds of thousands of messages. (A frame
// of 60 KB holds about 50 full datagrams; QUIC's smallest, its ACKs, are about 50 bytes.)
const MIN_DATAGRAM = 1;
const MAX_ENTRIES = 256;

const settings = {
  fill: 0.9, // of the estimate; the encoder's own bytes count against it
  queueSeconds: 0.25, // of datagrams waiting for frames, at the estimate
  queueFrames: 8, // frames a datagram may wait through (a quarter of a second at 30 fps)
  minQueueBytes: 64 * 1024,
  burstSeconds: 0.1, // unused credit is kept this long at most
  busyMs: 1000, // padding while datagrams waited for room this recently
  ceilingBps: 50e6, // no padding once the estimate is near this (the encoding's maximum)
};

let rateBps = 0; // the congestion controller's estimate, bits per second
let queue = [];
let queued = []; // the frame number when each datagram of `queue` arrived
let queueHead = 0;
let queuedBytes = 0;
let tokens = 0;
let lastFrameAt = 0;
let backlogAt = -Infinity; // when datagrams last had to wait for a later frame
let frameNumber = 0;
const seen = new Set();
const seenOrder = [];
const counts = { sentFrames: 0, sentDatagrams: 0, sentBytes: 0, paddingBytes: 0, dropped: 0, receivedFrames: 0,
  receivedDatagrams: 0, duplicateFrames: 0, plainFrames: 0 };

function queueLimit() {
  return Math.max(settings.minQueueBytes, (rateBps / 8) * settings.queueSeconds);
}

function enqueue(datagram) {
  if (datagram.byteLength > MAX_DATAGRAM || queuedBytes + datagram.byteLength > queueLimit()) {
    counts.dropped += 1;
    return;
  }
  queue.push(datagram);
  queued.push(frameNumber);
  queuedBytes += datagram.byteLength;
}

/**
 * Datagrams that waited through more than `queueFrames` frames are dropped (QUIC resends
 * them): when the estimate collapses, what was queued at the old rate does not linger for
 * seconds. Counted in frames, not time, so that the wait for a call's first frames costs
 * nothing.
 */
function expire() {
  const oldest = frameNumber - settings.queueFrames;
  while (queueHead < queue.length && queued[queueHead] < oldest) {
    queuedBytes -= queue[queueHead].byteLength;
    queueHead += 1;
    counts.dropped += 1;
  }
}

function take(budget) {
  const taken = [];
  let size = 0;
  while (queueHead < queue.length) {
    const next = queue[queueHead];
    const cost = ENTRY_HEADER + next.byteLength;
    // At least one a frame (about 0.3 Mbit/s), whatever the estimate: a call's video does
    // not go lower either, and a tunnel starved by a collapsed estimate would never tell
    // GoogCC that it could send more.
    if (size + cost > budget && taken.length > 0) break;
    taken.push(next);
    size += cost;
    queueHead += 1;
    queuedBytes -= next.byteLength;
  }
  if (queueHead > 1024 && queueHead * 2 > queue.length) {
    queue = queue.slice(queueHead);
    queued = queued.slice(queueHead);
    queueHead = 0;
  }
  return { taken, size };
}

function carry(frame, controller) {
  const now = performance.now();
  const bytesPerSecond = (rateBps / 8) * settings.fill;
  if (lastFrameAt) {
    tokens += (bytesPerSecond * (now - lastFrameAt)) / 1000;
    tokens = Math.min(tokens, bytesPerSecond * settings.burstSeconds);
  }
  lastFrameAt = now;
  const original = new Uint8Array(frame.data);
  tokens -= original.byteLength + TRAILER;
  expire();
  const { taken, size } = take(Math.max(0, tokens));
  tokens -= size;
  if (queueHead < queue.length) backlogAt = now;
  let padding = 0;
  const growing = rateBps < 0.9 * settings.ceilingBps; // padding would buy nothing more
  if (growing && now - backlogAt < settings.busyMs && tokens > 0) {
    padding = Math.floor(tokens);
    tokens = 0;
  }
  const out = new Uint8Array(original.byteLength + size + padding + TRAILER);
  out.set(original, 0);
  const view = new DataView(out.buffer);
  let at = original.byteLength;
  for (const datagram of taken) {
    view.setUint16(at, datagram.byteLength);
    out.set(new Uint8Array(datagram), at + ENTRY_HEADER);
    at += ENTRY_HEADER + datagram.byteLength;
  }
  at += padding; // zeros: SRTP encrypts them like the rest
  frameNumber = (frameNumber + 1) >>> 0;
  view.setUint32(at, frameNumber);
  view.setUint32(at + 4, size);
  view.setUint32(at + 8, padding);
  view.setUint32(at + 12, MAGIC);
  frame.data = out.buffer;
  counts.sentFrames += 1;
  counts.sentDatagrams += taken.length;
  counts.sentBytes += size;
  counts.paddingBytes += padding;
  controller.enqueue(frame);
}

function firstTime(number) {
  if (seen.has(number)) return false;
  seen.add(number);
  seenOrder.push(number);
  if (seenOrder.length > SEEN_FRAMES) seen.delete(seenOrder.shift());
  return true;
}

function uncarry(frame, controller) {
  const data = new Uint8Array(frame.data);
  const end = data.byteLength - TRAILER;
  if (end < 0) {
    counts.plainFrames += 1;
    controller.enqueue(frame);
    return;
  }
  const view = new DataView(frame.data);
  const size = view.getUint32(end + 4);
  const padding = view.getUint32(end + 8);
  if (view.getUint32(end + 12) !== MAGIC || size + padding > end) {
    counts.plainFrames += 1; // not ours: hand it on untouched
    controller.enqueue(frame);
    return;
  }
  const start = end - padding - size;
  const stop = start + size;
  if (firstTime(view.getUint32(end))) {
    const datagrams = [];
    let at = start;
    while (at + ENTRY_HEADER <= stop && datagrams.length < MAX_ENTRIES) {
      const length = view.getUint16(at);
      at += ENTRY_HEADER;
      if (at + length > stop) break; // a malformed tail: what was whole is kept
      if (length >= MIN_DATAGRAM) datagrams.push(frame.data.slice(at, at + length));
      at += length;
    }
    counts.receivedFrames += 1;
    counts.receivedDatagrams += datagrams.length;
    if (datagrams.length) self.postMessage({ type: "datagrams", datagrams }, datagrams);
  } else {
    counts.duplicateFrames += 1;
  }
  frame.data = frame.data.slice(0, start);
  controller.enqueue(frame);
}

self.onrtctransform = (event) => {
  const { readable, writable, options } = event.transformer;
  const transform = options && options.side === "send" ? carry : uncarry;
  readable.pipeThrough(new TransformStream({ transform })).pipeTo(writable).catch(() => {});
};

self.onmessage = (event) => {
  const message = event.data;
  if (message.type === "datagram") enqueue(message.data);
  else if (message.type === "rate") rateBps = message.bps;
  else if (message.type === "settings") Object.assign(settings, message.settings);
  else if (message.type === "ping") self.postMessage({ type: "pong" });
  else if (message.type === "counts") self.postMessage({ type: "counts", counts: { ...counts, queuedBytes, rateBps } });
};
