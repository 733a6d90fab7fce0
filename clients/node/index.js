// bwmon-node: per-route bandwidth and latency of a Node HTTP server (Express/connect middleware,
// a bare node:http server), counted from the body chunks and sent to a bwmon daemon as `http`
// frames (PROTOCOL.md §4.4). Semantics shared with the Python client: clients/README.md.
//
// Where the bytes are counted: at http.ServerResponse.prototype.write/end, the layer every body
// chunk goes through last on its way to the socket, whatever wraps `res.write` on the instance
// (the `compression` middleware, in front of this middleware or behind it, hands its compressed
// output to it; `res.sendFile` pipes into it). Bytes in: the request's 'data' events, the way any
// consumer (a body parser, a pipe, an async iterator) reads the body. The request ends at the
// response's 'finish' (the last byte handed to the OS), or at its 'close' without 'finish' (the
// client went away: no status class). The route is the template the framework resolved, read
// when the request ends: never matched again here.
//
// Nothing on the request path does I/O or can throw out of this module: the patched methods
// count, then call the originals unchanged.

import http from "node:http";
import { createEmitter, UNMATCHED } from "./emitter.js";

export {
  createEmitter,
  latencyBucket,
  LATENCY_BOUNDS_MS,
  OVERFLOW,
  UNMATCHED,
  VERSION,
  wireId,
  wireMethod,
  packJson,
} from "./emitter.js";

// Shared by every copy of this module in a process, so that two copies never count twice.
const STATE = Symbol.for("bwmon.node.request");
const PATCHED = Symbol.for("bwmon.node.patched");

const RES = http.ServerResponse.prototype;
const REQ = http.IncomingMessage.prototype;

// Where a request's state lives: a symbol-keyed property of the request and the response. V8
// adds a property to an object whose prototype was changed by a slow path (a new hidden class
// per object: 2 to 3 µs each, bench/property-add.mjs), and reads and stores on such
// objects miss its caches; Express changes both objects' prototypes before its first middleware
// runs (`Object.setPrototypeOf(req, app.request)`). So the middleware, at its first request on a
// server, has the server make every request's state as it makes the objects (a listener before
// all others), not yet counted: the middleware takes it when the request reaches it. A request
// whose prototypes were changed and that has no state (the first on a server, or on a server this
// module cannot reach through `req.socket.server`) keeps its state in a WeakMap, shared by every
// copy of this module through the prototype.
if (RES[PATCHED] === undefined) {
  const shared = { states: new WeakMap(), reserving: new WeakSet(), installed: false };
  Object.defineProperty(RES, PATCHED, { value: shared });
}
const SHARED = RES[PATCHED];
SHARED.reserving ??= new WeakSet(); // made by an older copy of this module
const STATES = SHARED.states;

/** The state of a request or response, counted or not, or undefined. */
function slotOf(o) {
  const s = STATES.get(o); // first: a miss costs nothing on an object that has no identity hash
  return s !== undefined ? s : o[STATE];
}

/** The state of a request or response being counted, or undefined. */
function stateOf(o) {
  const s = slotOf(o);
  return s !== undefined && s.monitor !== null ? s : undefined;
}

/** A server's 'request' listener, before all others: the request's state, not counted yet. */
function reserve(req, res) {
  if (res[STATE] === undefined) {
    const s = new RequestState(null, req);
    res[STATE] = s;
    req[STATE] = s;
  }
}

function reserveOn(server) {
  if (server == null || typeof server.prependListener !== "function" || SHARED.reserving.has(server)) return;
  SHARED.reserving.add(server);
  server.prependListener("request", reserve);
}

class RequestState {
  constructor(monitor, req) {
    this.monitor = monitor; // null: made by reserve(), not counted until a middleware takes it
    this.start = performance.now();
    this.bi = 0;
    this.bo = 0;
    this.route = undefined; // set by setRoute()
    this.matched = undefined; // the framework's route object (Express `req.route`)
    this.base = undefined; // the `baseUrl` of the router that matched it
    this.method = req.method;
    this.error = false; // the handler threw (wrap())
    this.ended = false; // end() or destroy() was called: what is written after is not sent
    this.done = false;
  }
}

