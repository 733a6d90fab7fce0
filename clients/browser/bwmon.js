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

// Constants of collector/aggregate/quality.py and settings.py (the aggregate defaults).
const REASONS = ["loss", "rtt", "jitter", "bitrate", "cpu", "relay-tcp", "freeze"];
const EXPECTED_VIDEO_BPS = 1.5e6;
const EXPECTED_FPS = 30;
const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
const level = (s) =>
  s > 80 ? "excellent" : s > 60 ? "good" : s > 40 ? "fair" : s > 20 ? "poor" : "bad";

// E-model R factor (quality.r_factor); loss a fraction, turned into percent here.
function rFactor(loss, rtt, jb, bps, fec) {
  const d = 20 + jb + rtt / 2;
  let id = 0.024 * d;
  if (d > 177.3) id += 0.11 * (d - 177.3);
  const ie = bps <= 0 ? 30 : clamp(55 - 4.6 * Math.log(bps), 0, 30);
  const ppl = 100 * loss;
  return clamp(93.2 - id - (ie + ((95 - ie) * ppl) / (ppl + (fec ? 20 : 10))), 0, 100);
}

/**
 * The local view of one interval between two samples of one connection, with the daemon's
 * formulas and derivation (collector/aggregate/quality.py, engine.py `derive_interval`), or
 * null for a first sample. Checked against test/fixtures/quality-vectors.json, which the
 * daemon's own code computes. A counter lower than before is a reset: no rate from it; a
 * counter absent from `prev` counts from 0, one absent from `cur` counts nothing; a gauge or
 * the path absent from `cur` keeps `prev`'s. Passing as `prev` the samples so far merged
 * (`last = {...last, ...cur}`) keeps what several samples omit, as the daemon does.
 * @param {object | null} prev  the previous sample's fields (rtcFields), null for the first
 * @param {object} cur          this sample's fields
 * @param {number | null} prevScore the previous smoothed quality score
 * @returns {object | null}
 */
export function localView(prev, cur, prevScore) {
  const dt = prev && (cur.ts - prev.ts) / 1000;
  if (!(dt > 0)) return null;
  const d = (k) => (cur[k] == null || cur[k] < (prev[k] ?? 0) ? 0 : cur[k] - (prev[k] ?? 0));
  const bps = (k) => (8 * d(k)) / dt;
  const g = (k) => cur[k] ?? prev[k] ?? null;
  const aIn = bps("aib"), vIn = bps("vib");
  const lost = d("ail") + d("vil"), got = d("aip") + d("vip"), sent = d("aop") + d("vop");
  const lossDown = lost + got > 0 ? lost / (lost + got) : null;
  const lossUp = sent > 0 ? Math.min(1, (d("arl") + d("vrl")) / sent) : null;
  const jb = d("aje") > 0 ? (1000 * d("ajd")) / d("aje") : null;
  const freeze = Math.min(1, d("vzd") / dt);
  const rttG = g("rtt"), rtt = rttG || 0, qlr = g("qlr");
  const r = aIn > 0 ? rFactor(lossDown || 0, rtt, jb || 0, aIn, g("fec")) : null;
  const mos = r == null ? null : clamp(1 + 0.035 * r + 7e-6 * r * (r - 60) * (100 - r), 1, 4.5);
  let video = null;
  if (vIn > 0) {
    const vl = d("vil"), vr = d("vip"), vLoss = vl + vr ? vl / (vl + vr) : 0;
    video = clamp(
      Math.min(
        clamp(100 - 10 * (100 * vLoss) - Math.max(0, (rtt - 150) / 10), 0, 100),
        vIn >= EXPECTED_VIDEO_BPS ? 100 : clamp(100 - 20 * Math.log(EXPECTED_VIDEO_BPS / vIn), 0, 100),
        clamp(100 * Math.min(1, (g("vfi") ?? EXPECTED_FPS) / EXPECTED_FPS) - 100 * freeze, 0, 100),
      ) - (qlr == "cpu" || qlr == "bandwidth" ? 10 : 0),
      0,
      100,
    );
  }
  const raw = r == null ? video : video == null ? r : Math.min(r, video);
  const w = raw < prevScore ? 0.7 : 0.4;
  const score = raw == null ? prevScore : prevScore == null ? raw : w * raw + (1 - w) * prevScore;
  const path = cur.lct != null ? cur : prev.lct != null ? prev : {};
  const relayed = path.lct == "relay";
  const aj = g("aj");
  const found = [
    lossDown != null || lossUp != null ? Math.max(lossDown || 0, lossUp || 0) > 0.01 : false,
    rttG > 400,
    aj > 30,
    vIn > 0 && vIn < 0.5 * EXPECTED_VIDEO_BPS,
    qlr == "cpu",
    relayed && (path.rp == "tcp" || path.rp == "tls"),
    freeze > 0,
  ];
  return {
    ts: cur.ts,
    seconds: dt,
    up: { audio: bps("aob"), video: bps("vob") },
    down: { audio: aIn, video: vIn },
    lossDown,
    lossUp,
    rtt: rttG,
    jitter: aj ?? g("vj"),
    mos,
    video,
    score: score ?? null,
    level: score == null ? null : level(score),
    reasons: REASONS.filter((_, i) => found[i]),
    relayed,
    relayProtocol: relayed ? path.rp || "udp" : null,
    remoteRelayed: path.rct == "relay" && !relayed,
  };
}

