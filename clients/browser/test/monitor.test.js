// The monitor section of bwmon.js against fake peer connections, a fake WebSocket and a fake
// page: the serialized loop, the frames and events it sends, onSample, never throwing, the
// RTCPeerConnection wrapper, remove, close and the pagehide flush.
import { mock, test } from "node:test";
import assert from "node:assert/strict";
import { createMonitor, VERSION } from "../bwmon.js";
import { FakePeerConnection, FakeWebSocket, fakePage, until } from "../testing/fakes.js";

// One turn of the event loop: the promise chains in flight run to their next wait.
const settle = () => new Promise((r) => setImmediate(r));

const OPTIONS = { url: "http://127.0.0.1:9", token: "tok", meeting: "m1", participant: "p1", intervalMs: 1 };

/** A monitor on a fake page with its session open; closed and restored after the test. */
function setup(t, options = {}) {
  const page = fakePage();
  const sockets = FakeWebSocket.all.length;
  const monitor = createMonitor({ ...OPTIONS, ...options });
  const ws = FakeWebSocket.all[sockets];
  ws?.open();
  ws?.welcome();
  t.after(async () => {
    let closed = false;
    monitor.close().then(() => (closed = true));
    FakeWebSocket.all.slice(sockets).forEach((w) => w.drop(1000));
    // getStats() calls still waiting get an empty report, so that close() need not wait them out
    while (!closed) {
      for (const pc of FakePeerConnection.all) pc.pending.splice(0).forEach((call) => call.resolve(new Map()));
      await settle();
    }
    page.restore();
  });
  return { page, monitor, ws };
}

test("one serialized loop: a slow getStats() holds the next tick back, a hung one is left out", async (t) => {
  // Virtual time (the loop's timers): no tick can start while one waits, whatever the clock does.
  mock.timers.enable({ apis: ["setTimeout"] });
  t.after(() => mock.timers.reset());
  const { monitor, ws } = setup(t, { intervalMs: 1000 });
  const pc = new FakePeerConnection();
  const rtc = () => ws.frames().filter((f) => f.t === "rtc");
  monitor.add(pc, { connection: "pc-1" });
  mock.timers.tick(1000);
  await until(() => pc.count === 1);
  mock.timers.tick(9999); // slow: the tick waits, no second call
  await settle();
  assert.equal(pc.count, 1);
  pc.answer(1000);
  await until(() => rtc().length === 1);
  mock.timers.tick(1000);
  await until(() => pc.count === 2);
  mock.timers.tick(10000); // hung: the tick gives up on it ...
  await settle();
  for (let i = 0; i < 3; i++) mock.timers.tick(1000), await settle();
  assert.equal(pc.count, 2); // ... and the next ticks leave it out while it hangs
  pc.answer(2000); // too late: dropped, the connection is back in the loop
  await settle();
  mock.timers.tick(1000);
  await until(() => pc.count === 3);
  pc.answer(3000);
  await until(() => rtc().length === 2);
  assert.equal(pc.maxInFlight, 1);
  const frames = ws.frames();
  assert.deepEqual(frames[0], { ...frames[0], t: "event", m: "m1", p: "p1", ev: "join" });
  for (const [i, f] of rtc().entries()) {
    assert.deepEqual({ t: f.t, m: f.m, p: f.p, c: f.c, q: f.q, boot: f.boot }, { t: "rtc", m: "m1", p: "p1", c: "pc-1", q: i, boot: undefined });
    assert.equal(typeof f.ts, "number");
  }
  const s = monitor.stats();
  assert.equal(s.connections, 1);
  assert.ok(s.getStatsMs >= 0 && s.workMs >= 0);
});

test("a connection without a given id gets a random one; connections are sampled apart", async (t) => {
  const { monitor, ws } = setup(t);
  const a = new FakePeerConnection(), b = new FakePeerConnection();
  monitor.add(a);
  monitor.add(b);
  monitor.add(a); // twice: once
  await until(() => a.pending.length === 1 && b.pending.length === 1);
  a.answer();
  b.answer();
  await until(() => ws.frames().filter((f) => f.t === "rtc").length === 2);
  const [x, y] = ws.frames().filter((f) => f.t === "rtc");
  const hello = JSON.parse(ws.sent[0]);
  assert.deepEqual({ ...hello, boot: typeof hello.boot }, { t: "hello", boot: "string", kind: "browser", agent: "bwmon-js/" + VERSION, token: "tok" });
  assert.match(hello.boot, /^[0-9a-f]{16}$/); // 64 random bits
  assert.match(x.c, /^[0-9a-f]{8}$/);
  assert.notEqual(x.c, y.c);
  assert.equal(monitor.stats().connections, 2);
});

