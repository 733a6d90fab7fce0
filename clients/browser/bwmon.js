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
  const tls = u.protocol === "https:" || u.protocol === "wss:";
  return { ws: (tls ? "wss://" : "ws://") + at, post: (tls ? "https://" : "http://") + at };
}

/** Milliseconds before reconnection attempt `attempt` (0, 1, …): full jitter, a uniform random
 * time below an exponential bound capped at 30 s, so that the clients a daemon restart cut off
 * together come back spread out. */
export function backoffMs(attempt, random = Math.random) {
  return random() * Math.min(30000, 500 * 2 ** attempt);
}

// An upper bound of the UTF-8 size of a string, exact for ASCII (identifiers usually are).
const bytesOf = (s) => (/[^\0-\x7f]/.test(s) ? 3 * s.length : s.length);

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
  const unsent = [];
  const inflight = []; // [message number, frames]
  const latest = new Map(); // connection id -> its newest rtc frame
  let ready = false, n = 0, held = 0, rejected = 0, maxFrames = 1000, maxBytes = 1 << 20;
  const isLatest = (f) => f.t === "rtc" && latest.get(f.c) === f;

  function take() {
    const out = [];
    let batch = [], size = 2;
    const seal = () => {
      if (!batch.length) return;
      inflight.push([++n, batch.map((b) => b[0])]);
      out.push("[" + batch.map((b) => b[1]).join(",") + "]");
      stats.sent += batch.length;
      batch = [];
      size = 2;
    };
    held += unsent.length;
    for (const f of unsent.splice(0)) {
      const s = JSON.stringify(f), b = bytesOf(s) + 1;
      if (batch.length >= maxFrames || (batch.length && size + b > maxBytes)) seal();
      batch.push([f, s]);
      size += b;
    }
    seal();
    return out;
  }

  return {
    hello,
    get ready() { return ready; },
    /** Frames unsent or not yet acknowledged. */
    pending: () => unsent.length + held,
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
        maxFrames = r.max_frames > 0 ? r.max_frames : maxFrames;
        maxBytes = r.max_message_bytes > 0 ? r.max_message_bytes : maxBytes;
        return take();
      }
      if (r.t === "ack") {
        while (inflight.length && inflight[0][0] <= r.msg) {
          const frames = inflight.shift()[1];
          held -= frames.length;
          stats.acked += frames.length;
          for (const f of frames) if (isLatest(f)) latest.delete(f.c);
        }
        // error replies are capped per interval (§7.4); the ack's total is always right
        if (r.rejected > rejected) stats.rejected += r.rejected - rejected, (rejected = r.rejected);
      } else if (r.t === "error") {
        rejected++;
        stats.rejected++;
        stats.lastError = `rejected ${r.reason} (message ${r.msg}, frame ${r.index}): ${r.detail}`;
      }
      return [];
    },
    /** Frames to send: the messages to write now (none before the welcome). */
    push(frames) {
      for (const f of frames) {
        if (f.t === "rtc") latest.set(f.c, f);
        unsent.push(f);
        while (unsent.length + held > maxQueue) {
          if (inflight.length) {
            held -= inflight.shift()[1].length;
            continue;
          }
          const i = unsent.findIndex((g) => !isLatest(g));
          unsent.splice(Math.max(i, 0), 1);
          stats.dropped++;
        }
      }
      return ready ? take() : [];
    },
    /** The connection ended: what it left unacknowledged waits for the next one, first. */
    lost() {
      ready = stats.connected = false;
      unsent.unshift(...inflight.flatMap((m) => m[1]));
      inflight.length = held = 0;
    },
    /** Everything unacknowledged, in order, handed over for good (the last flush). */
    drain() {
      this.lost();
      latest.clear();
      return unsent.splice(0);
    },
    limits: () => [maxFrames, maxBytes],
  };
}

/**
 * The link to the daemon: a WebSocket kept open (a new session after each loss, with backoff),
 * and the last flush through a keepalive `POST /ingest`, whose body is one ingest message that
 * starts with the hello (the token in it: no header, hence no CORS preflight). Never throws.
 */
