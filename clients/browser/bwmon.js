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
const PICTURE_KEYS = { "inbound-rtp": ["vfi", "vwi", "vhi"], "outbound-rtp": ["vfo", "vwo", "vho"] };
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

const MAX_INT = Number.MAX_SAFE_INTEGER;
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
    if (kind === "video" && type in PICTURE_KEYS) {
      const best = picture[type];
      if (!best || frameArea(s) > frameArea(best)) picture[type] = s;
      const reason = LIMITATIONS.indexOf(s.qualityLimitationReason);
      if (type === "outbound-rtp" && reason > limit) limit = reason;
    }
  });
  // Seconds of the report -> ms on the wire.
  const putMs = (key, seconds) => putWire(f, key, seconds * 1000, 36e5);
  putWire(f, "ts", ts, 1e13);
  // Each stream was checked above: a sum of integers is one.
  for (const key in sums) putWire(f, key, sums[key], key in RTC_SECONDS ? 1e9 : MAX_INT);
  putMs("aj", jitter.audio);
  putMs("vj", jitter.video);
  putMs("rtt", rtt);
  for (const type in picture) {
    const s = picture[type], [fps, w, h] = PICTURE_KEYS[type];
    putWire(f, fps, s.framesPerSecond, 1000);
    putWire(f, w, s.frameWidth, 65535, true);
    putWire(f, h, s.frameHeight, 65535, true);
  }
  if (limit >= 0) f.qlr = LIMITATIONS[limit];
  for (const id of codecs) {
    const c = report.get(id);
    if (!c) continue;
    f.fec = f.fec || /^audio\/red$/i.test(c.mimeType) || /useinbandfec=1\b/.test(c.sdpFmtpLine);
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
  putWire(f, "pbs", pair.bytesSent, MAX_INT, true);
  putWire(f, "pbr", pair.bytesReceived, MAX_INT, true);
  putWire(f, "bwe", pair.availableOutgoingBitrate, 1e12);
  if (!("rtt" in f)) putMs("rtt", pair.currentRoundTripTime);
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
  s == null ? null : s > 80 ? "excellent" : s > 60 ? "good" : s > 40 ? "fair" : s > 20 ? "poor" : "bad";

// E-model R factor (quality.r_factor) of audio received (bps > 0); loss a fraction, turned
// into percent here.
function rFactor(loss, rtt, jb, bps, fec) {
  const d = 20 + jb + rtt / 2;
  let id = 0.024 * d;
  if (d > 177.3) id += 0.11 * (d - 177.3);
  const ie = clamp(55 - 4.6 * Math.log(bps), 0, 30);
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
  // A counter's increase: none when cur lacks it or it went back (NaN or negative).
  const d = (k) => Math.max(0, cur[k] - (prev[k] ?? 0)) || 0;
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
        clamp(100 - 20 * Math.log(EXPECTED_VIDEO_BPS / vIn), 0, 100),
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
    Math.max(lossDown || 0, lossUp || 0) > 0.01,
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
    level: level(score),
    reasons: REASONS.filter((_, i) => found[i]),
    relayed,
    relayProtocol: relayed ? path.rp || "udp" : null,
    remoteRelayed: path.rct == "relay" && !relayed,
  };
}

// The worst value of the views' (the latest ts, the longest interval), null where none has one.
const WORST = { ts: Math.max, seconds: Math.max, lossDown: Math.max, lossUp: Math.max, rtt: Math.max, jitter: Math.max, mos: Math.min, video: Math.min, score: Math.min };

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
  const worst = {};
  for (const dir of ["up", "down"]) {
    worst[dir] = { audio: 0, video: 0 };
    for (const v of vs) for (const kind in worst[dir]) worst[dir][kind] += v[dir][kind];
  }
  for (const k in WORST) {
    const xs = vs.map((v) => v[k]).filter((x) => x != null);
    worst[k] = xs.length ? WORST[k](...xs) : null;
  }
  const protocols = vs.map((v) => v.relayProtocol).filter(Boolean);
  return {
    ...worst,
    level: level(worst.score),
    reasons: REASONS.filter((r) => vs.some((v) => v.reasons.includes(r))),
    relayed: vs.some((v) => v.relayed),
    // TCP or TLS, where a connection has it, is the one that costs (head-of-line blocking).
    relayProtocol: protocols.find((p) => p != "udp") ?? protocols[0] ?? null,
    remoteRelayed: vs.some((v) => v.remoteRelayed),
    connections: vs,
  };
}

// ---- transport: the WebSocket session (§7), the ring of unsent frames, backoff, last flush ----