/** Bytes of a body chunk as Node sends it: strings in their encoding (utf8 by default). */
function chunkBytes(chunk, encoding) {
  if (typeof chunk === "string") return Buffer.byteLength(chunk, typeof encoding === "string" ? encoding : "utf8");
  const n = chunk?.byteLength;
  return typeof n === "number" ? n : 0;
}

const NO_BODY = (method, status) => method === "HEAD" || status === 304 || status === 204 || (status >= 100 && status < 200);

function routeOf(s) {
  if (s.route !== undefined) return s.route;
  const r = s.matched;
  if (r == null) return UNMATCHED;
  let p = r.path;
  if (p == null) return UNMATCHED;
  if (typeof p !== "string") p = Array.isArray(p) ? p.join(",") : String(p);
  const base = s.base;
  if (typeof base !== "string" || base === "") return p;
  return p === "/" ? base : base + p;
}

function complete(res, s, finished) {
  s.done = true;
  const ms = performance.now() - s.start;
  let status = finished ? res.statusCode : 0;
  if (s.error && (status === 0 || !res.headersSent)) status = 500;
  s.monitor.emitter.record(routeOf(s), s.method, status, s.bi, NO_BODY(s.method, status) ? 0 : s.bo, ms);
}

// Installed once per process on the prototypes; a response or request without our state pays
// two lookups that miss. Whether a response may still send is our own flag (`ended`), not its
// `writableEnded` and `destroyed`: reading those of an object Express re-prototyped misses V8's
// caches.
function patch() {
  if (SHARED.installed) return;
  SHARED.installed = true;

  const write = RES.write;
  RES.write = function write_(chunk, encoding, callback) {
    const s = stateOf(this);
    if (s === undefined || s.ended || s.done) return write.call(this, chunk, encoding, callback);
    const ok = write.call(this, chunk, encoding, callback);
    s.bo += chunkBytes(chunk, encoding);
    return ok;
  };
  const end = RES.end;
  RES.end = function end_(chunk, encoding, callback) {
    const s = stateOf(this);
    if (s === undefined || s.ended || s.done) return end.call(this, chunk, encoding, callback);
    const r = end.call(this, chunk, encoding, callback);
    s.ended = true;
    if (chunk != null && typeof chunk !== "function") s.bo += chunkBytes(chunk, encoding);
    return r;
  };
  const destroy = RES.destroy;
  RES.destroy = function destroy_(error) {
    const s = stateOf(this);
    if (s !== undefined) s.ended = true;
    return destroy.call(this, error);
  };
  const resEmit = RES.emit;
  RES.emit = function emit_(event) {
    if (event === "finish" || event === "close") {
      const s = stateOf(this);
      if (s !== undefined && !s.done) {
        try {
          complete(this, s, event === "finish");
        } catch {
          // counting never breaks the response
        }
      }
    }
    return resEmit.apply(this, arguments);
  };

  const reqEmit = REQ.emit;
  REQ.emit = function emit_(event, chunk) {
    if (event === "data") {
      const s = stateOf(this);
      if (s !== undefined && !s.done) s.bi += typeof chunk === "string" ? Buffer.byteLength(chunk, this.readableEncoding || "utf8") : chunk?.byteLength || 0;
    }
    return reqEmit.apply(this, arguments);
  };

  // Express (and its router) sets `req.route` to the route that matched, inside the router that
  // holds it: remember that router's `baseUrl` with it, as an error handler further up runs
  // with the outer `baseUrl` restored. A request bwmon has no state for gets the property of its
  // own that it would have without bwmon.
  if (!Object.getOwnPropertyDescriptor(REQ, "route")) {
    Object.defineProperty(REQ, "route", {
      configurable: true,
      get() {
        return slotOf(this)?.matched;
      },
      set(route) {
        const s = slotOf(this);
        if (s === undefined) Object.defineProperty(this, "route", { value: route, writable: true, enumerable: true, configurable: true });
        else {
          s.matched = route;
          s.base = this.baseUrl;
        }
      },
    });
  }
}

