// The in-call view against the daemon: test/fixtures/quality-vectors.json is computed by the
// daemon's own code (tests/aggregate/quality_vectors.py); localView must give the same numbers
// (to 1e-9 relative), levels and reasons. Then combineViews and the indicator's text.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { combineViews, indicatorText, localView } from "../bwmon.js";

const vectors = JSON.parse(readFileSync(new URL("fixtures/quality-vectors.json", import.meta.url)));

function same(actual, expected, at) {
  if (typeof expected == "number") {
    assert.equal(typeof actual, "number", `${at}: ${actual} is not a number`);
    const scale = Math.max(Math.abs(expected), Math.abs(actual));
    assert.ok(Math.abs(actual - expected) <= 1e-9 * scale, `${at}: ${actual} != ${expected}`);
  } else if (expected && typeof expected == "object") {
    assert.ok(actual && typeof actual == "object", `${at}: ${actual} is not an object`);
    assert.deepEqual(Object.keys(actual).sort(), Object.keys(expected).sort(), `${at}: keys`);
    for (const key of Object.keys(expected)) same(actual[key], expected[key], `${at}.${key}`);
  } else {
    assert.equal(actual, expected, at);
  }
}

for (const c of vectors.cases) {
  test(`vector ${c.name}: ${c.description}`, () => {
    same(localView(c.prev, c.cur, c.prevScore), c.view, c.name);
  });
}

test("the vectors hold every reason, in the order the JS reports them", () => {
  const all = vectors.cases.find((c) => c.name == "every_reason");
  assert.deepEqual(localView(all.prev, all.cur, all.prevScore).reasons, vectors.reasons);
});

test("no interval without time between the samples", () => {
  const [{ cur }] = vectors.cases.filter((c) => c.name == "healthy");
  assert.equal(localView(cur, cur, 50), null);
  assert.equal(localView({ ...cur, ts: cur.ts + 1 }, cur, 50), null);
});

test("a merged prev keeps a gauge that several samples omit", () => {
  const { prev, cur } = vectors.cases.find((c) => c.name == "rtt");
  const { rtt, ...bare } = cur;
  const next = { ...bare, ts: cur.ts + 2000 };
  assert.equal(localView(bare, next, null).rtt, null);
  assert.equal(localView({ ...prev, ...cur }, next, null).rtt, 450);
});

const view = (name) => {
  const c = vectors.cases.find((c) => c.name == name);
  return localView(c.prev, c.cur, c.prevScore);
};

test("combineViews sums bitrates and keeps the worst of the rest", () => {
  const healthy = view("healthy"), tcp = view("relay_tcp"), bad = view("level_bad");
  const all = combineViews([healthy, null, tcp, bad]);
  assert.equal(all.up.video, healthy.up.video + tcp.up.video + bad.up.video);
  assert.equal(all.down.audio, 3 * healthy.down.audio);
  assert.equal(all.rtt, bad.rtt);
  assert.equal(all.lossDown, bad.lossDown);
  assert.equal(all.mos, bad.mos);
  assert.equal(all.score, bad.score);
  assert.equal(all.level, "bad");
  assert.deepEqual(all.reasons, ["loss", "rtt", "relay-tcp"]);
  assert.equal(all.relayed, true);
  assert.equal(all.relayProtocol, "tcp");
  assert.deepEqual(all.connections, [healthy, tcp, bad]);
});

test("combineViews of one view is that view, with it as its connection", () => {
  const one = view("relay_udp");
  const { connections, ...rest } = combineViews([one]);
  assert.deepEqual(rest, one);
  assert.deepEqual(connections, [one]);
  assert.equal(combineViews([]), null);
});

test("combineViews: the relay protocol that costs wins, unknowns stay unknown", () => {
  const first = view("nothing_received_first");
  const all = combineViews([view("relay_udp"), view("relay_tls"), first]);
  assert.equal(all.relayProtocol, "tls");
  assert.equal(combineViews([first]).score, null);
  assert.equal(combineViews([first]).level, null);
  assert.equal(combineViews([first, view("remote_relayed")]).remoteRelayed, true);
});

test("indicatorText says what a view shows, leaving out what is unknown", () => {
  assert.equal(indicatorText(null), "–");
  assert.equal(indicatorText(view("healthy")), "↑ 1.6 Mb/s ↓ 1.6 Mb/s · 50 ms · 0.0 % loss");
  assert.equal(
    indicatorText(view("every_reason")),
    "↑ 1.6 Mb/s ↓ 632 kb/s · 500 ms · 9.6 % loss · TURN/tcp · " +
      "loss, rtt, jitter, bitrate, cpu, relay-tcp, freeze",
  );
  const quiet = { ...view("nothing_received_first"), rtt: null };
  assert.equal(indicatorText(quiet), "↑ 0 kb/s ↓ 0 kb/s");
});

test("the module imports where there are no custom elements", () => {
  assert.equal(globalThis.customElements, undefined);
});