export const VERSION = "0.1.0";
// Browsers refuse keepalive requests once their bodies in flight pass 64 KiB per page.
const KEEPALIVE_BYTES = 60000;

/** `bytes` random bytes in hex, from the platform's CSPRNG (boot nonces, connection ids). */
export function randomId(bytes) {
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)), (b) => (b | 256).toString(16).slice(1)).join("");
}

/** The WebSocket and POST URLs of the daemon's `/ingest`, from its base http(s) URL (a path
 * prefix kept, for a daemon behind a proxy) or from its ws(s) ingest URL. */
export function endpoints(url) {
  const u = new URL(url, globalThis.location?.href);
  const at = u.host + u.pathname.replace(/(\/ingest)?\/?$/, "/ingest");
  const s = ["https:", "wss:"].includes(u.protocol) ? "s" : "";
  return { ws: `ws${s}://${at}`, post: `http${s}://${at}` };
}

/** Milliseconds before reconnection attempt `attempt` (0, 1, …): full jitter, a uniform random
 * time below an exponential bound capped at 30 s, so that the clients a daemon restart cut off
 * together come back spread out. */
export function backoffMs(attempt, random = Math.random) {
  return random() * Math.min(30000, 500 * 2 ** attempt);
}

// An upper bound of the UTF-8 size of a string, exact for ASCII (identifiers usually are).
const bytesOf = (s) => (/[^\0-\x7f]/.test(s) ? 3 * s.length : s.length);

// The JSON texts of the first of `frames` that fit in one message (a JSON array) of at most
// `maxFrames` frames and `maxBytes` bytes (the first frame whatever its size).
function fit(frames, maxFrames, maxBytes) {
  const texts = [];
  for (let size = 2; texts.length < Math.min(maxFrames, frames.length); ) {
    const s = JSON.stringify(frames[texts.length]);
    if ((size += bytesOf(s) + 1) > maxBytes && texts.length) break;
    texts.push(s);
  }
  return texts;
}

/**
 * One WebSocket session's protocol (PROTOCOL.md §7) without I/O: fed the frames to send and the
 * daemon's replies, it returns the text messages to write. It holds every frame until an ack
 * covers it: unsent frames in order, then the messages sent and not yet acknowledged, which a new
 * session resends first (the daemon does not apply a sample twice, §8.6). At most `maxQueue`
 * frames: past that, the oldest sent messages are forgotten, then the oldest unsent frame that is
 * not its stream's latest sample is dropped and counted, so that after a reconnect every stream's
 * totals still go out at once (counters are cumulative, §8.1).
 */
export function createSession({ boot, token, maxQueue = 1000, stats }) {
  // A function gives the current token at each hello: a short-lived token outlives its session
  // (§7.8), not the next one.
  const hello = () =>
    JSON.stringify({ t: "hello", boot, kind: "browser", agent: "bwmon-js/" + VERSION, token: typeof token === "function" ? token() : token });
  const queue = []; // every frame unacknowledged: the first `sent` of them sent, then the unsent
  const messages = []; // [message number, frame count] of each message sent and not acknowledged
  const latest = new Map(); // connection id -> its newest rtc frame
  let ready = false, n = 0, sent = 0, rejected = 0, maxFrames = 1000, maxBytes = 1 << 20;
  const isLatest = (f) => f.t === "rtc" && latest.get(f.c) === f;
  // The oldest message sent, out of the queue: its frames.
  const forget = () => {
    const count = messages.shift()[1];
    sent -= count;
    return queue.splice(0, count);
  };

  // Every unsent frame, in messages within the welcome's limits (at least one frame each).
  function take() {
    const out = [];
    while (sent < queue.length) {
      const texts = fit(queue.slice(sent), maxFrames, maxBytes);
      messages.push([++n, texts.length]);
      sent += texts.length;
      out.push("[" + texts.join(",") + "]");
      stats.sent += texts.length;
    }
    return out;
  }

  return {
    /** Frames unsent or not yet acknowledged. */
    pending: () => queue.length,
    /** A new connection is open: the hello to send first. */
    open() {
      n = rejected = 0;
      return hello();
    },
    /** One reply of the daemon (a JSON text message): the messages to send now. */
    receive(text) {
      const r = JSON.parse(text);
      if (r.t === "welcome") {
        ready = stats.connected = true;
        if (r.max_frames > 0) maxFrames = r.max_frames;
        if (r.max_message_bytes > 0) maxBytes = r.max_message_bytes;
        return take();
      }
      if (r.t === "ack") {
        while (messages[0]?.[0] <= r.msg) {
          for (const f of forget()) {
            stats.acked++;
            if (isLatest(f)) latest.delete(f.c);
          }
        }
        // error replies are capped per interval (§7.4); the ack's total is always right
        if (r.rejected > rejected) stats.rejected += r.rejected - rejected, (rejected = r.rejected);
      } else if (r.t === "error") {
        rejected++;
        stats.rejected++;
        stats.lastError = `${r.reason}: ${r.detail}`;
      }
      return [];
    },
    /** Frames to send: the messages to write now (none before the welcome). */
    push(frames) {
      for (const f of frames) {
        if (f.t === "rtc") latest.set(f.c, f);
        queue.push(f);
        while (queue.length > maxQueue) {
          if (messages.length) {
            forget();
            continue;
          }
          const i = queue.findIndex((g) => !isLatest(g));
          queue.splice(Math.max(i, 0), 1);
          stats.dropped++;
        }
      }
      return ready ? take() : [];
    },
    /** The connection ended: what it left unacknowledged waits for the next one, first. */
    lost() {
      ready = stats.connected = false;
      messages.length = sent = 0;
    },
    /** The last flush's message, or null: the hello, then the newest of everything
     * unacknowledged and `frames` within the keepalive budget (they carry the totals and the
     * leave); the session holds nothing after it. */
    last(frames) {
      this.lost();
      latest.clear();
      const first = hello();
      const all = queue.splice(0).concat(frames).reverse();
      const texts = fit(all, maxFrames - 1, KEEPALIVE_BYTES - first.length).reverse();
      stats.dropped += all.length - texts.length;
      stats.sent += texts.length;
      return texts.length ? "[" + [first, ...texts].join(",") + "]" : null;
    },
  };
}

