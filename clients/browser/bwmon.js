// bwmon browser client: samples RTCPeerConnection.getStats() and sends `rtc` and `event`
// frames (protocol/PROTOCOL.md §4.3, §4.5) to a bwmon daemon over a WebSocket session (§7).
// One dependency-free ES module: import it from the daemon (/client/bwmon.js), from the npm
// package, or copy this file. It never throws into the page and never blocks the call.

// ---- adapter: one getStats() report -> the wire fields of one rtc frame (PROTOCOL.md §4.3) ----

// Counters summed over every RTP stream of one type and kind (all simulcast layers, all remote
// senders), per "type kind": wire key -> W3C member.
const RTC_SUMS = {
  "outbound-rtp audio": { aob: "bytesSent", aop: "packetsSent" },
  "outbound-rtp video": { vob: "bytesSent", vop: "packetsSent" },
  "inbound-rtp audio": {
    aib: "bytesReceived", aip: "packetsReceived", ail: "packetsLost",
    ajd: "jitterBufferDelay", aje: "jitterBufferEmittedCount", acs: "concealedSamples",
    ass: "silentConcealedSamples", ats: "totalSamplesReceived",
  },
  "inbound-rtp video": {
    vib: "bytesReceived", vip: "packetsReceived", vil: "packetsLost", vfd: "framesDecoded",
    vfx: "framesDropped", vzc: "freezeCount", vzd: "totalFreezesDuration",
  },
  "remote-inbound-rtp audio": { arl: "packetsLost" },
  "remote-inbound-rtp video": { vrl: "packetsLost" },
};
// The two sums counted in seconds (floats up to 1e9); every other sum is an integer counter.
const RTC_SECONDS = { ajd: 1, vzd: 1 };
// The video gauges of each direction, read from its stream with the largest frame.
const PICTURE_KEYS = [["inbound-rtp", "vfi", "vwi", "vhi"], ["outbound-rtp", "vfo", "vwo", "vho"]];
const CANDIDATE_TYPES = ["host", "srflx", "prflx", "relay"];
const RELAY_PROTOCOLS = ["udp", "tcp", "tls"];
// Encoder limitations, mildest first: several video senders report the most severe.
const LIMITATIONS = ["none", "other", "bandwidth", "cpu"];

// Where the browsers part from each other and from the W3C names (clients/browser/README.md,
// "What each browser reports"). Everything else any browser leaves out is simply absent.
const BROWSERS = {
  // The media kind: `kind` everywhere now; `mediaType` in the 2018 draft and the browsers that
  // followed it.
  kind: (s) => s.kind || s.mediaType,
  // The selected candidate pair, first rule that finds one: the transport's pointer (Chromium,
  // Safari, Firefox with transport stats), the pair's own `selected` (Firefox without them),
  // a nominated pair that succeeded (a browser that names neither). Several: the most bytes.
  pair: [
    (p, selected) => selected.has(p.id),
    (p) => p.selected === true,
    (p) => p.nominated === true && p.state === "succeeded",
  ],
};

// Sets f[key] only to a number of the wire type in 0..max (PROTOCOL.md §3.2, §5.1 ranges).
function putWire(f, key, v, max, int) {
  if (typeof v === "number" && v >= 0 && v <= max && (!int || Number.isInteger(v))) f[key] = v;
}

// Identifiers (§4.1): 1..max code points, no whitespace, control, format or separator.
const WIRE_ID = /^[^\s\p{C}\p{Z}]+$/u;
function putWireId(f, key, v, max) {
  if (typeof v === "string" && WIRE_ID.test(v) && [...v].length <= max) f[key] = v;
}

const pairBytes = (p) => (p.bytesSent || 0) + (p.bytesReceived || 0);
const frameArea = (s) => s.frameWidth * s.frameHeight || 0;

/**
 * The wire fields of one `rtc` sample read from one RTCStatsReport: counters, gauges, the path
 * of the selected candidate pair and `ts`, each only when the report has its source and its
 * value fits the wire type; never t, m, p, c, q or boot. Pure: no state, no clock.
 * @param {RTCStatsReport | Map<string, any>} report
 * @returns {{ts?: number, [key: string]: any}}
 */
