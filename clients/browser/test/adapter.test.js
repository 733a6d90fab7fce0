// The adapter section of bwmon.js: one getStats() report of Chromium, Firefox or Safari shape
// -> the wire fields of one rtc frame (protocol/PROTOCOL.md §4.3). Expected counters are summed
// here straight from the fixtures, by the source column of PROTOCOL.md's own table; every key
// the adapter emits is checked against the JSON Schema of the frames (protocol/schema/).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, readdirSync } from "node:fs";
import { rtcFields } from "../bwmon.js";

const repo = new URL("../../../", import.meta.url);
const fixtureDir = new URL("fixtures/", import.meta.url);
const rtcSchema = JSON.parse(readFileSync(new URL("protocol/schema/frames.schema.json", repo)))
  .$defs.RtcSample.properties;

// §4.3's counter rows whose source is one RTP stats type and kind: key -> [type, kind, member].
const protocol = readFileSync(new URL("protocol/PROTOCOL.md", repo), "utf8");
const counters = protocol.slice(
  protocol.indexOf("Cumulative counters"),
  protocol.indexOf("Gauges (the"),
);
const SOURCES = {};
for (const line of counters.split("\n")) {
  const cells = line.split("|").map((c) => c.trim());
  const source = /^`([a-z-]+-rtp)` \((audio|video)\) `(\w+)`/.exec(cells.at(-2) ?? "");
  if (source && /^`\w+`$/.test(cells[1])) SOURCES[cells[1].slice(1, -1)] = source.slice(1);
}

const report = (stats) => new Map(stats.map((s) => [s.id, s]));
const kindOf = (s) => s.kind ?? s.mediaType;
const byId = (stats, id) => stats.find((s) => s.id === id);

function loadFixtures() {
  const names = readdirSync(fixtureDir)
    .filter((n) => /^(chromium|firefox|safari)-.+\.json$/.test(n));
  return names.map((name) => ({ name, ...JSON.parse(readFileSync(new URL(name, fixtureDir))) }));
}

// A key the adapter may emit, with a value of its wire type and range (§3.2, §5.1).
function assertWire(fields, where) {
  for (const [key, v] of Object.entries(fields)) {
    const at = `${where}: ${key}=${JSON.stringify(v)}`;
    assert.ok(!["t", "m", "p", "c", "q", "boot"].includes(key), `${at} is the monitor's`);
    assert.ok(rtcSchema[key], `${at} is not a wire key of rtc`);
    const spec = rtcSchema[key].anyOf?.[0] ?? rtcSchema[key];
    if (spec.enum) assert.ok(spec.enum.includes(v), at);
    else if (spec.type === "integer") {
      assert.ok(Number.isSafeInteger(v) && v >= spec.minimum && v <= spec.maximum, at);
    } else if (spec.type === "number") {
      assert.ok(Number.isFinite(v) && v >= spec.minimum && v <= spec.maximum, at);
    } else if (spec.type === "boolean") assert.equal(typeof v, "boolean", at);
    else if (spec.type === "string") {
      const n = [...v].length;
      assert.ok(n >= spec.minLength && n <= spec.maxLength, at);
      assert.match(v, new RegExp(spec.pattern, "u"), at);
    } else assert.fail(`${at}: no check for ${JSON.stringify(spec)}`);
  }
}

// What §4.3 says a counter is: the sum over the streams of its type and kind, lost clamped.
function expectedSums(stats) {
  const sums = {};
  for (const [key, [type, kind, member]] of Object.entries(SOURCES)) {
    const values = stats
      .filter((s) => s.type === type && kindOf(s) === kind && s[member] !== undefined)
      .map((s) => (member === "packetsLost" ? Math.max(0, s[member]) : s[member]));
    if (values.length) sums[key] = values.reduce((a, b) => a + b, 0);
  }
  return sums;
}

// The path the hand-written fixtures' samples must give: [pair id, lct, rct, rp, turn].
const TURN_UDP = "turn:127.0.0.1:3478?transport=udp";
const PATHS = {
  "chromium-simulcast-handwritten.json": [
    ["CPd3Xn+Ad1_hQ/K2P9c", "relay", "host", "udp", TURN_UDP],
    ["CPd3Xn+Ad1_hQ/K2P9c", "relay", "host", "udp", TURN_UDP],
  ],
  // Firefox reports no url, so no turn; after the ICE restart the newly selected pair wins
  // although the old one carried more bytes.
  "firefox-turn-tcp-restart.json": [
    ["MoD1_Rm4q", "relay", "host", "tcp", undefined],
    ["Hs8v_Rm4q", "host", "host", undefined, undefined],
  ],
  // WebKit copies no relayProtocol: rp stays absent, it is not taken from `protocol`.
  "safari-turn-udp.json": [
    ["CPgQ4f7Vn1_Y2xWb9Lp", "relay", "prflx", undefined, TURN_UDP],
    ["CPgQ4f7Vn1_Y2xWb9Lp", "relay", "prflx", undefined, TURN_UDP],
  ],
};