// `fn`, never throwing: what it throws goes to `note`.
const guard = (note, fn) => (...args) => {
  try {
    return fn(...args);
  } catch (err) {
    note(err);
  }
};

// What `promise` resolves to, or undefined once `ms` have passed.
function within(promise, ms) {
  let box;
  return Promise.race([promise, new Promise((r) => (box = setTimeout(r, ms)))]).finally(() => clearTimeout(box));
}

/**
 * The link to the daemon: a WebSocket kept open (a new session after each loss, with backoff),
 * and the last flush through a keepalive `POST /ingest`, whose body is one ingest message that
 * starts with the hello (the token in it: no header, hence no CORS preflight). Never throws.
 */
export function connect({ url, token, boot, maxQueue, stats, note }) {
  const { ws: wsUrl, post } = endpoints(url);
  const session = createSession({ boot, token, maxQueue, stats });
  const safe = (fn) => guard(note, fn);
  let ws = null, attempt = 0, retry = null, done = false, wake = null;

  function open() {
    let sock, giveUp;
    const lost = (why) => {
      clearTimeout(giveUp);
      if (ws !== sock) return;
      ws = null;
      session.lost();
      if (why) stats.lastError = why;
      wake?.();
      if (!done) stats.reconnects++, (retry = setTimeout(open, backoffMs(attempt++)));
    };
    try {
      ws = sock = new WebSocket(wsUrl);
    } catch (err) {
      note(err);
      ws = sock = {};
      return lost();
    }
    // A connection that hangs before its welcome is given up and tried again.
    giveUp = setTimeout(() => sock.close(), 10000);
    sock.onopen = safe(() => sock.send(session.open()));
    sock.onmessage = safe((e) => {
      write(session.receive(e.data));
      // The welcome came (the session says so in stats.connected).
      if (stats.connected) clearTimeout(giveUp), (attempt = 0);
      wake?.();
    });
    sock.onclose = (e) => lost(e.code === 1000 ? null : `closed ${e.code} ${e.reason || ""}`.trim());
  }

  // A socket already closing takes nothing (its close requeues what the session gave it).
  const write = safe((messages) => {
    if (ws?.readyState === 1) messages.forEach((m) => ws.send(m));
  });

  open();
  return {
    pending: session.pending,
    send: (frames) => write(session.push(frames)),
    /** The last flush, at once (pagehide): everything unacknowledged, and `frames`, by POST. */
    flush: safe((frames) => {
      done = true;
      clearTimeout(retry);
      const body = session.last(frames);
      if (body) {
        // A string body goes as text/plain: a simple request, no preflight, allowed in unload.
        // The answer comes only if the page outlives the request (a close() that timed out).
        fetch(post, { method: "POST", keepalive: true, body })
          .then((r) =>
            r.json().then((a) => {
              stats.rejected += a.rejected | 0;
              if (a.errors?.length) stats.lastError = `POST /ingest ${r.status}: ${a.errors[0].reason}`;
            }),
          )
          .catch(note);
      }
      ws?.close(1000);
    }),
    /** Send the last frames on the session and wait at most `ms` for their ack (woken by each
     * reply and by the socket's loss); what is still unacknowledged then goes by POST. Resolves,
     * never rejects. */
    async end(frames, ms) {
      done = true;
      clearTimeout(retry);
      write(session.push(frames));
      const deadline = Date.now() + ms;
      while (session.pending() && ws && Date.now() < deadline) {
        await within(new Promise((r) => (wake = r)), deadline - Date.now());
      }
      this.flush([]);
    },
  };
}

