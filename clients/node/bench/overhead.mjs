// What bwmon-node adds to an Express request, next to express-prom-bundle:
// `node clients/node/bench/overhead.mjs [--json] [--requests N] [--batch N] [--warmup N]
// [--processes N]`.
//
// Each request is an http.IncomingMessage and an http.ServerResponse over a socket that accepts
// every write at once (no network, no parser; its `server` set, as Node's server sets it on a
// connection), handed to an http.Server's 'request' event (what Node's server does with a parsed
// request) and awaited until the response's 'finish'. That measures the app and the
// instrumentation (including the response's write path and 'finish', which bwmon counts at)
// without the few tens of µs of loopback TCP whose jitter would hide a 1–3 µs difference. Each
// request is timed alone, from the event to 'finish'; a figure is the median of all the requests
// of its app (a median, not a mean: a request the OS preempted for milliseconds moves a mean, not
// a median).
//
// One Express app with a trivial handler, five ways: bare; with an empty middleware (what any
// middleware costs Express: a layer of its router); with bwmon-node's middleware
// (`app.use(monitor.express())`); with bwmon-node on the server (`monitor.instrument(server)`, no
// layer); with express-prom-bundle. Each app runs in processes of its own (bwmon-node patches
// http.ServerResponse's prototype, which the others must not carry), `--processes` of them per
// app (3): one process's JIT and heap layout can sit a microsecond off another's. The processes
// take turns by batches of `--batch` requests (a few ms each), so that a change of the machine's
// load touches all alike. Run it on one CPU (`taskset -c 1 node overhead.mjs`; `bwmon bench
// middleware` does): free to move between CPUs, a process's figures depend on where the
// scheduler put it. On a 2-CPU VM, five runs each way, alternating: the bare app's median
// 36.7–53.9 µs free, 36.7–37.3 pinned; the middleware's added 1.6–3.9 µs free, 1.8–2.3
// pinned. The JSON's `cpus` says on how many it ran. Express and express-prom-bundle come from
// NODE_PATH (as `bwmon bench middleware` sets it).

import { createRequire } from "node:module";
import http from "node:http";
import { Duplex } from "node:stream";
import { fork } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { availableParallelism } from "node:os";

const TARGET_ADDED_NS = 3000;
const args = process.argv.slice(2);
const option = (name, fallback) => {
  const i = args.indexOf(name);
  return i >= 0 ? Number(args[i + 1]) : fallback;
};
const asJson = args.includes("--json");
const REQUESTS = option("--requests", 20000);
const BATCH = option("--batch", 250);
const WARMUP = option("--warmup", 3000);
const PROCESSES = option("--processes", 3);
const VARIANT = args.includes("--variant") ? args[args.indexOf("--variant") + 1] : null;

const require = createRequire(import.meta.url);
let express, promBundle;
try {
  express = require("express");
  promBundle = require("express-prom-bundle");
} catch (err) {
  process.stderr.write(`overhead.mjs: express and express-prom-bundle must be on NODE_PATH: ${err.message}\n`);
  process.exit(2);
}

const monitor =
  VARIANT === "middleware" || VARIANT === "instrument"
    ? (await import("../index.js")).createMonitor({ service: "bench", port: 9, intervalMs: 3600e3, exitFlush: false })
    : null;

/** The server whose 'request' event gets every request of the `kind` app. */
function makeServer(kind) {
  const app = express();
  if (kind === "empty") app.use((req, res, next) => next());
  if (kind === "middleware") app.use(monitor.express());
  if (kind === "prom") app.use(promBundle({ includeMethod: true, includePath: true, autoregister: false }));
  app.get("/items/:id", (req, res) => res.send("ok"));
  const server = http.createServer(app);
  return kind === "instrument" ? monitor.instrument(server) : server;
}

class NullSocket extends Duplex {
  _read() {}
  _write(chunk, encoding, callback) {
    callback();
  }
  _writev(chunks, callback) {
    callback();
  }
}

const socket = new NullSocket();

