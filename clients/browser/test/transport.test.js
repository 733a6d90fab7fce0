// The transport section of bwmon.js: URLs, backoff, the session (§7) and its ring of unsent
// frames as pure pieces, then the link against a fake WebSocket and a fake fetch.
import { test, mock } from "node:test";
import assert from "node:assert/strict";
import { backoffMs, connect, createSession, endpoints, randomId, VERSION } from "../bwmon.js";
import { FakeWebSocket, fakePage, until } from "../testing/fakes.js";

const newStats = () => ({ sent: 0, acked: 0, dropped: 0, rejected: 0, reconnects: 0, connected: false, lastError: null });
const rtc = (c, q) => ({ t: "rtc", m: "m1", p: "p1", c, q, ts: 1000 + q });
const ev = (i) => ({ t: "event", m: "m1", p: "p1", ev: "ice", ts: 1000 + i, val: "checking" });
const welcome = (extra = {}) => JSON.stringify({ t: "welcome", session: "1", ack_interval_s: 1, max_message_bytes: 1048576, max_frames: 1000, v: 1, ...extra });
const reply = (r) => JSON.stringify(r);

test("endpoints: a base URL or a ws(s) ingest URL give both the WebSocket and the POST URL", () => {
  assert.deepEqual(endpoints("http://127.0.0.1:8470"), { ws: "ws://127.0.0.1:8470/ingest", post: "http://127.0.0.1:8470/ingest" });
  assert.deepEqual(endpoints("https://example.com/bwmon/"), { ws: "wss://example.com/bwmon/ingest", post: "https://example.com/bwmon/ingest" });
  assert.deepEqual(endpoints("wss://example.com/ingest"), { ws: "wss://example.com/ingest", post: "https://example.com/ingest" });
  assert.deepEqual(endpoints("ws://h:1/x/ingest/?a=1"), { ws: "ws://h:1/x/ingest", post: "http://h:1/x/ingest" });
});

test("backoffMs: full jitter below an exponential bound capped at 30 s", () => {
  assert.equal(backoffMs(0, () => 0), 0);
  assert.deepEqual([0, 1, 2, 3, 4].map((a) => backoffMs(a, () => 1)), [500, 1000, 2000, 4000, 8000]);
  assert.equal(backoffMs(6, () => 1), 30000);
  assert.equal(backoffMs(1000, () => 1), 30000);
  assert.equal(backoffMs(3, () => 0.25), 1000);
  for (let a = 0; a < 20; a++) assert.ok(backoffMs(a) <= 30000);
});

test("randomId: hex of the given number of random bytes", () => {
  const a = randomId(8), b = randomId(8);
  assert.match(a, /^[0-9a-f]{16}$/);
  assert.notEqual(a, b);
  assert.match(randomId(4), /^[0-9a-f]{8}$/);
});

test("session: hello, nothing before the welcome, then batches within the welcome's limits", () => {
  const stats = newStats();
  const s = createSession({ boot: "b1", token: "tok", stats });
  assert.deepEqual(JSON.parse(s.open()), { t: "hello", boot: "b1", kind: "browser", agent: "bwmon-js/" + VERSION, token: "tok" });
  assert.deepEqual(s.push([rtc("a", 0), rtc("b", 0), ev(1)]), []);
  const out = s.receive(welcome({ max_frames: 2 }));
  assert.deepEqual(out.map((m) => JSON.parse(m)), [[rtc("a", 0), rtc("b", 0)], [ev(1)]]);
  assert.equal(stats.connected, true);
  assert.equal(stats.sent, 3);
  // max_message_bytes: each frame of about 60 bytes alone
  const t = createSession({ boot: "b1", stats: newStats() });
  assert.equal(JSON.parse(t.open()).token, undefined);
  let minted = 0;
  const u = createSession({ boot: "b1", token: () => "tok-" + ++minted, stats: newStats() });
  assert.equal(JSON.parse(u.open()).token, "tok-1");
  assert.equal(JSON.parse(u.open()).token, "tok-2");
  t.receive(welcome({ max_message_bytes: 80 }));
  assert.equal(t.push([rtc("a", 0), rtc("a", 1), rtc("a", 2)]).length, 3);
});

