// Fakes of the browser APIs the monitor uses, for the Node tests: a WebSocket driven by the test,
// a peer connection whose getStats() the test resolves, the page's pagehide. Outside test/, where
// `node --test` would take it for a test file.

/** Resolves once `cond()` holds, checked after every turn of the event loop (no fixed sleep);
 * throws after `turns` turns. */
export async function until(cond, turns = 100000) {
  for (let i = 0; i < turns; i++) {
    if (cond()) return;
    await new Promise((r) => setImmediate(r));
  }
  throw new Error("until: condition never held: " + cond);
}

/** A WebSocket whose daemon side is the test: open(), reply(), drop(). */
export class FakeWebSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeWebSocket.all.push(this);
  }
  send(data) {
    this.sent.push(data);
  }
  close(code = 1000, reason = "") {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.closedWith = code;
    queueMicrotask(() => this.onclose?.({ code, reason }));
  }
  open() {
    this.readyState = 1;
    this.onopen?.();
  }
  reply(message) {
    this.onmessage?.({ data: JSON.stringify(message) });
  }
  welcome(extra = {}) {
    this.reply({ t: "welcome", session: "1", ack_interval_s: 1, max_message_bytes: 1048576, max_frames: 1000, v: 1, ...extra });
  }
  drop(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code, reason: "" });
  }
  /** The frames of every message after the hello. */
  frames() {
    return this.sent.slice(1).flatMap((m) => JSON.parse(m));
  }
}

/** A peer connection: each getStats() waits for the test's `resolve` (or `reject`). */
export class FakePeerConnection extends EventTarget {
  static all = [];
  constructor() {
    super();
    FakePeerConnection.all.push(this);
    this.signalingState = "stable";
    this.iceConnectionState = "new";
    this.connectionState = "new";
    this.localDescription = null;
    this.senders = [];
    this.pending = [];
    this.inFlight = 0;
    this.maxInFlight = 0;
    this.count = 0;
  }
  getSenders() {
    return this.senders;
  }
  getStats() {
    this.count++;
    this.maxInFlight = Math.max(this.maxInFlight, ++this.inFlight);
    return new Promise((resolve, reject) => {
      const done = (f) => (v) => (this.inFlight--, f(v));
      this.pending.push({ resolve: done(resolve), reject: done(reject) });
    });
  }
  /** Answer the oldest getStats() with a report holding one outbound audio stream. */
  answer(bytes = 1000, ts = Date.now()) {
    const report = new Map([["OT1", { id: "OT1", type: "outbound-rtp", kind: "audio", timestamp: ts, bytesSent: bytes, packetsSent: bytes / 100 }]]);
    this.pending.shift().resolve(report);
  }
  close() {
    this.signalingState = "closed";
  }
}

/** Install fakes of WebSocket, fetch and the page's event target on globalThis; returns the
 * fetch calls, the pagehide trigger and a restore function. */
export function fakePage(answer = { accepted: 1, rejected: 0, errors: [] }) {
  const saved = { WebSocket: globalThis.WebSocket, fetch: globalThis.fetch, add: globalThis.addEventListener, remove: globalThis.removeEventListener };
  const page = new EventTarget();
  const posts = [];
  globalThis.WebSocket = FakeWebSocket;
  globalThis.fetch = async (url, init) => {
    posts.push({ url, init });
    return { ok: true, status: 200, json: async () => answer };
  };
  globalThis.addEventListener = page.addEventListener.bind(page);
  globalThis.removeEventListener = page.removeEventListener.bind(page);
  return {
    posts,
    pagehide: () => page.dispatchEvent(new Event("pagehide")),
    restore() {
      globalThis.WebSocket = saved.WebSocket;
      globalThis.fetch = saved.fetch;
      globalThis.addEventListener = saved.add;
      globalThis.removeEventListener = saved.remove;
    },
  };
}