// The recorded calls (tests/browser/call.py): which side relays over what. Pair ids and ports
// change with each recording, so the recordings' paths are derived: the pair is the one the
// transport points at, candidate types tell relayed from not, and the ICE restart moves side a
// from TURN/UDP (first sample) to the direct path (last sample).
const RELAYS = {
  direct: {},
  "turn-udp": { a: "udp", b: "udp" },
  "turn-tcp": { a: "tcp", b: "tcp" },
  "one-side": { a: "udp" },
  "ice-restart": { a: "udp" },
};
const PEER = { a: "b", b: "a" };

function assertRecordedPath(fx, stats, f, i, where) {
  const relays = fx.case === "ice-restart" && i === fx.samples.length - 1 ? {} : RELAYS[fx.case];
  assert.ok(relays, `${where}: no expected path for the case ${fx.case}`);
  const own = relays[fx.side];
  const peer = relays[PEER[fx.side]];
  const transport = stats.find((s) => s.type === "transport");
  assert.equal(f.pair, transport.selectedCandidatePairId, `${where}: pair`);
  assert.equal(f.lct === "relay", Boolean(own), `${where}: lct ${f.lct}`);
  assert.equal(f.rct === "relay", Boolean(peer), `${where}: rct ${f.rct}`);
  assert.equal(f.rp, own, `${where}: rp`);
  const turn = new RegExp(`^turn:127\\.0\\.0\\.1:\\d+\\?transport=${own}$`);
  if (own) assert.match(f.turn, turn, where);
  else assert.equal(f.turn, undefined, `${where}: turn`);
}

test("the recorded Chromium calls are all there: five cases, two sides", () => {
  const recorded = loadFixtures().filter((fx) => !PATHS[fx.name]);
  const names = recorded.map((fx) => `${fx.case}-${fx.side}`).sort();
  assert.deepEqual(names, Object.keys(RELAYS).flatMap((c) => [`${c}-a`, `${c}-b`]).sort());
  const restart = recorded.find((fx) => fx.case === "ice-restart" && fx.side === "a");
  const pairs = [restart.samples[0], restart.samples.at(-1)].map((s) => rtcFields(report(s)).pair);
  assert.notEqual(pairs[0], pairs[1], "the ICE restart switched pairs");
});

test("PROTOCOL.md's §4.3 gives the source of every RTP counter", () => {
  assert.deepEqual(Object.keys(SOURCES).sort(), [
    "acs", "aib", "ail", "aip", "ajd", "aje", "aob", "aop", "arl", "ass", "ats",
    "vfd", "vfx", "vib", "vil", "vip", "vob", "vop", "vrl", "vzc", "vzd",
  ]);
});

for (const fx of loadFixtures()) {
  test(`${fx.name}: counters, ts, path and wire types of every sample`, () => {
    assert.ok(fx.samples.length > 0);
    assert.ok(PATHS[fx.name] || fx.browser.startsWith("chromium "), `no expected path: ${fx.name}`);
    fx.samples.forEach((stats, i) => {
      const where = `${fx.name}[${i}]`;
      const f = rtcFields(report(stats));
      assertWire(f, where);
      for (const key of Object.keys(SOURCES)) {
        assert.equal(f[key], expectedSums(stats)[key], `${where}: ${key}`);
      }
      const local = stats.filter((s) => !s.type.startsWith("remote-")).map((s) => s.timestamp);
      assert.equal(f.ts, Math.max(...local), `${where}: ts`);
      if (PATHS[fx.name]) {
        assert.deepEqual([f.pair, f.lct, f.rct, f.rp, f.turn], PATHS[fx.name][i], `${where}: path`);
      } else if (fx.case !== "ice-restart" || i === 0 || i === fx.samples.length - 1) {
        assertRecordedPath(fx, stats, f, i, where);
      }
      const pair = byId(stats, f.pair);
      assert.equal(f.pbs, pair.bytesSent, `${where}: pbs`);
      assert.equal(f.pbr, pair.bytesReceived, `${where}: pbr`);
      assert.equal(f.bwe, pair.availableOutgoingBitrate, `${where}: bwe`);
    });
  });
}