test("session: acks release frames, error replies and ack totals count rejections", () => {
  const stats = newStats();
  const s = createSession({ boot: "b1", stats });
  s.open();
  s.receive(welcome());
  s.push([rtc("a", 0), ev(1)]); // message 1
  s.push([rtc("a", 1)]); // message 2
  assert.equal(s.pending(), 3);
  assert.deepEqual(s.receive(reply({ t: "error", msg: 1, index: 1, reason: "bad_value", detail: "x" })), []);
  assert.equal(stats.rejected, 1);
  assert.match(stats.lastError, /^bad_value: x$/);
  s.receive(reply({ t: "ack", msg: 1, accepted: 1, rejected: 1 }));
  assert.equal(stats.acked, 2);
  assert.equal(stats.rejected, 1);
  assert.equal(s.pending(), 1);
  // rejections beyond the capped error replies show in the ack's total only
  s.receive(reply({ t: "ack", msg: 2, accepted: 1, rejected: 4 }));
  assert.equal(stats.rejected, 4);
  assert.equal(s.pending(), 0);
});

test("session: a lost connection's unacknowledged frames go first on the next session", () => {
  const stats = newStats();
  const s = createSession({ boot: "b1", stats });
  s.open();
  s.receive(welcome());
  s.push([rtc("a", 0)]);
  s.push([rtc("a", 1)]);
  s.receive(reply({ t: "ack", msg: 1, accepted: 1, rejected: 0 }));
  s.lost();
  assert.equal(stats.connected, false);
  assert.deepEqual(s.push([rtc("a", 2)]), []);
  s.open();
  const out = s.receive(welcome());
  assert.deepEqual(out.map((m) => JSON.parse(m)), [[rtc("a", 1), rtc("a", 2)]]);
  // numbering starts again at 1 on the new session
  s.receive(reply({ t: "ack", msg: 1, accepted: 2, rejected: 0 }));
  assert.equal(s.pending(), 0);
  assert.equal(stats.acked, 3);
});

test("ring: bounded, the oldest dropped and counted, every stream's latest sample kept", () => {
  const stats = newStats();
  const s = createSession({ boot: "b1", maxQueue: 4, stats });
  s.push([rtc("a", 0), rtc("b", 0), rtc("a", 1)]);
  s.push([ev(1), ev(2), ev(3)]);
  // a0 went first (a1 is newer); b0 is its stream's latest, so ev1 went next
  assert.equal(stats.dropped, 2);
  assert.equal(s.pending(), 4);
  s.open();
  const [first] = s.receive(welcome());
  assert.deepEqual(JSON.parse(first), [rtc("b", 0), rtc("a", 1), ev(2), ev(3)]);
});

test("ring: sent and unacknowledged messages are forgotten before unsent frames are dropped", () => {
  const stats = newStats();
  const s = createSession({ boot: "b1", maxQueue: 2, stats });
  s.open();
  s.receive(welcome());
  s.push([rtc("a", 0), rtc("a", 1)]);
  s.push([rtc("a", 2)]);
  assert.equal(stats.dropped, 0);
  assert.equal(s.pending(), 1);
});

test("link: hello on open, frames after the welcome, reconnect with backoff resends what was not acked", async (t) => {
  const page = fakePage();
  t.after(page.restore);
  mock.method(Math, "random", () => 0);
  t.after(() => mock.restoreAll());
  FakeWebSocket.all = [];
  const stats = newStats();
  const link = connect({ url: "http://127.0.0.1:9", token: "tok", boot: "b1", maxQueue: 100, stats, note: (e) => (stats.lastError = String(e)) });
  const ws = FakeWebSocket.all[0];
  assert.equal(ws.url, "ws://127.0.0.1:9/ingest");
  link.send([rtc("a", 0)]);
  ws.open();
  assert.deepEqual(JSON.parse(ws.sent[0]), { t: "hello", boot: "b1", kind: "browser", agent: "bwmon-js/" + VERSION, token: "tok" });
  ws.welcome();
  link.send([rtc("a", 1)]);
  assert.deepEqual(ws.frames(), [rtc("a", 0), rtc("a", 1)]);
  ws.reply({ t: "ack", msg: 1, accepted: 1, rejected: 0 });
  ws.readyState = 2; // closing: it takes nothing more
  link.send([rtc("a", 2)]);
  assert.equal(ws.sent.length, 3);
  ws.drop(1011);
  assert.equal(stats.reconnects, 1);
  assert.equal(stats.connected, false);
  assert.match(stats.lastError, /closed 1011/);
  await until(() => FakeWebSocket.all.length === 2);
  const ws2 = FakeWebSocket.all[1];
  ws2.open();
  assert.equal(JSON.parse(ws2.sent[0]).t, "hello");
  ws2.welcome();
  assert.deepEqual(ws2.frames(), [rtc("a", 1), rtc("a", 2)]);
  ws2.reply({ t: "ack", msg: 1, accepted: 2, rejected: 0 });
  assert.equal(link.pending(), 0);
  await link.end([], 1000);
  assert.equal(ws2.closedWith, 1000);
  assert.equal(page.posts.length, 0);
});