export function rtcFields(report) {
  const f = {};
  const sums = {};
  const pairs = [];
  const selected = new Set();
  const codecs = [];
  const picture = {}; // direction -> the video stream with the largest frame
  const jitter = { audio: -1, video: -1 };
  let ts = -1;
  let rtt = -1;
  let limit = -1;
  report.forEach((s) => {
    const { type } = s;
    const kind = BROWSERS.kind(s);
    // Remote stats are stamped with the time of the RTCP report they come from, not this sample's.
    if (!type.startsWith("remote-") && s.timestamp > ts) ts = s.timestamp;
    const members = RTC_SUMS[`${type} ${kind}`];
    for (const key in members) {
      let v = s[members[key]];
      if (v === undefined) continue;
      // packetsLost goes negative when duplicates outnumber losses: count no loss, not less.
      if (v < 0 && members[key] === "packetsLost") v = 0;
      const ok = typeof v === "number" && v >= 0 && (key in RTC_SECONDS || Number.isInteger(v));
      // One unreadable stream spoils its sum: a partial sum would look like a counter reset.
      sums[key] = ok ? (sums[key] ?? 0) + v : NaN;
    }
    if (type === "inbound-rtp" && s.jitter > jitter[kind]) jitter[kind] = s.jitter;
    if (type === "remote-inbound-rtp" && s.roundTripTime > rtt) rtt = s.roundTripTime;
    if (type === "transport") selected.add(s.selectedCandidatePairId);
    if (type === "candidate-pair") pairs.push(s);
    if (type === "outbound-rtp" && kind === "audio") codecs.push(s.codecId);
    if ((type === "outbound-rtp" || type === "inbound-rtp") && kind === "video") {
      const best = picture[type];
      if (!best || frameArea(s) > frameArea(best)) picture[type] = s;
      const reason = LIMITATIONS.indexOf(s.qualityLimitationReason);
      if (type === "outbound-rtp" && reason > limit) limit = reason;
    }
  });
  putWire(f, "ts", ts, 1e13);
  for (const key in sums) {
    const int = !(key in RTC_SECONDS);
    putWire(f, key, sums[key], int ? Number.MAX_SAFE_INTEGER : 1e9, int);
  }
  putWire(f, "aj", jitter.audio * 1000, 36e5);
  putWire(f, "vj", jitter.video * 1000, 36e5);
  putWire(f, "rtt", rtt * 1000, 36e5);
  for (const [type, fps, w, h] of PICTURE_KEYS) {
    const s = picture[type];
    if (!s) continue;
    putWire(f, fps, s.framesPerSecond, 1000);
    putWire(f, w, s.frameWidth, 65535, true);
    putWire(f, h, s.frameHeight, 65535, true);
  }
  if (limit >= 0) f.qlr = LIMITATIONS[limit];
  for (const id of codecs) {
    const c = report.get(id);
    if (!c) continue;
    const red = String(c.mimeType).toLowerCase() === "audio/red";
    f.fec = f.fec || red || /useinbandfec=1\b/.test(c.sdpFmtpLine);
  }
  let pair;
  for (const rule of BROWSERS.pair) {
    for (const p of pairs) {
      if (rule(p, selected) && (!pair || pairBytes(p) > pairBytes(pair))) pair = p;
    }
    if (pair) break;
  }
  if (!pair) return f;
  putWireId(f, "pair", pair.id, 128);
  putWire(f, "pbs", pair.bytesSent, Number.MAX_SAFE_INTEGER, true);
  putWire(f, "pbr", pair.bytesReceived, Number.MAX_SAFE_INTEGER, true);
  putWire(f, "bwe", pair.availableOutgoingBitrate, 1e12);
  if (!("rtt" in f)) putWire(f, "rtt", pair.currentRoundTripTime * 1000, 36e5);
  const local = report.get(pair.localCandidateId);
  const remote = report.get(pair.remoteCandidateId);
  // The daemon reads rct only beside lct (a relayed peer is not a relayed self): both or none.
  const lct = local?.candidateType;
  const rct = remote?.candidateType;
  if (!CANDIDATE_TYPES.includes(lct) || !CANDIDATE_TYPES.includes(rct)) return f;
  f.lct = lct;
  f.rct = rct;
  if (f.lct !== "relay") return f;
  // The leg to the TURN server; `protocol` is the leg to the peer, udp even over TURN/TCP.
  if (RELAY_PROTOCOLS.includes(local.relayProtocol)) f.rp = local.relayProtocol;
  putWireId(f, "turn", local.url, 512);
  return f;
}

// ---- quality: the page's own view of a tick, with the daemon's formulas ----

/**
 * The local view of one interval between two samples of one connection (same formulas as
 * collector/aggregate/quality.py and engine.py), or null for a first sample.
 * @param {object | null} prev  the previous sample's fields (rtcFields), null for the first
 * @param {object} cur          this sample's fields
 * @param {number | null} prevScore the previous smoothed quality score
 * @returns {object | null}
 */
export function localView(prev, cur, prevScore) {
  return null;
}

// ---- transport: the WebSocket session (§7), the ring of unsent frames, backoff, last flush ----

// ---- monitor: createMonitor, the sampling loop, events, the RTCPeerConnection wrapper ----

/** @param {object} options */
export function createMonitor(options) {
  throw new Error("not built yet");
}

// ---- indicator: <bwmon-indicator>, an optional custom element showing the local view ----