export function connect({ url, token, boot, maxQueue, stats, note }) {
  const { ws: wsUrl, post } = endpoints(url);
  const session = createSession({ boot, token, maxQueue, stats });
  let ws = null, attempt = 0, retry = null, done = false, wake = null;

  function open() {
    retry = null;
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
    sock.onopen = () => {
      try { sock.send(session.open()); } catch (err) { note(err); }
    };
    sock.onmessage = (e) => {
      try {
        write(session.receive(e.data));
        if (session.ready) clearTimeout(giveUp), (attempt = 0);
      } catch (err) { note(err); }
      wake?.();
    };
    sock.onclose = (e) => lost(e.code === 1000 ? null : `closed ${e.code} ${e.reason || ""}`.trim());
  }

  function flush(frames) {
    done = true;
    clearTimeout(retry);
    const all = session.drain().concat(frames);
    const [maxFrames] = session.limits();
    // The newest frames first within the keepalive budget: they carry the totals and the leave.
    const parts = [];
    const hello = session.hello();
    let size = hello.length + 2, i = all.length;
    for (; i > 0 && parts.length < maxFrames - 1; i--) {
      const s = JSON.stringify(all[i - 1]);
      if ((size += bytesOf(s) + 1) > KEEPALIVE_BYTES) break;
      parts.unshift(s);
    }
    stats.dropped += i;
    if (parts.length) {
      stats.sent += parts.length;
      const body = "[" + [hello, ...parts].join(",") + "]";
      // A string body goes as text/plain: a simple request, no preflight, allowed in unload.
      fetch(post, { method: "POST", keepalive: true, body })
        .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`POST ${post}: ${r.status}`))))
        .then((r) => void (stats.rejected += r.rejected | 0), note);
    }
    try { ws?.close(1000); } catch {}
  }

  const write = (messages) => {
    try {
      messages.forEach((m) => ws.send(m));
    } catch (err) {
      note(err);
    }
  };

  open();
  return {
    pending: session.pending,
    send: (frames) => write(session.push(frames)),
    /** The last flush, at once (pagehide): everything unacknowledged, and `frames`, by POST. */
    flush(frames) {
      try {
        flush(frames);
      } catch (err) {
        note(err);
      }
    },
    /** Send the last frames on the session and wait at most `ms` for their ack; what is still
     * unacknowledged then goes by POST. Resolves, never rejects. */
    async end(frames, ms) {
      done = true;
      clearTimeout(retry);
      write(session.push(frames));
      const deadline = Date.now() + ms;
      while (session.pending() && ws && Date.now() < deadline) {
        await new Promise((r) => {
          const t = setTimeout(r, deadline - Date.now());
          wake = () => (clearTimeout(t), r());
        });
      }
      this.flush([]);
    },
  };
}

// ---- monitor: createMonitor, the sampling loop, events, the RTCPeerConnection wrapper ----