function one(server) {
  return new Promise((resolve) => {
    const req = new http.IncomingMessage(socket);
    req.method = "GET";
    req.url = "/items/42";
    req.headers = { host: "bench", accept: "*/*" };
    req.httpVersion = "1.1";
    req.httpVersionMajor = 1;
    req.httpVersionMinor = 1;
    req.complete = true;
    req.push(null);
    const res = new http.ServerResponse(req);
    res.assignSocket(socket);
    let t0;
    res.on("finish", () => {
      const ns = process.hrtime.bigint() - t0;
      res.detachSocket(socket);
      resolve(Number(ns));
    });
    t0 = process.hrtime.bigint();
    server.emit("request", req, res);
  });
}

const median = (xs) => {
  const s = Float64Array.from(xs).sort();
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const kinds = ["bare", "empty", "middleware", "instrument", "prom"];
const signed = (n) => (n < 0 ? `${n}` : `+${n}`);

if (VARIANT !== null) {
  // A child: one app; on each message, a batch of requests, answered with their times (ns).
  const server = makeServer(VARIANT);
  socket.server = server;
  for (let i = 0; i < WARMUP; i++) await one(server); // JIT, first allocations
  let served = 0;
  process.on("message", async (n) => {
    const times = [];
    for (let i = 0; i < n; i++) times.push(await one(server));
    served += n;
    if (monitor !== null && monitor.stats.requests !== served + WARMUP) throw new Error("bwmon did not count every request");
    process.send(times);
  });
  process.send("ready");
} else {
  const self = fileURLToPath(import.meta.url);
  const workers = kinds.flatMap((kind) =>
    Array.from({ length: PROCESSES }, () => ({
      kind,
      child: fork(self, ["--variant", kind, "--warmup", String(WARMUP)], { stdio: ["ignore", "inherit", "inherit", "ipc"] }),
    })),
  );
  await Promise.all(workers.map((w) => once(w.child, "message")));
  const times = Object.fromEntries(kinds.map((k) => [k, []]));
  for (let done = 0, r = 0; done < REQUESTS; done += BATCH, r++) {
    for (let j = 0; j < workers.length; j++) {
      const w = workers[(r + j) % workers.length]; // no app always after the same one
      w.child.send(BATCH);
      const [batch] = await once(w.child, "message");
      times[w.kind].push(...batch);
    }
  }
  for (const w of workers) w.child.kill();
  report(times);
}

function report(times) {
  const ns = Object.fromEntries(kinds.map((k) => [k, Math.round(median(times[k]))]));
  const added = (k) => ns[k] - ns.bare;
  const result = {
    express: {
      bare_ns: ns.bare,
      empty_ns: ns.empty,
      middleware_ns: ns.middleware,
      instrument_ns: ns.instrument,
      prom_ns: ns.prom,
      empty_added_ns: added("empty"),
      middleware_added_ns: added("middleware"),
      instrument_added_ns: added("instrument"),
      prom_added_ns: added("prom"),
      target_added_ns: TARGET_ADDED_NS,
      requests: times.bare.length,
      processes: PROCESSES,
      cpus: availableParallelism(), // the CPUs it may run on: 1 when pinned
    },
  };
  if (asJson) {
    process.stdout.write(JSON.stringify(result) + "\n");
  } else {
    const e = result.express;
    const verdict = (n) => `(target ≤ +${TARGET_ADDED_NS} ns: ${n <= TARGET_ADDED_NS ? "meets" : "MISSES"})`;
    const rows = [
      ["Express, trivial handler", `${e.bare_ns} ns`, ""],
      ["  + an empty middleware", `${e.empty_ns} ns`, `${signed(e.empty_added_ns)} ns`],
      ["  + bwmon-node, instrument", `${e.instrument_ns} ns`, `${signed(e.instrument_added_ns)} ns ${verdict(e.instrument_added_ns)}`],
      ["  + bwmon-node, middleware", `${e.middleware_ns} ns`, `${signed(e.middleware_added_ns)} ns ${verdict(e.middleware_added_ns)}`],
      ["  + express-prom-bundle", `${e.prom_ns} ns`, `${signed(e.prom_added_ns)} ns`],
    ];
    process.stdout.write(`median of ${e.requests} requests per app in ${e.processes} processes, node ${process.version}\n`);
    if (e.cpus > 1) process.stdout.write(`on ${e.cpus} CPUs: a process's figure depends on the CPU it ran on; pin it (taskset -c 1)\n`);
    for (const [a, b, c] of rows) process.stdout.write(`${a.padEnd(28)}${b.padStart(10)}  ${c}\n`);
  }
}