test("chromium: simulcast layers summed, the gauges of the largest layer, fec, limitation", () => {
  const fx = JSON.parse(readFileSync(new URL("chromium-simulcast-handwritten.json", fixtureDir)));
  const [first, second] = fx.samples.map((s) => rtcFields(report(s)));
  const layers = fx.samples[1].filter((s) => s.type === "outbound-rtp" && s.kind === "video");
  assert.equal(layers.length, 3);
  assert.equal(second.vob, layers.reduce((a, s) => a + s.bytesSent, 0));
  assert.equal(second.vop, layers.reduce((a, s) => a + s.packetsSent, 0));
  // the top layer before its first frame has no resolution: the middle one is the largest
  assert.deepEqual([first.vwo, first.vho, first.vfo], [640, 360, 30]);
  assert.deepEqual([second.vwo, second.vho, second.vfo], [1280, 720, 30]);
  assert.deepEqual([second.vwi, second.vhi, second.vfi], [640, 360, 29.5]);
  assert.equal(first.ail, 0, "a negative packetsLost counts as none");
  assert.equal(second.ail, 3);
  assert.ok(Math.abs(second.aj - 4.5) < 1e-9);
  assert.equal(second.vj, 6);
  assert.ok(Math.abs(second.rtt - 8.1) < 1e-9, "the largest remote-inbound-rtp roundTripTime");
  assert.equal(first.qlr, "none");
  assert.equal(second.qlr, "bandwidth");
  assert.equal(second.fec, true);
  assert.equal(second.bwe, 2153271);
  assert.equal(second.vzd, 0.35);
  assert.ok(Number.isInteger(second.vob) && Number.isInteger(second.vwo));
});

test("firefox: kind and mediaType, no bwe, no qlr, rtt from remote-inbound-rtp", () => {
  const fx = JSON.parse(readFileSync(new URL("firefox-turn-tcp-restart.json", fixtureDir)));
  const f = rtcFields(report(fx.samples[1]));
  assert.equal(f.bwe, undefined);
  assert.equal(f.qlr, undefined);
  assert.equal(f.rtt, 9);
  assert.equal(f.vrl, 0, "a negative remote packetsLost counts as none");
  assert.equal(f.vil, 4);
  assert.equal(f.fec, true);
});

test("safari: rtt from video until the audio RTCP report, then the largest; cpu limitation", () => {
  const fx = JSON.parse(readFileSync(new URL("safari-turn-udp.json", fixtureDir)));
  const [first, second] = fx.samples.map((s) => rtcFields(report(s)));
  assert.equal(first.rtt, 9.5);
  assert.equal(first.arl, undefined);
  assert.equal(second.rtt, 11);
  assert.equal(second.qlr, "cpu");
  assert.equal(second.bwe, undefined);
  assert.equal(first.ts, 1765000200000);
});

// A relayed Chromium sample to vary: the selected pair, its two candidates and the transport.
function relayed(change) {
  const fx = JSON.parse(readFileSync(new URL("chromium-simulcast-handwritten.json", fixtureDir)));
  const stats = fx.samples[1];
  change?.(stats);
  return stats;
}
const path = (f) => [f.pair, f.lct, f.rct, f.rp, f.turn];

test("relay: one side relays (remote relay, local host) is not this client's relay", () => {
  const stats = relayed((s) => {
    Object.assign(byId(s, "Id3Xn+Ad1"), { candidateType: "host", url: undefined });
    delete byId(s, "Id3Xn+Ad1").relayProtocol;
    byId(s, "IhQ/K2P9c").candidateType = "relay";
  });
  const f = rtcFields(report(stats));
  assert.deepEqual(path(f), ["CPd3Xn+Ad1_hQ/K2P9c", "host", "relay", undefined, undefined]);
  // a STUN-derived local candidate has a url too: it is no TURN server
  const stun = relayed((s) => {
    Object.assign(byId(s, "Id3Xn+Ad1"), { candidateType: "srflx", url: "stun:127.0.0.1:3478" });
  });
  const g = rtcFields(report(stun));
  assert.deepEqual(path(g), ["CPd3Xn+Ad1_hQ/K2P9c", "srflx", "host", undefined, undefined]);
});

