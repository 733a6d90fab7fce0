// The emitter of bwmon-node: cumulative `http` counters per (route, method) of this process
// (PROTOCOL.md §4.4), sent as JSON batches over UDP (§2.1, §3.3) by a timer. Recording is a
// few map lookups and additions with no I/O and nothing that can throw; sending happens only in
// `flush()`, which never throws either (a daemon that is down costs a dropped datagram, and the
// next sample carries the totals again, §8.1).

import dgram from "node:dgram";
import { randomBytes } from "node:crypto";
import { hostname } from "node:os";

export const VERSION = "0.1.0";
export const UNMATCHED = "<unmatched>";
export const OVERFLOW = "<overflow>";
export const DEFAULT_BUDGET = 1200;
export const DEFAULT_MAX_ROUTES = 2000;
export const DEFAULT_INTERVAL_MS = 10000;
// Every stream is sampled at least this often, changed or not: a receiver must not take a quiet
// route of a live process for a gone one (PROTOCOL.md §8.5).
export const FULL_SAMPLE_MS = 30000;

// Upper bounds (ms) of the `lh` buckets 0..10; bucket 11 is everything above (§4.1).
export const LATENCY_BOUNDS_MS = Object.freeze([5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]);

/** The `lh` bucket of a latency in ms: bound[i−1] < ms ≤ bound[i] (§4.1). */
export function latencyBucket(ms) {
  const b = LATENCY_BOUNDS_MS;
  for (let i = 0; i < b.length; i++) if (ms <= b[i]) return i;
  return b.length;
}

const METHODS = new Set(["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"]);
/** The wire method (§4.4): the standard methods as they are, anything else `_OTHER`. */
export const wireMethod = (m) => (METHODS.has(m) ? m : "_OTHER");

// Identifiers (§4.1): 1..128 code points, no whitespace, control, format or separator.
const BAD_ID_CHARS = /[\s\p{C}\p{Z}]/gu;
/** A valid identifier made of `s`: bad characters become `_`, cut at `max` code points;
 * `fallback` for an empty or non-string value. */
export function wireId(s, fallback, max = 128) {
  if (typeof s !== "string" || s === "") return fallback;
  const clean = s.replace(BAD_ID_CHARS, "_");
  return clean.length <= max ? clean : [...clean].slice(0, max).join("");
}

/** A boot nonce (§8.4): 64 random bits in hex from the platform's CSPRNG. */
export const bootNonce = () => randomBytes(8).toString("hex");

/** Group JSON frame texts into JSON arrays of at most `budget` bytes (a frame larger than that
 * travels alone), as `protocol/emitter.py`'s `pack_json` does. Returns Buffers. */
export function packJson(texts, budget = DEFAULT_BUDGET) {
  const out = [];
  let parts = [];
  let size = 2;
  for (const t of texts) {
    const n = Buffer.byteLength(t);
    if (parts.length && size + n + 1 > budget) {
      out.push(Buffer.from("[" + parts.join(",") + "]"));
      parts = [];
      size = 2;
    }
    parts.push(t);
    size += n + 1;
  }
  if (parts.length) out.push(Buffer.from("[" + parts.join(",") + "]"));
  return out;
}

class Stream {
  constructor(head, route, meth) {
    this.head = head; // the frame's constant part, up to `"q":`
    this.route = route;
    this.meth = meth;
    this.q = 0;
    this.req = 0;
    this.st = [0, 0, 0, 0, 0];
    this.bi = 0;
    this.bo = 0;
    this.lh = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    this.ls = 0;
    this.changed = true;
  }
}

const MAX_IN_FLIGHT = 512;

/**
 * An emitter for one process. Options: `service` (required identifier), `host` and `port` of the
 * daemon's UDP listener (127.0.0.1:8470), `instance` (`host:pid`), `intervalMs` between samples
 * (10 s), `maxRoutes` (route, method) pairs before the overflow bucket (2,000), `budget` bytes
 * per datagram (1,200).
 */