test("never throws: a rejecting getStats and a throwing callback are noted, the loop goes on", async (t) => {
  const { monitor } = setup(t);
  const pc = new FakePeerConnection();
  const views = [];
  monitor.onSample(() => {
    throw new Error("callback bug");
  });
  monitor.onSample((v) => views.push(v));
  monitor.add(pc);
  await until(() => pc.pending.length === 1);
  pc.pending.shift().reject(new Error("getStats failed"));
  await until(() => monitor.stats().lastError === "getStats failed");
  for (let i = 1; i <= 3; i++) {
    await until(() => pc.pending.length === 1);
    pc.answer(1000 * i, 1000 * i);
  }
  await until(() => views.length === 2);
  assert.equal(monitor.stats().lastError, "callback bug");
  assert.equal(views[0].connections.length, 1);
  assert.equal(views[1].seconds, 1);
  // bad input to the API is noted, not thrown
  monitor.event("mute", { get value() { throw new Error("getter bug"); } });
  assert.equal(monitor.stats().lastError, "getter bug");
  monitor.add(null);
  monitor.add({});
});

test("events: ICE and connection states, an ICE restart, track mute and unmute, the app's own", async (t) => {
  const { monitor, ws } = setup(t);
  const pc = new FakePeerConnection();
  const track = Object.assign(new EventTarget(), { kind: "audio" });
  pc.senders = [{ track }];
  pc.localDescription = { sdp: "v=0\r\na=ice-ufrag:abcd\r\n" };
  monitor.add(pc, { connection: "pc-1" });
  pc.iceConnectionState = "checking";
  pc.dispatchEvent(new Event("iceconnectionstatechange"));
  pc.connectionState = "failed";
  pc.dispatchEvent(new Event("connectionstatechange"));
  pc.localDescription = { sdp: "v=0\r\na=ice-ufrag:efgh\r\n" };
  pc.dispatchEvent(new Event("signalingstatechange"));
  pc.dispatchEvent(new Event("signalingstatechange")); // the same credentials: no restart
  track.dispatchEvent(new Event("mute"));
  track.dispatchEvent(new Event("unmute"));
  monitor.event("mute", { value: "video", connection: pc });
  monitor.event("unmute", "video");
  const events = ws.frames().filter((f) => f.t === "event").map(({ ev, c, val }) => ({ ev, c, val }));
  assert.deepEqual(events, [
    { ev: "join", c: undefined, val: undefined },
    { ev: "ice", c: "pc-1", val: "checking" },
    { ev: "ice", c: "pc-1", val: "connection:failed" },
    { ev: "reconnect", c: "pc-1", val: "ice-restart" },
    { ev: "mute", c: "pc-1", val: "audio" },
    { ev: "unmute", c: "pc-1", val: "audio" },
    { ev: "mute", c: "pc-1", val: "video" },
    { ev: "unmute", c: undefined, val: "video" },
  ]);
  for (const f of ws.frames()) assert.deepEqual([f.m, f.p, typeof f.ts], ["m1", "p1", "number"]);
  // a removed connection's listeners are gone
  const before = ws.frames().length;
  monitor.remove(pc);
  pc.dispatchEvent(new Event("iceconnectionstatechange"));
  track.dispatchEvent(new Event("mute"));
  await until(() => pc.pending.length === 1);
  assert.equal(ws.frames().length, before);
});

test("a track added later is watched from the next tick", async (t) => {
  const { monitor, ws } = setup(t);
  const pc = new FakePeerConnection();
  monitor.add(pc, { connection: "pc-1" });
  const track = Object.assign(new EventTarget(), { kind: "video" });
  pc.senders = [{ track }];
  await until(() => pc.pending.length === 1);
  pc.answer();
  track.dispatchEvent(new Event("mute"));
  assert.deepEqual(ws.frames().filter((f) => f.ev === "mute").map((f) => f.val), ["video"]);
});

test("remove: the last sample is asked for at once (before the app closes the pc), then no more", async (t) => {
  const { monitor, ws } = setup(t, { intervalMs: 60000 });
  const pc = new FakePeerConnection();
  monitor.add(pc, { connection: "pc-1" });
  const removed = monitor.remove(pc);
  assert.equal(pc.count, 1);
  pc.close();
  pc.answer(5000);
  await removed;
  const samples = ws.frames().filter((f) => f.t === "rtc");
  assert.deepEqual(samples.map((f) => [f.c, f.q]), [["pc-1", 0]]);
  assert.equal(monitor.stats().connections, 0);
  await monitor.remove(pc); // again: nothing
});