test("relay: rp is the relayProtocol of the local candidate, never its protocol", () => {
  const stats = relayed((s) => {
    const url = "turn:127.0.0.1:3478?transport=tcp";
    Object.assign(byId(s, "Id3Xn+Ad1"), { relayProtocol: "tcp", url });
  });
  const f = rtcFields(report(stats));
  assert.equal(byId(stats, "Id3Xn+Ad1").protocol, "udp");
  assert.deepEqual([f.rp, f.turn], ["tcp", "turn:127.0.0.1:3478?transport=tcp"]);
  const tls = relayed((s) => Object.assign(byId(s, "Id3Xn+Ad1"), { relayProtocol: "tls" }));
  assert.equal(rtcFields(report(tls)).rp, "tls");
  const odd = relayed((s) => Object.assign(byId(s, "Id3Xn+Ad1"), { relayProtocol: "quic" }));
  assert.equal(rtcFields(report(odd)).rp, undefined);
  assert.equal(rtcFields(report(odd)).lct, "relay");
});

test("relay: the pair follows the transport after an ICE restart, its counters restart", () => {
  const stats = relayed((s) => {
    byId(s, "T01").selectedCandidatePairId = "CPfq0y7Tt2_hQ/K2P9c";
    Object.assign(byId(s, "CPfq0y7Tt2_hQ/K2P9c"), { bytesSent: 1200, bytesReceived: 800 });
  });
  const f = rtcFields(report(stats));
  assert.deepEqual(path(f), ["CPfq0y7Tt2_hQ/K2P9c", "host", "host", undefined, undefined]);
  assert.deepEqual([f.pbs, f.pbr, f.rtt], [1200, 800, 8.1]);
});

test("selected pair: transport, then `selected`, then nominated and succeeded; most bytes", () => {
  // without the transport's pointer nor `selected`: both pairs are nominated and succeeded
  const noTransport = relayed((s) => s.splice(s.indexOf(byId(s, "T01")), 1));
  assert.equal(rtcFields(report(noTransport)).pair, "CPfq0y7Tt2_hQ/K2P9c", "the most bytes");
  // a transport without selectedCandidatePairId (not connected yet) points at nothing
  const unselected = relayed((s) => delete byId(s, "T01").selectedCandidatePairId);
  assert.equal(rtcFields(report(unselected)).pair, "CPfq0y7Tt2_hQ/K2P9c");
  // Firefox's `selected` beats bytes
  const flagged = relayed((s) => {
    s.splice(s.indexOf(byId(s, "T01")), 1);
    byId(s, "CPd3Xn+Ad1_hQ/K2P9c").selected = true;
    byId(s, "CPfq0y7Tt2_hQ/K2P9c").selected = false;
  });
  assert.equal(rtcFields(report(flagged)).pair, "CPd3Xn+Ad1_hQ/K2P9c");
  // a pair that is nominated but not succeeded is no selected pair
  const checking = relayed((s) => {
    s.splice(s.indexOf(byId(s, "T01")), 1);
    for (const p of s.filter((x) => x.type === "candidate-pair")) p.state = "in-progress";
  });
  const f = rtcFields(report(checking));
  for (const key of ["pair", "pbs", "pbr", "bwe", "lct", "rct", "rp", "turn"]) {
    assert.equal(f[key], undefined, key);
  }
  assert.ok(Math.abs(f.rtt - 8.1) < 1e-9, "rtt still from remote-inbound-rtp");
});

test("rtt: the selected pair's currentRoundTripTime when no remote-inbound-rtp has one", () => {
  const stats = relayed((s) => {
    for (const r of s.filter((x) => x.type === "remote-inbound-rtp")) delete r.roundTripTime;
  });
  assert.equal(rtcFields(report(stats)).rtt, 3);
  const none = relayed((s) => {
    for (const r of s.filter((x) => x.type === "remote-inbound-rtp")) delete r.roundTripTime;
    delete byId(s, "CPd3Xn+Ad1_hQ/K2P9c").currentRoundTripTime;
  });
  assert.equal(rtcFields(report(none)).rtt, undefined);
});

test("missing ids: candidates or codec not in the report leave their fields absent", () => {
  const stats = relayed((s) => {
    s.splice(s.indexOf(byId(s, "IhQ/K2P9c")), 1);
    s.splice(s.indexOf(byId(s, "COT01_111_minptime=10;useinbandfec=1")), 1);
  });
  const f = rtcFields(report(stats));
  assert.deepEqual(path(f), ["CPd3Xn+Ad1_hQ/K2P9c", undefined, undefined, undefined, undefined]);
  assert.equal(f.pbs, 2416000);
  assert.equal(f.fec, undefined);
});

test("fec: in-band FEC or RED in the audio sender's codec, false otherwise", () => {
  const codec = "COT01_111_minptime=10;useinbandfec=1";
  const off = { sdpFmtpLine: "minptime=10;useinbandfec=0" };
  const plain = relayed((s) => Object.assign(byId(s, codec), off));
  assert.equal(rtcFields(report(plain)).fec, false);
  const noFmtp = relayed((s) => delete byId(s, codec).sdpFmtpLine);
  assert.equal(rtcFields(report(noFmtp)).fec, false);
  const redundant = { mimeType: "audio/red", sdpFmtpLine: "111/111" };
  const red = relayed((s) => Object.assign(byId(s, codec), redundant));
  assert.equal(rtcFields(report(red)).fec, true);
});