// ---- monitor: createMonitor, the sampling loop, events, the RTCPeerConnection wrapper ----

// One symbol per page, whatever the number of copies of this module: on the wrapper, its guard;
// on globalThis, the monitor that receives the new connections.
const WRAPPED = Symbol.for("bwmon.wrap");
const CLOSE_MS = 2000;
// A getStats() that takes longer is taken as hung: the loop goes on without its connection.
const HUNG_MS = 10000;
const clock = () => performance.now();

/**
 * A monitor of one participant's peer connections: one serialized loop takes one getStats() per
 * connection per tick and sends an `rtc` frame of each (§4.3); events go out as they happen
 * (§4.5). Nothing it does throws into the page: errors are kept in `stats().lastError`.
 */
export function createMonitor(options) {
  const { url, token, meeting: m, participant: p, intervalMs = 2000, maxQueue = 1000 } = options || {};
  const stats = { sent: 0, acked: 0, dropped: 0, rejected: 0, reconnects: 0, connected: false, lastError: null, getStatsMs: 0, workMs: 0 };
  const note = (err) => void (stats.lastError = String(err?.message ?? err));
  const safe = (fn) => guard(note, fn);
  const conns = new Map(); // pc -> its state
  const callbacks = new Set();
  const link = url ? safe(connect)({ url, token, boot: randomId(8), maxQueue, stats, note }) : null;
  let joined = false, left = false, closed = false, timer = null, running = null, closing = null;
  const send = (frames) => link?.send(frames);
  const event = (ev, val, c) =>
    ({ t: "event", m, p, ev, ts: Date.now(), c, val: val == null ? undefined : String(val).slice(0, 128) });
  const emit = (ev, val, c) => send([event(ev, val, c)]);
  const leave = () => (joined && !left ? ((left = true), [event("leave")]) : []);

  // At most one getStats() per connection in flight: a call that outlives its time box keeps
  // its connection out of the next ticks until it settles. Called now (the executor runs at
  // once); a failure is noted and gives no report.
  const sample = (e) =>
    (e.busy = new Promise((r) => r(e.pc.getStats())).catch(note).finally(() => (e.busy = null)));

  // One sample of each of `list` within `limitMs`, sent; a tick also times itself and hands the
  // local view to the onSample callbacks (the last samples of remove and close do neither).
  async function measure(list, limitMs, ticking) {
    const t0 = clock();
    const reports = await Promise.all(list.map((e) => (e.busy ? null : within(sample(e), limitMs))));
    const t1 = clock();
    const frames = [], views = [];
    list.forEach(safe((e, i) => {
      if (!reports[i]) return;
      const fields = rtcFields(reports[i]);
      frames.push({ t: "rtc", m, p, c: e.c, q: e.q++, ...fields });
      if (ticking && callbacks.size) {
        const view = localView(e.prev, fields, e.score);
        if (view) views.push(view), (e.score = view.score);
      }
      e.prev = fields;
    }));
    send(frames);
    if (!ticking) return;
    const view = combineViews(views);
    stats.getStatsMs = t1 - t0;
    stats.workMs = clock() - t1;
    if (view) for (const cb of callbacks) safe(cb)(view);
  }

  function tick() {
    timer = null;
    const t0 = clock();
    // New tracks (addTrack, replaceTrack) are watched from the tick after they appear.
    for (const e of conns.values()) e.pc.signalingState === "closed" ? forget(e) : watchTracks(e);
    running = measure([...conns.values()], HUNG_MS, true)
      .catch(note)
      .then(() => {
        running = null;
        // A tick longer than the interval is followed at once (a negative delay is none).
        if (!closed && conns.size) timer = setTimeout(tick, intervalMs - (clock() - t0));
      });
  }

  // No more ticks nor events: the connections it had, forgotten.
  function stop() {
    closed = true;
    clearTimeout(timer);
    const list = [...conns.values()];
    list.forEach(forget);
    return list;
  }

  function forget(e) {
    conns.delete(e.pc);
    e.listening.abort();
  }

  // A listener of `target` until the connection is forgotten.
  const listen = (e, target, type, fn) => target.addEventListener(type, safe(fn), { signal: e.listening.signal });

  function watchTracks(e) {
    for (const { track } of e.pc.getSenders?.() ?? []) {
      if (!track || e.tracks.has(track)) continue;
      e.tracks.add(track);
      for (const ev of ["mute", "unmute"]) listen(e, track, ev, () => emit(ev, track.kind, e.c));
    }
  }

  // An ICE restart gives the local description new ICE credentials (RFC 8839).
  function checkRestart(e) {
    const ufrag = /a=ice-ufrag:(\S+)/.exec(e.pc.localDescription?.sdp)?.[1];
    if (ufrag && e.ufrag && ufrag !== e.ufrag) emit("reconnect", "ice-restart", e.c);
    e.ufrag = ufrag || e.ufrag;
  }

  const api = {
    add: safe((pc, opts) => {
      if (closed || conns.has(pc)) return;
      // Later also: prev (the last sample's fields), score, busy (its getStats() in flight), ufrag.
      const e = { pc, c: opts?.connection || randomId(4), q: 0, tracks: new WeakSet(), listening: new AbortController() };
      listen(e, pc, "iceconnectionstatechange", () => emit("ice", pc.iceConnectionState, e.c));
      listen(e, pc, "connectionstatechange", () => emit("ice", "connection:" + pc.connectionState, e.c));
      listen(e, pc, "signalingstatechange", () => pc.signalingState === "stable" && checkRestart(e));
      conns.set(pc, e);
      if (!joined) joined = true, emit("join");
      checkRestart(e);
      watchTracks(e);
      if (!timer && !running) timer = setTimeout(tick, intervalMs);
    }),

    // Synchronous up to getStats(), so that the wrapper's close() samples before closing.
    async remove(pc) {
      const e = conns.get(pc);
      if (!e) return;
      forget(e);
      // A sample in flight is the connection's last (its tick sends it); else take one.
      await (e.busy || measure([e], CLOSE_MS)).catch(note);
    },

    event: safe((kind, detail) => {
      const d = detail !== null && typeof detail === "object" ? detail : { value: detail };
      if (!closed) emit(kind, d.value, conns.get(d.connection)?.c);
    }),

    onSample(callback) {
      callbacks.add(callback);
      return () => void callbacks.delete(callback);
    },

    wrap: safe(() => {
      const g = globalThis, Native = g.RTCPeerConnection;
      if (typeof Native !== "function") return false;
      if (!Native[WRAPPED]) {
        g.RTCPeerConnection = class RTCPeerConnection extends Native {
          static [WRAPPED] = true;
          #monitor = g[WRAPPED];
          constructor(...args) {
            super(...args);
            this.#monitor?.add(this);
          }
          close() {
            this.#monitor?.remove(this);
            return super.close();
          }
        };
      }
      g[WRAPPED] = api;
      return true;
    }),

    stats: () => ({ ...stats, queued: link?.pending() ?? 0, connections: conns.size }),

    close: () =>
      (closing ??= (async () => {
        const deadline = Date.now() + CLOSE_MS;
        const list = stop();
        // The samples of a tick in flight, and the others' last ones, go before the leave: a
        // sample after it would bring the participant back.
        await within(Promise.all([running, measure(list, CLOSE_MS / 2, false)]), CLOSE_MS / 2);
        await link?.end(leave(), deadline - Date.now());
        unhook();
      })().catch(note)),
  };

  // pagehide leaves no time to wait for anything: the last flush goes out at once (also in the
  // middle of a close()).
  const onPageHide = safe(() => {
    stop();
    link?.flush(leave());
    unhook();
  });
  const unhook = () => {
    globalThis.removeEventListener?.("pagehide", onPageHide);
    if (globalThis[WRAPPED] === api) globalThis[WRAPPED] = null;
  };
  globalThis.addEventListener?.("pagehide", onPageHide);
  return api;
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
  const COLORS = { excellent: "#183", good: "#7b1", fair: "#ea0", poor: "#e51", bad: "#d33" };
  customElements.define(
    "bwmon-indicator",
    class extends HTMLElement {
      constructor() {
        super();
        this.attachShadow({ mode: "open" }).innerHTML =
          "<style>:host{font:12px sans-serif}" +
          "i{display:inline-block;width:.8em;height:.8em;margin-right:.4em;border-radius:50%;background:#999}</style>" +
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
