// Real servers for tests/clients/node: three Express apps (the `compression` middleware in front
// of bwmon's and behind it, and one whose server bwmon instruments) and a bare node:http server,
// all counted by one monitor emitting to
// the daemon given in argv[2] (JSON: {"udpPort", "intervalMs", "file"}). Prints the ports as
// one JSON line once listening; SIGTERM ends it (bwmon's last flush first).
// Express and compression come from NODE_PATH (the test installs them into a cache folder).

import { createRequire } from "node:module";
import http from "node:http";
import { once } from "node:events";
import { createMonitor, setRoute } from "../../../clients/node/index.js";

const require = createRequire(import.meta.url);
const express = require("express");
const compression = require("compression");

const config = JSON.parse(process.argv[2]);
const monitor = createMonitor({ service: config.service ?? "node-e2e", port: config.udpPort, intervalMs: config.intervalMs });

const MIXED = [
  ["héllo wörld 北京 ", "utf8"],
  ["café latin", "latin1"],
  ["deadbeef00ff", "hex"],
  ["aGVsbG8gd29ybGQ=", "base64"],
  ["utf16 ✓", "utf16le"],
  [Buffer.from("a buffer "), undefined],
  [new Uint8Array(300).fill(0x41), undefined],
  ["plain ✓ ", undefined],
];

function writeMixed(res, rounds) {
  for (let i = 0; i < rounds; i++) for (const [chunk, enc] of MIXED) enc ? res.write(chunk, enc) : res.write(chunk);
}

function forever(req, res) {
  res.setHeader("content-type", "text/plain");
  res.write("start");
  const timer = setInterval(() => res.write("x".repeat(1000)), 2);
  res.on("close", () => clearInterval(timer));
}

function routes() {
  const r = express.Router();
  r.get("/stream", (req, res) => {
    res.type("text/plain");
    writeMixed(res, 200);
    res.end("done ✓");
  });
  r.get("/file", (req, res) => res.sendFile(config.file));
  r.get("/items/:id", (req, res) => res.json({ id: req.params.id, pad: "p".repeat(Number(req.params.id) % 5000) }));
  r.get("/cached", (req, res) => {
    res.set("ETag", '"v1"');
    res.send("cached body ".repeat(200));
  });
  r.get("/boom", () => {
    throw new Error("boom");
  });
  r.post("/upload", express.raw({ type: () => true, limit: "20mb" }), (req, res) => res.json({ n: req.body.length }));
  r.post("/echo", (req, res) => {
    res.type("application/octet-stream");
    req.pipe(res);
  });
  r.get("/gone", forever);
  r.get("/size/:n", (req, res) => res.type("text/plain").send("s".repeat(Number(req.params.n))));
  return r;
}

// bwmon's middleware behind compression ("front": compression in front of it) or in front of it
// ("behind"), or none ("server": the server is instrumented, compression in the app).
function app(prefix, placement) {
  const a = express();
  a.set("env", "test"); // finalhandler: no stack traces on stderr
  if (placement !== "behind") a.use(compression());
  if (placement !== "server") a.use(monitor.express());
  if (placement === "behind") a.use(compression());
  a.use(prefix, routes());
  return a;
}

// The bare server names its routes itself.
function bare(req, res) {
  const url = new URL(req.url, "http://x");
  if (url.pathname === "/bare/stream") {
    setRoute(req, "/bare/stream");
    res.setHeader("content-type", "text/plain");
    writeMixed(res, 100);
    res.end();
  } else if (url.pathname === "/bare/upload") {
    setRoute(req, "/bare/upload");
    let n = 0;
    req.on("data", (c) => (n += c.length));
    req.on("end", () => res.end(String(n)));
  } else if (url.pathname.startsWith("/bare/size/")) {
    setRoute(req, "/bare/size/{n}");
    res.end("b".repeat(Number(url.pathname.slice(11))));
  } else if (url.pathname === "/bare/gone") {
    setRoute(req, "/bare/gone");
    forever(req, res);
  } else {
    res.statusCode = 404;
    res.end("not here");
  }
}

const servers = {
  front: http.createServer(app("/front", "front")),
  behind: http.createServer(app("/behind", "behind")),
  server: monitor.instrument(http.createServer(app("/server", "server"))),
  bare: http.createServer(monitor.wrap(bare)),
};
const ports = {};
for (const [name, server] of Object.entries(servers)) {
  server.keepAliveTimeout = 1000;
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  ports[name] = server.address().port;
}
process.stdout.write(JSON.stringify(ports) + "\n");