/**
 * One view of a participant's several peer connections: bitrates summed, the worst loss, RTT,
 * jitter, MOS, video score and score, the reasons of all (in the daemon's order), relayed if
 * any is; `connections` holds the views combined. Null when none is given.
 * @param {Array<object | null>} views
 * @returns {object | null}
 */
export function combineViews(views) {
  const vs = views.filter(Boolean);
  if (!vs.length) return null;
  const pick = (k, f) => {
    const xs = vs.map((v) => v[k]).filter((x) => x != null);
    return xs.length ? f(...xs) : null;
  };
  const sum = (dir, kind) => vs.reduce((s, v) => s + v[dir][kind], 0);
  const score = pick("score", Math.min);
  const protocols = vs.map((v) => v.relayProtocol).filter(Boolean);
  return {
    ts: pick("ts", Math.max),
    seconds: pick("seconds", Math.max),
    up: { audio: sum("up", "audio"), video: sum("up", "video") },
    down: { audio: sum("down", "audio"), video: sum("down", "video") },
    lossDown: pick("lossDown", Math.max),
    lossUp: pick("lossUp", Math.max),
    rtt: pick("rtt", Math.max),
    jitter: pick("jitter", Math.max),
    mos: pick("mos", Math.min),
    video: pick("video", Math.min),
    score,
    level: score == null ? null : level(score),
    reasons: REASONS.filter((r) => vs.some((v) => v.reasons.includes(r))),
    relayed: vs.some((v) => v.relayed),
    // TCP or TLS, where a connection has it, is the one that costs (head-of-line blocking).
    relayProtocol: protocols.find((p) => p != "udp") ?? protocols[0] ?? null,
    remoteRelayed: vs.some((v) => v.remoteRelayed),
    connections: vs,
  };
}

// ---- transport: the WebSocket session (§7), the ring of unsent frames, backoff, last flush ----

// ---- monitor: createMonitor, the sampling loop, events, the RTCPeerConnection wrapper ----

/** @param {object} options */
export function createMonitor(options) {
  throw new Error("not built yet");
}

// ---- indicator: <bwmon-indicator>, an optional custom element showing the local view ----

const rate = (b) => (b < 1e6 ? `${Math.round(b / 1e3)} kb/s` : `${(b / 1e6).toFixed(1)} Mb/s`);

/**
 * The indicator's text for a view: up and down bitrate, RTT, loss (the worse direction),
 * the relay and the reasons, each left out when unknown; "–" without a view.
 * @param {object | null} v a view of localView or combineViews
 * @returns {string}
 */
export function indicatorText(v) {
  if (!v) return "–";
  const loss = Math.max(v.lossDown ?? -1, v.lossUp ?? -1);
  return [
    `↑ ${rate(v.up.audio + v.up.video)} ↓ ${rate(v.down.audio + v.down.video)}`,
    v.rtt != null && `${Math.round(v.rtt)} ms`,
    loss >= 0 && `${(100 * loss).toFixed(1)} % loss`,
    v.relayed && `TURN/${v.relayProtocol}`,
    v.reasons.join(", "),
  ]
    .filter(Boolean)
    .join(" · ");
}

// Defined only where custom elements exist (not in Node nor in workers), and once: the module
// may be imported twice (from the daemon and from a bundle).
if (globalThis.customElements && !customElements.get("bwmon-indicator")) {
  const COLORS = { excellent: "#1a7f37", good: "#7cb518", fair: "#e3a008", poor: "#e8590c", bad: "#d0312d" };
  customElements.define(
    "bwmon-indicator",
    class extends HTMLElement {
      constructor() {
        super();
        this.attachShadow({ mode: "open" }).innerHTML =
          "<style>:host{display:inline-flex;align-items:center;gap:.4em;font:12px sans-serif}" +
          "i{width:.8em;height:.8em;border-radius:50%;background:#999}</style>" +
          '<i part="dot"></i><span part="text">–</span>';
      }
      get view() {
        return this._v ?? null;
      }
      /** @param {object | null} v */
      set view(v) {
        this._v = v;
        const [, dot, text] = this.shadowRoot.children;
        dot.style.background = COLORS[v?.level] ?? "";
        text.textContent = indicatorText(v);
        this.title = v?.level ?? "";
      }
    },
  );
}
