// What bwmon-node's Express middleware adds to a request, next to express-prom-bundle:
// `node clients/node/bench/overhead.mjs [--json] [--requests N] [--batch N] [--warmup N]`.
//
// Each request is an http.IncomingMessage and an http.ServerResponse over a socket that accepts
// every write at once (no network, no parser), handed to the Express app and awaited until the
// response's 'finish'. That measures the app and the middleware (including the response's
// write path and 'finish', which bwmon counts at) without the few tens of µs of loopback TCP
// whose jitter would hide a 1–3 µs difference. Each request is timed alone, from the call of the
// app to 'finish', and the median is reported (a median, not a mean: a request the OS preempted
// for milliseconds moves a mean, not a median).
//
// Each app runs in a process of its own (bwmon-node patches http.ServerResponse's prototype:
// the bare app and express-prom-bundle must not run with those patches). The three processes
// take turns by batches of `--batch` requests (a few ms each), so that a change of the machine's
// load touches all three alike; each app's figure is the median of all its requests' times.
// Express and express-prom-bundle come from NODE_PATH (as `bwmon bench middleware` sets it).

import { createRequire } from "node:module";
import http from "node:http";
import { Duplex } from "node:stream";
import { fork } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";

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
  VARIANT === "bwmon"
    ? (await import("../index.js")).createMonitor({ service: "bench", port: 9, intervalMs: 3600e3, exitFlush: false })
    : null;

function makeApp(kind) {
  const app = express();
  if (kind === "bwmon") app.use(monitor.express());
  if (kind === "prom") app.use(promBundle({ includeMethod: true, includePath: true, autoregister: false }));
  app.get("/items/:id", (req, res) => res.send("ok"));
  return app;
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

function one(app) {
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
    app(req, res);
  });
}

const median = (xs) => {
  const s = Float64Array.from(xs).sort();
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};

const kinds = ["bare", "bwmon", "prom"];
const signed = (n) => (n < 0 ? `${n}` : `+${n}`);

if (VARIANT !== null) {
  // A child: one app; on each message, a batch of requests, answered with their times (ns).
  const app = makeApp(VARIANT);
  for (let i = 0; i < WARMUP; i++) await one(app); // JIT, first allocations
  let served = 0;
  process.on("message", async (n) => {
    const times = [];
    for (let i = 0; i < n; i++) times.push(await one(app));
    served += n;
    if (monitor !== null && monitor.stats.requests !== served + WARMUP) throw new Error("bwmon did not count every request");
    process.send(times);
  });
  process.send("ready");
} else {
  const self = fileURLToPath(import.meta.url);
  const children = Object.fromEntries(kinds.map((k) => [k, fork(self, ["--variant", k, "--warmup", String(WARMUP)], { stdio: ["ignore", "inherit", "inherit", "ipc"] })]));
  await Promise.all(Object.values(children).map((c) => once(c, "message")));
  const times = Object.fromEntries(kinds.map((k) => [k, []]));
  for (let done = 0, r = 0; done < REQUESTS; done += BATCH, r++) {
    for (let j = 0; j < kinds.length; j++) {
      const k = kinds[(r + j) % kinds.length]; // no app always after the same one
      children[k].send(BATCH);
      const [batch] = await once(children[k], "message");
      times[k].push(...batch);
    }
  }
  for (const c of Object.values(children)) c.kill();
  report(times);
}

function report(times) {
  const ns = Object.fromEntries(kinds.map((k) => [k, Math.round(median(times[k]))]));
  const result = {
    express: {
      bare_ns: ns.bare,
      bwmon_ns: ns.bwmon,
      prom_ns: ns.prom,
      bwmon_added_ns: ns.bwmon - ns.bare,
      prom_added_ns: ns.prom - ns.bare,
      target_added_ns: TARGET_ADDED_NS,
    },
  };
  if (asJson) {
    process.stdout.write(JSON.stringify(result) + "\n");
  } else {
    const e = result.express;
    const rows = [
      ["Express, trivial handler", `${e.bare_ns} ns`, ""],
      ["  + bwmon-node", `${e.bwmon_ns} ns`, `${signed(e.bwmon_added_ns)} ns (target ≤ +${TARGET_ADDED_NS} ns)`],
      ["  + express-prom-bundle", `${e.prom_ns} ns`, `${signed(e.prom_added_ns)} ns`],
    ];
    process.stdout.write(`median of ${times.bare.length} requests per app, node ${process.version}\n`);
    for (const [a, b, c] of rows) process.stdout.write(`${a.padEnd(28)}${b.padStart(10)}  ${c}\n`);
  }
}