function begin(monitor, req, res) {
  let s = slotOf(res);
  if (s !== undefined) {
    if (s.monitor === null) s.monitor = monitor; // made by reserve()
    return s;
  }
  s = new RequestState(monitor, req);
  if (Object.getPrototypeOf(res) === RES && Object.getPrototypeOf(req) === REQ) {
    res[STATE] = s;
    req[STATE] = s;
  } else {
    STATES.set(res, s);
    STATES.set(req, s);
    reserveOn(req.socket?.server);
  }
  return s;
}

/** Name the route of a request yourself (a bare node:http server, another router): a template
 * such as `/v1/orders/{id}`, never the raw path. */
export function setRoute(req, template) {
  if (req == null || typeof template !== "string") return;
  const s = stateOf(req);
  if (s !== undefined) s.route = template;
}

// One handler per signal for every monitor of the process: a last flush of all, then, when no
// one else listens to the signal, the signal again with its default action (exit).
const monitors = new Set();
const EXIT_SIGNALS = ["SIGTERM", "SIGINT"];
let signalsHooked = false;
function onSignal(signal) {
  const alone = process.listenerCount(signal) === 1;
  Promise.all([...monitors].map((m) => m.close())).then(() => {
    if (!alone) return;
    for (const sig of EXIT_SIGNALS) process.removeListener(sig, onSignal);
    process.kill(process.pid, signal);
  });
}
// 'beforeExit' comes again once the last datagrams are sent: flush only what changed since.
function onBeforeExit() {
  for (const m of monitors) if (m.emitter.dirty) m.emitter.flush();
}
function hookExit() {
  if (signalsHooked) return;
  signalsHooked = true;
  for (const sig of EXIT_SIGNALS) process.on(sig, onSignal);
  process.on("beforeExit", onBeforeExit);
}

/**
 * A monitor: an emitter (see `createEmitter` for the options) and the middlewares that feed it.
 * `exitFlush: false` installs no SIGTERM/SIGINT/beforeExit hooks (then call `close()` yourself).
 */
export function createMonitor(options = {}) {
  patch();
  const emitter = createEmitter(options);
  const closeMs = options.closeMs ?? 2000;
  const monitor = {
    emitter,
    stats: emitter.stats,
    /** Express/connect middleware: `app.use(monitor.express())`, first. */
    express() {
      return function bwmon(req, res, next) {
        begin(monitor, req, res);
        next();
      };
    },
    /** A node:http request listener counted: `http.createServer(monitor.wrap(handler))`. A
     * handler that throws (or whose promise rejects) counts as 500; the error goes on
     * untouched. */
    wrap(handler) {
      return function bwmonHandler(req, res) {
        const s = begin(monitor, req, res);
        let result;
        try {
          result = handler.call(this, req, res);
        } catch (err) {
          s.error = true;
          throw err;
        }
        if (result != null && typeof result.then === "function") {
          // A new promise that rejects as the handler's did: the rejection stays unhandled for
          // the process, as it was.
          return result.then(undefined, (err) => {
            s.error = true;
            throw err;
          });
        }
        return result;
      };
    },
    /** Count every request of an existing server (whatever its handlers): the state is set
     * before any other 'request' listener runs. */
    instrument(server) {
      server.prependListener("request", (req, res) => begin(monitor, req, res));
      return server;
    },
    flush: () => emitter.flush(),
    /** A last flush (bounded by `closeMs`), then no more sending. */
    close() {
      monitors.delete(monitor);
      return emitter.close(closeMs);
    },
  };
  if (options.exitFlush !== false) {
    monitors.add(monitor);
    hookExit();
  }
  return monitor;
}