test("a closed pc leaves the loop by itself", async (t) => {
  const { monitor } = setup(t);
  const pc = new FakePeerConnection();
  monitor.add(pc);
  await until(() => pc.pending.length === 1);
  pc.answer();
  pc.close();
  await until(() => monitor.stats().connections === 0);
  assert.equal(pc.count, 1);
});

test("wrap: every new RTCPeerConnection is added, wrapped once per page, close() samples first", async (t) => {
  const saved = globalThis.RTCPeerConnection;
  globalThis.RTCPeerConnection = FakePeerConnection;
  t.after(() => (globalThis.RTCPeerConnection = saved));
  const { monitor } = setup(t, { intervalMs: 60000 });
  assert.equal(monitor.wrap(), true);
  const Wrapped = globalThis.RTCPeerConnection;
  assert.notEqual(Wrapped, FakePeerConnection);
  const pc = new RTCPeerConnection();
  assert.ok(pc instanceof FakePeerConnection);
  assert.equal(monitor.stats().connections, 1);
  // a second monitor (or a second copy of the module) takes over without wrapping again
  const { monitor: other, ws: otherWs } = setup(t, { intervalMs: 60000 });
  assert.equal(other.wrap(), true);
  assert.equal(globalThis.RTCPeerConnection, Wrapped);
  const second = new RTCPeerConnection();
  assert.equal(other.stats().connections, 1);
  assert.equal(monitor.stats().connections, 1);
  // close(): the last getStats() is called before the native close
  pc.close();
  assert.equal(pc.count, 1);
  assert.equal(pc.signalingState, "closed");
  pc.answer();
  await until(() => monitor.stats().connections === 0);
  // a closed monitor no longer receives connections
  const closing = other.close();
  await until(() => second.pending.length === 1);
  second.answer();
  otherWs.drop();
  await closing;
  new RTCPeerConnection();
  assert.equal(other.stats().connections, 0);
});

test("wrap: without RTCPeerConnection, false", (t) => {
  const saved = globalThis.RTCPeerConnection;
  delete globalThis.RTCPeerConnection;
  t.after(() => (globalThis.RTCPeerConnection = saved));
  const { monitor } = setup(t);
  assert.equal(monitor.wrap(), false);
});

test("close: a last sample of every connection and a leave, sent, acknowledged, then closed", async (t) => {
  const { monitor, ws } = setup(t, { intervalMs: 60000 });
  const pc = new FakePeerConnection();
  monitor.add(pc, { connection: "pc-1" });
  const closing = monitor.close();
  await until(() => pc.pending.length === 1);
  pc.answer(7000);
  await until(() => ws.frames().some((f) => f.ev === "leave"));
  assert.deepEqual(ws.frames().map((f) => f.ev ?? f.q), ["join", 0, "leave"]);
  ws.reply({ t: "ack", msg: 3, accepted: 3, rejected: 0 });
  await closing;
  assert.equal(ws.closedWith, 1000);
  assert.equal(monitor.stats().acked, 3);
  assert.equal(monitor.close(), closing);
  monitor.add(new FakePeerConnection());
  assert.equal(monitor.stats().connections, 0);
});

test("pagehide: everything unsent and a leave go at once by a keepalive POST", async (t) => {
  const { page, monitor, ws } = setup(t, { intervalMs: 60000 });
  ws.drop(1006); // the daemon is unreachable
  const pc = new FakePeerConnection();
  monitor.add(pc, { connection: "pc-1" });
  monitor.event("mute", "audio");
  page.pagehide();
  assert.equal(page.posts.length, 1);
  const { url, init } = page.posts[0];
  assert.equal(url, "http://127.0.0.1:9/ingest");
  assert.equal(init.keepalive, true);
  const body = JSON.parse(init.body);
  assert.deepEqual(body.map((f) => f.t + ":" + (f.ev ?? "")), ["hello:", "event:join", "event:mute", "event:leave"]);
  assert.equal(body[0].token, "tok");
  assert.equal(monitor.stats().connections, 0);
  await monitor.close();
  assert.equal(page.posts.length, 1);
  page.pagehide(); // listener gone: nothing more
  assert.equal(page.posts.length, 1);
});

test("without a url: no transport, the local view still comes", async (t) => {
  const { monitor } = setup(t, { url: undefined });
  const pc = new FakePeerConnection();
  const views = [];
  monitor.onSample((v) => views.push(v));
  monitor.add(pc);
  for (let i = 1; i <= 2; i++) {
    await until(() => pc.pending.length === 1);
    pc.answer(1000 * i, 1000 * i);
  }
  await until(() => views.length === 1);
  assert.equal(monitor.stats().sent, 0);
  assert.equal(monitor.stats().lastError, null);
});
