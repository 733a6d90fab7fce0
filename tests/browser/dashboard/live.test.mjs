// The dashboard's /subscribe client (collector/http/ui/live.js) under Node's own runner, with a
// fake WebSocket, document and animation frames: the rules of PROTOCOL.md §12.5 (snapshot,
// deltas in order, a gap or another epoch asks again from the held position, resume after a
// reconnect), one batch per topic per frame, nothing drawn while hidden and one catch-up batch
// when shown, the alerts of a batch capped, a refused token reported once.

import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";

class FakeSocket {
  static OPEN = 1;
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeSocket.all.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.readyState = 3;
    this.onclose?.({ code: 1006 });
  }
  open() {
    this.readyState = 1;
    this.onopen?.();
  }
  receive(message) {
    this.onmessage?.({ data: JSON.stringify(message) });
  }
}

let frames = [];
const frame = () => {
  const run = frames;
  frames = [];
  for (const callback of run) callback();
};

globalThis.WebSocket = FakeSocket;
globalThis.location = { protocol: "http:", host: "127.0.0.1:8470" };
globalThis.requestAnimationFrame = (callback) => frames.push(callback);
globalThis.document = {
  visibilityState: "visible",
  listeners: [],
  addEventListener(name, callback) {
    this.listeners.push(callback);
  },
};

const { Live } = await import("../../../collector/http/ui/live.js");

let live;
let batches;
let refused;

function start(token = "") {
  batches = [];
  refused = [];
  live = new Live({ token: () => token, onRefused: (why) => refused.push(why) });
  live.subscribe("meetings", (batch, topic) => batches.push({ ...batch, size: topic.state.size }));
  const socket = FakeSocket.all.at(-1);
  socket.open();
  return socket;
}

const snapshot = (seq, entities, epoch = "e1") => ({
  t: "snapshot", topic: "meetings", epoch, seq, at: 1, entities, full: true, v: 1,
});
const delta = (prev, seq, changed, removed = [], epoch = "e1") => ({
  t: "delta", topic: "meetings", epoch, seq, prev, at: 2, changed, removed,
});

beforeEach(() => {
  FakeSocket.all = [];
  frames = [];
  document.visibilityState = "visible";
  document.listeners = [];
});
afterEach(() => live.close());

test("a snapshot then deltas, applied once per frame in one batch", () => {
  const socket = start();
  assert.deepEqual(socket.sent, [{ t: "subscribe", topic: "meetings" }]);
  socket.receive(snapshot(5, { a: { participants: 1 }, b: { participants: 2 } }));
  socket.receive(delta(5, 6, { a: { participants: 3 } }));
  socket.receive(delta(6, 7, { c: { participants: 1 } }, ["b"]));
  assert.equal(batches.length, 0); // nothing before the frame
  frame();
  assert.equal(batches.length, 1);
  assert.equal(batches[0].full, true);
  assert.equal(batches[0].size, 2);
  const topic = live.topics.get("meetings");
  assert.deepEqual(Object.fromEntries(topic.state), { a: { participants: 3 }, c: { participants: 1 } });
  assert.equal(topic.seq, 7);
  socket.receive(delta(7, 8, { a: { up_bps: 5 } }));
  frame();
  assert.deepEqual([...batches[1].changed], ["a"]);
  assert.equal(batches[1].full, false);
  assert.deepEqual(topic.state.get("a"), { participants: 3, up_bps: 5 });
});

test("an old delta is ignored; a gap or another epoch asks again from the held position", () => {
  const socket = start();
  socket.receive(snapshot(5, { a: { participants: 1 } }));
  socket.receive(delta(4, 5, { a: { participants: 9 } })); // already held
  socket.receive(delta(6, 7, { a: { participants: 7 } })); // 6 is missing
  socket.receive(delta(5, 6, { a: { participants: 2 } }, [], "e2")); // another epoch
  frame();
  assert.deepEqual(live.topics.get("meetings").state.get("a"), { participants: 1 });
  const again = { t: "subscribe", topic: "meetings", epoch: "e1", seq: 5 };
  assert.deepEqual(socket.sent.slice(1), [again]); // once, until the answer comes
  socket.receive(delta(5, 7, { a: { participants: 7 } })); // the missed deltas, merged
  socket.receive(delta(8, 9, { a: { participants: 9 } })); // a gap again: asked again
  frame();
  assert.deepEqual(live.topics.get("meetings").state.get("a"), { participants: 7 });
  assert.deepEqual(socket.sent.slice(1), [again, { ...again, seq: 7 }]);
});

test("after a lost connection it reconnects, sends the token, and resumes where it stood", async () => {
  const socket = start("tok");
  assert.deepEqual(socket.sent[0], { t: "auth", token: "tok" });
  socket.receive(snapshot(5, { a: {} }));
  frame();
  socket.close();
  await new Promise((resolve) => setTimeout(resolve, 300));
  const next = FakeSocket.all.at(-1);
  assert.notEqual(next, socket);
  next.open();
  assert.deepEqual(next.sent, [
    { t: "auth", token: "tok" },
    { t: "subscribe", topic: "meetings", epoch: "e1", seq: 5 },
  ]);
});

test("a hidden tab applies without drawing, and draws one catch-up batch when shown", () => {
  const socket = start();
  socket.receive(snapshot(1, { a: {} }));
  frame();
  document.visibilityState = "hidden";
  socket.receive(delta(1, 2, { b: {} }));
  socket.receive(delta(2, 3, { c: {} }, ["a"]));
  assert.equal(frames.length, 0); // no frame asked for while hidden
  live.watch(); // the once-a-second timer applies what came
  assert.equal(batches.length, 1);
  assert.equal(live.topics.get("meetings").seq, 3);
  document.visibilityState = "visible";
  for (const listener of document.listeners) listener();
  assert.equal(batches.length, 2);
  assert.deepEqual([...batches[1].changed].sort(), ["b", "c"]);
  assert.deepEqual([...batches[1].removed], ["a"]);
});

test("the alerts of one batch are capped, and a refused token is reported once", () => {
  const socket = start();
  live.subscribe("alerts", (batch) => batches.push(batch));
  socket.receive({ t: "snapshot", topic: "alerts", epoch: "e", seq: 1, at: 1, entities: {} });
  for (let i = 0; i < 700; i++) {
    socket.receive({ t: "alert", topic: "alerts", epoch: "e", seq: 2, alert: { id: String(i) } });
  }
  frame();
  const alerts = batches.find((batch) => batch.alerts.length).alerts;
  assert.equal(alerts.length, 500);
  assert.equal(alerts.at(-1).id, "699");
  socket.receive({ t: "error", code: "unauthorized", detail: "a token is needed" });
  socket.receive({ t: "error", code: "unauthorized", detail: "a token is needed" });
  frame();
  assert.deepEqual(refused, ["a token is needed"]);
});
