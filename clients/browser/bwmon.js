// bwmon browser client: samples RTCPeerConnection.getStats() and sends `rtc` and `event`
// frames (protocol/PROTOCOL.md §4.3, §4.5) to a bwmon daemon over a WebSocket session (§7).
// One dependency-free ES module: import it from the daemon (/client/bwmon.js), from the npm
// package, or copy this file. It never throws into the page and never blocks the call.

// ---- adapter: one getStats() report -> the wire fields of one rtc frame (PROTOCOL.md §4.3) ----

/**
 * The wire fields of one `rtc` sample read from one RTCStatsReport, absent values left out.
 * Pure: no state, no clock; the report's own timestamps give `ts`.
 * @param {RTCStatsReport | Map<string, any>} report
 * @returns {{ts: number, [key: string]: any}}
 */
export function rtcFields(report) {
  return { ts: 0 };
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