export function createEmitter(options = {}) {
  const service = wireId(options.service, null);
  if (service === null) throw new TypeError("bwmon: `service` must be a non-empty string");
  const instance = wireId(options.instance, null) ?? wireId(`${hostname()}:${process.pid}`, `pid:${process.pid}`);
  const boot = options.boot ?? bootNonce();
  const host = options.host ?? "127.0.0.1";
  const port = options.port ?? 8470;
  const budget = options.budget ?? DEFAULT_BUDGET;
  const maxRoutes = options.maxRoutes ?? DEFAULT_MAX_ROUTES;
  const intervalMs = options.intervalMs ?? DEFAULT_INTERVAL_MS;
  const prefix = `{"t":"http","svc":${JSON.stringify(service)},"inst":${JSON.stringify(instance)},"boot":${JSON.stringify(boot)},"route":`;

  // Raw route → method → stream: what `record` looks up. Raw routes that clean to the same
  // identifier share one stream (two streams of one key would read as counter resets). Holds at
  // most 2 × maxRoutes raw routes; past that, a raw route is cleaned at each request.
  const byRaw = new Map();
  const streams = new Map(); // "route meth" → Stream, at most maxRoutes plus the overflow ones
  let kept = 0; // streams that are not the overflow bucket
  let lastFull = -Infinity;
  const stats = { requests: 0, overflowRequests: 0, samples: 0, datagrams: 0, dropped: 0, errors: 0 };
  let socket = null;
  let inFlight = 0;
  let dirty = false;
  let closed = false;

  function open(raw, meth) {
    let name = wireId(raw, UNMATCHED);
    let s = streams.get(name + " " + meth);
    if (s === undefined && kept >= maxRoutes) {
      name = OVERFLOW;
      s = streams.get(name + " " + meth);
    }
    if (s === undefined) {
      s = new Stream(`${prefix}${JSON.stringify(name)},"meth":"${meth}","q":`, name, meth);
      streams.set(name + " " + meth, s);
      if (name !== OVERFLOW) kept++;
    }
    if (name !== OVERFLOW && byRaw.size < 2 * maxRoutes) {
      let m = byRaw.get(raw);
      if (m === undefined) byRaw.set(raw, (m = new Map()));
      m.set(meth, s);
    }
    return s;
  }

  /** Count one completed request. `status` 0: no response status (the client went away). */
  function record(route, method, status, bytesIn, bytesOut, ms) {
    const meth = wireMethod(method);
    const m = byRaw.get(route);
    let s = m === undefined ? undefined : m.get(meth);
    if (s === undefined) s = open(route, meth);
    if (s.route === OVERFLOW) stats.overflowRequests++;
    stats.requests++;
    s.req++;
    if (status >= 100 && status < 600) s.st[((status / 100) | 0) - 1]++;
    s.bi += bytesIn;
    s.bo += bytesOut;
    s.lh[latencyBucket(ms)]++;
    s.ls += ms;
    s.changed = true;
    dirty = true;
  }

  /** The `http` frames (JSON texts) of the streams that changed since their last sample (of
   * every stream when `all`, or when the last full sample is `FULL_SAMPLE_MS` old), each
   * taking its next `q`. */
  function sample(ts = Date.now(), all = false) {
    const now = performance.now();
    if (now - lastFull >= FULL_SAMPLE_MS) all = true;
    if (all) lastFull = now;
    const texts = [];
    for (const s of streams.values()) {
      if (!all && !s.changed) continue;
      s.changed = false;
      texts.push(`${s.head}${s.q},"ts":${ts},"req":${s.req},"st":[${s.st}],"bi":${s.bi},"bo":${s.bo},"lh":[${s.lh}],"ls":${s.ls}}`);
      s.q++;
    }
    stats.samples += texts.length;
    dirty = false;
    return texts;
  }

  function socketOf() {
    if (socket === null) {
      socket = dgram.createSocket(host.includes(":") ? "udp6" : "udp4");
      socket.on("error", () => stats.errors++);
      socket.unref();
    }
    return socket;
  }

  /** Send a sample of every stream; resolves when the datagrams are handed to the OS (or
   * dropped). Never rejects. */
  function flush(all = false) {
    if (streams.size === 0 || closed) return Promise.resolve();
    try {
      const sock = socketOf();
      const sends = [];
      for (const datagram of packJson(sample(Date.now(), all), budget)) {
        if (inFlight >= MAX_IN_FLIGHT) {
          stats.dropped++;
          continue;
        }
        inFlight++;
        sends.push(
          new Promise((resolve) =>
            sock.send(datagram, port, host, (err) => {
              inFlight--;
              if (err) stats.dropped++;
              else stats.datagrams++;
              resolve();
            }),
          ),
        );
      }
      return Promise.all(sends).then(() => undefined);
    } catch {
      stats.errors++;
      return Promise.resolve();
    }
  }

  const timer = setInterval(() => flush(), intervalMs);
  timer.unref();

  /** A last sample of every stream, then the socket closed; resolves within `timeoutMs`. */
  function close(timeoutMs = 2000) {
    if (closed) return Promise.resolve();
    clearInterval(timer);
    const last = flush(true);
    closed = true;
    return within(last, timeoutMs).then(() => {
      try {
        socket?.close();
      } catch {
        // already closed
      }
      socket = null;
    });
  }

  return {
    service,
    instance,
    boot,
    stats,
    record,
    sample,
    flush,
    close,
    /** Whether requests were counted since the last sample. */
    get dirty() {
      return dirty;
    },
    /** (route, method) pairs held, the overflow bucket not included. */
    get routes() {
      return kept;
    },
  };
}

/** `promise`, or nothing after `ms` ms, whichever comes first. */
export function within(promise, ms) {
  let timer;
  const limit = new Promise((resolve) => (timer = setTimeout(resolve, ms)));
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}