const EVENT_KINDS = ["join", "leave", "ice", "reconnect", "mute", "unmute"];
// One symbol per page, whatever the number of copies of this module: the wrapper's guard.
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
  const safe = (fn) => (...args) => {
    try {
      return fn(...args);
    } catch (err) {
      note(err);
    }
  };
  const conns = new Map(); // pc -> its state
  const callbacks = new Set();
  const boot = randomId(8);
  let link = null, joined = false, left = false, closed = false, timer = null, running = null, closing = null;
  if (url) link = safe(connect)({ url, token, boot, maxQueue, stats, note }) ?? null;
  const send = (frames) => link?.send(frames);
  const event = (ev, val, c) =>
    ({ t: "event", m, p, ev, ts: Date.now(), c, val: val == null ? undefined : String(val).slice(0, 128) });
  const leave = () => (joined && !left ? ((left = true), [event("leave")]) : []);

  // At most one getStats() per connection in flight: a call that outlives its time box keeps
  // its connection out of the next ticks until it settles.
  function sample(e) {
    if (!e.busy) {
      let r;
      try {
        r = Promise.resolve(e.pc.getStats());
      } catch (err) {
        r = Promise.reject(err);
      }
      e.busy = r.then((report) => report, note).finally(() => (e.busy = null));
    }
    return e.busy;
  }

  // One sample of each of `list` within `limitMs`, sent; a tick also times itself and hands the
  // local view to the onSample callbacks (the last samples of remove and close do neither).
  async function measure(list, limitMs, ticking) {
    let box;
    const t0 = clock();
    const late = new Promise((r) => (box = setTimeout(r, limitMs, null)));
    const reports = await Promise.all(list.map((e) => (e.busy ? null : Promise.race([sample(e), late]))));
    clearTimeout(box);
    const t1 = clock();
    const frames = [], views = [];
    list.forEach((e, i) => {
      if (!reports[i]) return;
      try {
        const fields = rtcFields(reports[i]);
        frames.push(Object.assign({ t: "rtc", m, p, c: e.c, q: e.q++ }, fields));
        if (ticking && callbacks.size) {
          const view = localView(e.prev, fields, e.score);
          if (view) views.push(view), (e.score = view.score);
        }
        e.prev = fields;
      } catch (err) {
        note(err);
      }
    });
    send(frames);
    if (!ticking) return;
    const view = views.length ? combineViews(views) : null;
    stats.getStatsMs = t1 - t0;
    stats.workMs = clock() - t1;
    if (view) for (const cb of callbacks) safe(cb)(view);
  }

  function tick() {
    timer = null;
    const t0 = clock();
    for (const e of conns.values()) if (e.pc.signalingState === "closed") forget(e);
    running = measure([...conns.values()], HUNG_MS, true)
      .catch(note)
      .then(() => {
        running = null;
        if (!closed && conns.size) timer = setTimeout(tick, Math.max(0, intervalMs - (clock() - t0)));
      });
  }

  function forget(e) {
    conns.delete(e.pc);
    e.off.forEach((off) => off());
  }

  function watchTracks(e) {
    for (const s of e.pc.getSenders?.() ?? []) {
      const track = s.track;
      if (!track || e.tracks.has(track)) continue;
      e.tracks.add(track);
      for (const ev of ["mute", "unmute"]) {
        track.addEventListener(ev, safe(() => conns.get(e.pc) === e && send([event(ev, track.kind, e.c)])));
      }
    }
  }

  // An ICE restart gives the local description new ICE credentials (RFC 8839).
  function checkRestart(e) {
    const ufrag = /a=ice-ufrag:(\S+)/.exec(e.pc.localDescription?.sdp)?.[1];
    if (ufrag && e.ufrag && ufrag !== e.ufrag) send([event("reconnect", "ice-restart", e.c)]);
    e.ufrag = ufrag || e.ufrag;
  }

  const api = {
    add: safe((pc, opts) => {
      if (closed || conns.has(pc)) return;
      const e = { pc, c: opts?.connection || randomId(4), q: 0, prev: null, score: null, busy: null, ufrag: null, tracks: new WeakSet(), off: [] };
      const on = (type, fn) => {
        const h = safe(fn);
        pc.addEventListener(type, h);
        e.off.push(() => pc.removeEventListener(type, h));
      };
      on("iceconnectionstatechange", () => send([event("ice", pc.iceConnectionState, e.c)]));
      on("connectionstatechange", () => send([event("ice", "connection:" + pc.connectionState, e.c)]));
      on("signalingstatechange", () => pc.signalingState === "stable" && (checkRestart(e), watchTracks(e)));
      on("negotiationneeded", () => watchTracks(e));
      conns.set(pc, e);
      if (!joined) joined = true, send([event("join")]);
      checkRestart(e);
      watchTracks(e);
      if (!timer && !running) timer = setTimeout(tick, intervalMs);
    }),

    // Synchronous up to getStats(), so that the wrapper's close() samples before closing.
    remove(pc) {
      try {
        const e = conns.get(pc);
        if (!e) return Promise.resolve();
        forget(e);
        // A sample in flight is the connection's last (its tick sends it); else take one.
        return (e.busy ? e.busy.then(() => {}) : measure([e], CLOSE_MS)).catch(note);
      } catch (err) {
        note(err);
        return Promise.resolve();
      }
    },

    event: safe((kind, detail) => {
      if (!EVENT_KINDS.includes(kind)) throw new TypeError(`bwmon: unknown event kind ${kind}`);
      const d = detail !== null && typeof detail === "object" ? detail : { value: detail };
      if (!closed) send([event(kind, d.value, conns.get(d.connection)?.c)]);
    }),

    onSample(callback) {
      callbacks.add(callback);
      return () => void callbacks.delete(callback);
    },

    wrap: safe(() => {
      const g = globalThis, Native = g.RTCPeerConnection;
      if (typeof Native !== "function") return false;
      if (!Native[WRAPPED]) {
        const hook = { monitor: null };
        g.RTCPeerConnection = class RTCPeerConnection extends Native {
          #monitor = hook.monitor;
          constructor(...args) {
            super(...args);
            this.#monitor?.add(this);
          }
          close() {
            this.#monitor?.remove(this);
            return super.close();
          }
        };
        g.RTCPeerConnection[WRAPPED] = hook;
      }
      g.RTCPeerConnection[WRAPPED].monitor = api;
      return true;
    }),

    stats: () => ({ ...stats, queued: link?.pending() ?? 0, connections: conns.size }),

    close: () =>
      (closing ??= (async () => {
        closed = true;
        clearTimeout(timer);
        const list = [...conns.values()];
        list.forEach(forget);
        // The samples of a tick in flight, and the others' last ones, go before the leave: a
        // sample after it would bring the participant back.
        let box;
        const late = new Promise((r) => (box = setTimeout(r, CLOSE_MS / 2)));
        await Promise.race([Promise.all([running, measure(list, CLOSE_MS / 2, false)]), late]);
        clearTimeout(box);
        await link?.end(leave(), CLOSE_MS / 2);
        unhook();
      })().catch(note)),
  };

  // pagehide leaves no time to wait for anything: the last flush goes out at once (also in the
  // middle of a close()).
  const onPageHide = safe(() => {
    closed = true;
    clearTimeout(timer);
    conns.forEach(forget);
    link?.flush(leave());
    unhook();
  });
  const unhook = () => {
    globalThis.removeEventListener?.("pagehide", onPageHide);
    const hook = globalThis.RTCPeerConnection?.[WRAPPED];
    if (hook?.monitor === api) hook.monitor = null;
  };
  globalThis.addEventListener?.("pagehide", onPageHide);
  return api;
}

// ---- indicator: <bwmon-indicator>, an optional custom element showing the local view ----