test("the 2018 names: mediaType where kind is missing", () => {
  const stats = relayed((s) => {
    for (const r of s.filter((x) => x.type.endsWith("-rtp"))) {
      r.mediaType = r.kind;
      delete r.kind;
    }
  });
  const f = rtcFields(report(stats));
  assert.equal(f.vob, rtcFields(report(relayed())).vob);
  assert.equal(f.aob, 80253);
});

test("absent, not guessed: nothing from an empty report, a stat without kind, no timestamp", () => {
  assert.deepEqual(rtcFields(new Map()), {});
  const bare = [{ id: "O", type: "outbound-rtp", bytesSent: 100, packetsSent: 1 }];
  assert.deepEqual(rtcFields(report(bare)), {});
});

test("absent, not guessed: values outside the wire type spoil their field", () => {
  const T = 1765000000000;
  const stats = [
    { id: "A", type: "outbound-rtp", kind: "audio", timestamp: T, bytesSent: 10.5,
      packetsSent: -1 },
    { id: "B", type: "outbound-rtp", kind: "audio", timestamp: T, bytesSent: 100, packetsSent: 2 },
    { id: "V", type: "outbound-rtp", kind: "video", timestamp: T, bytesSent: "9", packetsSent: NaN,
      frameWidth: 70000, frameHeight: 480.5, framesPerSecond: 1001,
      qualityLimitationReason: "gpu" },
    { id: "I", type: "inbound-rtp", kind: "audio", timestamp: T, jitter: 4000,
      bytesReceived: 2 ** 53, jitterBufferDelay: Infinity, packetsLost: -3, packetsReceived: null },
    { id: "J", type: "inbound-rtp", kind: "video", timestamp: T, jitter: NaN,
      totalFreezesDuration: 1.5, frameWidth: 640, frameHeight: 360, framesPerSecond: -1 },
  ];
  const f = rtcFields(report(stats));
  assertWire(f, "spoilt");
  assert.deepEqual(f, { ts: T, ail: 0, vzd: 1.5, vwi: 640, vhi: 360 });
});

test("qlr: the most severe limitation of several video senders, in any order", () => {
  const cases = [["bandwidth", "cpu", "none"], ["cpu", "other", "bandwidth"], ["none", "other"]];
  for (const reasons of cases) {
    const stats = reasons.map((r, n) => ({
      id: `V${n}`, type: "outbound-rtp", kind: "video", qualityLimitationReason: r,
    }));
    const worst = ["cpu", "bandwidth", "other", "none"].find((r) => reasons.includes(r));
    assert.equal(rtcFields(report(stats)).qlr, worst, reasons.join());
  }
});

test("ts: the time of this sample's local stats, not of a remote RTCP report", () => {
  const stats = relayed((s) => {
    byId(s, "RIA3961712018").timestamp = 1765000009999; // a peer's clock ahead of ours
  });
  assert.equal(rtcFields(report(stats)).ts, 1765000002000.512);
});

test("a maplike report (forEach and get only), as RTCStatsReport is", () => {
  const stats = relayed();
  const map = report(stats);
  const maplike = { forEach: (fn) => map.forEach(fn), get: (id) => map.get(id) };
  assert.deepEqual(rtcFields(maplike), rtcFields(map));
});

// Random reports built from the fixtures' stats with members replaced by hostile values: the
// output stays within the wire types whatever the browser hands over.
test("whatever the values, every emitted key is a wire key within its range", () => {
  let seed = 25;
  const random = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const hostile = [-1, -0.5, 0.5, 2 ** 53, 2 ** 60, 1e13, NaN, Infinity, -Infinity, "7", null, true,
    {}, "", "a b", "x".repeat(600), "relay", "tls", "cpu", "audio/red", undefined];
  const base = loadFixtures().flatMap((fx) => fx.samples);
  for (let round = 0; round < 300; round++) {
    const stats = structuredClone(base[Math.floor(random() * base.length)]);
    for (const s of stats) {
      for (const member of Object.keys(s)) {
        if (member !== "type" && member !== "id" && random() < 0.15) {
          s[member] = hostile[Math.floor(random() * hostile.length)];
        }
      }
    }
    assertWire(rtcFields(report(stats)), `round ${round}`);
  }
});