test("link: frames wait for the welcome, bounded", async (t) => {
  const page = fakePage();
  t.after(page.restore);
  FakeWebSocket.all = [];
  const stats = newStats();
  const link = connect({ url: "http://127.0.0.1:9", boot: "b1", maxQueue: 2, stats, note: () => {} });
  const ws = FakeWebSocket.all[0];
  ws.open();
  link.send([rtc("a", 0), rtc("a", 1), rtc("a", 2)]);
  assert.equal(ws.sent.length, 1);
  assert.equal(stats.dropped, 1);
  link.flush([]);
  assert.equal(ws.closedWith, 1000);
  await until(() => page.posts.length === 1);
});

test("last flush: one keepalive POST, text body, the hello first, everything unacknowledged after it", async (t) => {
  const page = fakePage();
  t.after(page.restore);
  FakeWebSocket.all = [];
  const stats = newStats();
  const link = connect({ url: "https://d.example/bwmon", token: "tok", boot: "b1", maxQueue: 100, stats, note: (e) => (stats.lastError = String(e)) });
  const ws = FakeWebSocket.all[0];
  ws.open();
  ws.welcome();
  link.send([rtc("a", 0)]); // sent, never acked
  ws.drop();
  link.send([rtc("a", 1)]); // unsent
  const leave = { t: "event", m: "m1", p: "p1", ev: "leave", ts: 2000 };
  link.flush([leave]);
  await until(() => page.posts.length === 1);
  const [{ url, init }] = page.posts;
  assert.equal(url, "https://d.example/bwmon/ingest");
  assert.equal(init.method, "POST");
  assert.equal(init.keepalive, true);
  assert.equal(typeof init.body, "string");
  assert.equal(init.headers, undefined);
  const body = JSON.parse(init.body);
  assert.deepEqual(body[0], { t: "hello", boot: "b1", kind: "browser", agent: "bwmon-js/" + VERSION, token: "tok" });
  assert.deepEqual(body.slice(1), [rtc("a", 0), rtc("a", 1), leave]);
  assert.equal(stats.sent, 4);
  // the flush ends the link: the reconnection planned at the drop is called off
  assert.equal(FakeWebSocket.all.length, 1);
});

test("last flush: the answer's rejections are counted", async (t) => {
  const page = fakePage({ accepted: 1, rejected: 1, errors: [{ index: 1, reason: "bad_value", detail: "x" }] });
  t.after(page.restore);
  FakeWebSocket.all = [];
  const stats = newStats();
  const link = connect({ url: "http://127.0.0.1:9", boot: "b1", maxQueue: 10, stats, note: () => {} });
  link.flush([ev(1)]);
  await until(() => stats.rejected === 1);
  assert.equal(stats.lastError, "POST /ingest 200: bad_value");
});

test("last flush: within the keepalive budget, the newest frames kept, the rest counted as dropped", async (t) => {
  const page = fakePage();
  t.after(page.restore);
  FakeWebSocket.all = [];
  const stats = newStats();
  const link = connect({ url: "http://127.0.0.1:9", boot: "b1", maxQueue: 5000, stats, note: () => {} });
  const frames = Array.from({ length: 2000 }, (_, i) => rtc("a", i));
  link.send(frames);
  link.flush([]);
  await until(() => page.posts.length === 1);
  const body = page.posts[0].init.body;
  assert.ok(body.length <= 60000);
  const sent = JSON.parse(body).slice(1);
  assert.equal(sent.at(-1).q, 1999);
  assert.equal(stats.dropped + sent.length, 2000);
  assert.ok(stats.dropped > 0);
});
