// The middleware on real node:http servers on loopback (no framework): bytes counted from every
// write/end chunk whatever its encoding, HEAD and 304 at 0, request bodies as consumed, a client
// gone mid-response without a status class, a thrown handler as 500 with the error untouched,
// and the last flush at exit.

import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import dgram from "node:dgram";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createMonitor, setRoute, UNMATCHED } from "../index.js";

const INDEX = new URL("../index.js", import.meta.url).href;

function monitor() {
  return createMonitor({ service: "t", port: 9, intervalMs: 3600e3, exitFlush: false });
}

async function listen(server) {
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return server.address().port;
}

// One request; resolves with the status and the body bytes received.
function request(port, { method = "GET", path = "/", body, headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: "127.0.0.1", port, method, path, headers, agent: false }, (res) => {
      let n = 0;
      res.on("data", (c) => (n += c.length));
      res.on("end", () => resolve({ status: res.statusCode, bytes: n }));
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(body);
  });
}

const streams = (m) => Object.fromEntries(m.emitter.sample().map((t) => JSON.parse(t)).map((f) => [`${f.route} ${f.meth}`, f]));

// Completion is counted at the response's 'finish', which the server may emit just after the
// client saw the end: wait until `n` requests are counted.
async function counted(m, n) {
  while (m.stats.requests < n) await new Promise((r) => setTimeout(r, 5));
}

const MIXED = [
  ["héllo wörld 北京 ", "utf8"],
  ["caf\u00e9 latin", "latin1"],
  ["deadbeef00ff", "hex"],
  ["aGVsbG8gd29ybGQ=", "base64"],
  ["utf16 ✓", "utf16le"],
  ["ascii", "ascii"],
  ["bin\u00ff", "binary"],
  [Buffer.from([1, 2, 3, 4, 5]), undefined],
  [new Uint8Array(1000).fill(7), undefined],
  ["default encoding ✓", undefined],
];

function mixedHandler(req, res) {
  setRoute(req, "/mixed");
  res.setHeader("content-type", "application/octet-stream");
  for (let i = 0; i < 20; i++) for (const [chunk, enc] of MIXED) enc ? res.write(chunk, enc) : res.write(chunk);
  res.write("", "utf8");
  res.write("with a callback", () => {});
  res.end("the end ✓", "utf8");
}

test("every write/end chunk counts, whatever its encoding, as the client receives it", async () => {
  const m = monitor();
  const server = http.createServer(m.wrap(mixedHandler));
  const port = await listen(server);
  const got = [await request(port), await request(port)];
  await counted(m, 2);
  const f = streams(m)["/mixed GET"];
  assert.equal(f.req, 2);
  assert.deepEqual(f.st, [0, 2, 0, 0, 0]);
  assert.equal(f.bo, got[0].bytes + got[1].bytes);
  assert.ok(got[0].bytes > 20000);
  assert.equal(f.lh.reduce((a, b) => a + b), 2);
  server.close();
});

test("HEAD and 304 count 0 bytes out; routes default to <unmatched>", async () => {
  const m = monitor();
  const server = http.createServer(
    m.wrap((req, res) => {
      if (req.url === "/cached") {
        res.statusCode = 304;
        res.end("ignored by node for a 304");
        return;
      }
      res.write("body that HEAD does not send");
      res.end("!");
    }),
  );
  const port = await listen(server);
  const head = await request(port, { method: "HEAD", path: "/x" });
  const notModified = await request(port, { path: "/cached" });
  const get = await request(port, { path: "/x" });
  await counted(m, 3);
  const s = streams(m);
  assert.equal(head.bytes, 0);
  assert.equal(notModified.status, 304);
  assert.equal(s[`${UNMATCHED} HEAD`].bo, 0);
  assert.equal(s[`${UNMATCHED} HEAD`].req, 1);
  assert.equal(s[`${UNMATCHED} GET`].req, 2);
  assert.deepEqual(s[`${UNMATCHED} GET`].st, [0, 1, 1, 0, 0]);
  assert.equal(s[`${UNMATCHED} GET`].bo, get.bytes);
  server.close();
});

test("request bodies count as consumed: data events, pipes, async iteration, setEncoding", async () => {
  const m = monitor();
  const server = http.createServer(
    m.wrap(async (req, res) => {
      setRoute(req, req.url);
      let n = 0;
      if (req.url === "/data") {
        req.on("data", (c) => (n += c.length));
        await once(req, "end");
      } else if (req.url === "/iter") {
        for await (const c of req) n += c.length;
      } else if (req.url === "/text") {
        req.setEncoding("utf8");
        let s = "";
        for await (const c of req) s += c;
        n = Buffer.byteLength(s);
      }
      res.end(String(n));
    }),
  );
  const port = await listen(server);
  const body = Buffer.from("é".repeat(40000) + "x");
  for (const path of ["/data", "/iter", "/text"]) {
    const r = await request(port, { method: "POST", path, body });
    assert.equal(r.status, 200);
  }
  await counted(m, 3);
  const s = streams(m);
  for (const path of ["/data", "/iter", "/text"]) assert.equal(s[`${path} POST`].bi, body.length, path);
  server.close();
});

test("a client gone mid-response counts with no status class", async () => {
  const m = monitor();
  let timer;
  const server = http.createServer(
    m.wrap((req, res) => {
      setRoute(req, "/forever");
      res.write("start");
      timer = setInterval(() => res.write("x".repeat(1000)), 2);
      res.on("close", () => clearInterval(timer));
    }),
  );
  const port = await listen(server);
  await new Promise((resolve) => {
    const req = http.get({ host: "127.0.0.1", port, path: "/", agent: false }, (res) => {
      let n = 0;
      res.on("data", (c) => {
        n += c.length;
        if (n > 5000) req.destroy();
      });
      res.on("error", () => {});
      res.on("close", resolve);
    });
    req.on("error", () => {});
  });
  await counted(m, 1);
  const f = streams(m)["/forever GET"];
  assert.equal(f.req, 1);
  assert.deepEqual(f.st, [0, 0, 0, 0, 0]);
  assert.ok(f.bo > 5000);
  server.close();
});

test("a handler that throws counts as 500 and its error goes on untouched", async () => {
  const m = monitor();
  const boom = new Error("boom");
  const wrapped = m.wrap((req) => {
    setRoute(req, req.url);
    if (req.url === "/sync") throw boom;
    return Promise.reject(boom);
  });
  const seen = [];
  const server = http.createServer((req, res) => {
    let result;
    try {
      result = wrapped(req, res);
    } catch (err) {
      seen.push(err);
      res.destroy(); // a crashed handler: no response at all
      return;
    }
    result.catch((err) => {
      seen.push(err);
      res.statusCode = 502; // the application's own handling answers; its status counts
      res.end("bad");
    });
  });
  const port = await listen(server);
  await request(port, { path: "/sync" }).catch(() => {});
  await request(port, { path: "/async" });
  await counted(m, 2);
  assert.deepEqual(seen, [boom, boom]);
  const s = streams(m);
  assert.deepEqual(s["/sync GET"].st, [0, 0, 0, 0, 1]);
  assert.deepEqual(s["/async GET"].st, [0, 0, 0, 0, 1]);
  server.close();
});

test("instrument(server) counts a server's requests whatever its listeners; writes after end do not count", async () => {
  const m = monitor();
  const server = m.instrument(
    http.createServer((req, res) => {
      res.end("12345");
      res.on("error", () => {});
      res.write("late"); // after end: an error, nothing sent
    }),
  );
  const port = await listen(server);
  const r = await request(port);
  await counted(m, 1);
  assert.equal(r.bytes, 5);
  assert.equal(streams(m)[`${UNMATCHED} GET`].bo, 5);
  server.close();
});

test("what is written after destroy() does not count; the request counts with no status class", async (t) => {
  const m = monitor();
  const server = http.createServer(
    m.wrap((req, res) => {
      setRoute(req, "/destroyed");
      res.on("error", () => {});
      res.write("a".repeat(100));
      res.destroy();
      res.write("late"); // after destroy(): nothing sent
      res.end("later");
    }),
  );
  t.after(() => server.close());
  const port = await listen(server);
  await assert.rejects(request(port));
  await counted(m, 1);
  const f = streams(m)["/destroyed GET"];
  assert.equal(f.req, 1);
  assert.deepEqual(f.st, [0, 0, 0, 0, 0]);
  assert.equal(f.bo, 100);
});

// Express changes the prototypes of the request and the response before its first middleware;
// the state of such a request (the first on its server) is kept beside it, not added to it
// (V8's slow path), and every count is the same as on objects as the server made them.
test("a request whose prototypes a framework changed is counted without a property added to it", async (t) => {
  const m = monitor();
  const STATE = Symbol.for("bwmon.node.request");
  const reqProto = Object.create(http.IncomingMessage.prototype);
  const resProto = Object.create(http.ServerResponse.prototype);
  const own = [];
  const middleware = m.express();
  const route = { path: "/items/:id" };
  const server = http.createServer((req, res) => {
    Object.setPrototypeOf(req, reqProto);
    Object.setPrototypeOf(res, resProto);
    req.baseUrl = "/api";
    middleware(req, res, () => {
      req.route = route; // what Express's router does on a match
      assert.equal(req.route, route);
      own.push(Object.hasOwn(req, STATE) || Object.hasOwn(res, STATE));
      let body = "";
      req.setEncoding("utf8");
      req.on("data", (c) => (body += c));
      req.on("end", () => res.end(`echo ${body}`));
    });
  });
  t.after(() => server.close());
  const port = await listen(server);
  const got = await request(port, { method: "POST", body: "0123456789" });
  await counted(m, 1);
  assert.deepEqual(own, [false]);
  const f = streams(m)["/api/items/:id POST"];
  assert.equal(f.req, 1);
  assert.deepEqual(f.st, [0, 1, 0, 0, 0]);
  assert.equal(f.bi, 10);
  assert.equal(f.bo, got.bytes);
  assert.equal(got.bytes, "echo 0123456789".length);
});

// bwmon's `route` accessor on the request prototype is invisible to a request it does not count
// (another server of the process): Express's assignments make the own property they make without
// bwmon, and nothing of the request is kept.
test("a request bwmon does not count gets its own route property, as without bwmon", async (t) => {
  monitor(); // the prototypes patched
  const STATE = Symbol.for("bwmon.node.request");
  const reqProto = Object.create(http.IncomingMessage.prototype);
  const first = { path: "/a/:id" };
  const second = { path: "/b/:id" };
  const seen = [];
  const server = http.createServer((req, res) => {
    Object.setPrototypeOf(req, reqProto);
    req.route = first;
    req.route = second;
    seen.push({ own: Object.getOwnPropertyDescriptor(req, "route"), keys: Object.keys(req).includes("route"), state: req[STATE] });
    res.end("ok");
  });
  t.after(() => server.close());
  await request(await listen(server));
  assert.deepEqual(seen, [{ own: { value: second, writable: true, enumerable: true, configurable: true }, keys: true, state: undefined }]);
});

// From the middleware's first request on a server, the server makes every request's state before
// any other listener (Express among them) runs, on the objects as it made them; the middleware
// takes the state of the requests that reach it, and only those count.
test("from its second request on a server, the middleware's state is made by the server", async (t) => {
  const m = monitor();
  const STATE = Symbol.for("bwmon.node.request");
  const states = http.ServerResponse.prototype[Symbol.for("bwmon.node.patched")].states;
  const reqProto = Object.create(http.IncomingMessage.prototype);
  const resProto = Object.create(http.ServerResponse.prototype);
  const middleware = m.express();
  const seen = [];
  const handler = (req, res) => {
    const reserved = Object.hasOwn(req, STATE) && Object.hasOwn(res, STATE);
    Object.setPrototypeOf(req, reqProto);
    Object.setPrototypeOf(res, resProto);
    if (req.url === "/skip") return res.end("not counted");
    middleware(req, res, () => {
      seen.push({ reserved, inWeakMap: states.has(res) });
      setRoute(req, "/sized");
      res.end("x".repeat(Number(req.url.slice(1))));
    });
  };
  const servers = [http.createServer(handler), http.createServer(handler)];
  t.after(() => servers.forEach((s) => s.close()));
  const ports = [await listen(servers[0]), await listen(servers[1])];
  const got = [];
  for (const [port, size] of [[ports[0], 10], [ports[0], 200], [ports[0], 3000], [ports[1], 7], [ports[1], 11]]) {
    got.push(await request(port, { path: `/${size}` }));
  }
  await counted(m, 5);
  const skipped = await request(ports[0], { path: "/skip" });
  assert.equal(skipped.bytes, "not counted".length);
  assert.deepEqual(seen, [
    { reserved: false, inWeakMap: true },
    { reserved: true, inWeakMap: false },
    { reserved: true, inWeakMap: false },
    { reserved: false, inWeakMap: true },
    { reserved: true, inWeakMap: false },
  ]);
  assert.deepEqual(servers.map((s) => s.listenerCount("request")), [2, 2]);
  const f = streams(m)["/sized GET"];
  assert.equal(f.req, 5);
  assert.deepEqual(f.st, [0, 5, 0, 0, 0]);
  assert.equal(f.bo, got.reduce((n, g) => n + g.bytes, 0));
  assert.equal(f.bo, 10 + 200 + 3000 + 7 + 11);
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(m.stats.requests, 5); // the request that never reached the middleware
});

test("100 concurrent requests of different sizes give exact per-route totals", async () => {
  const m = monitor();
  const server = http.createServer(
    m.wrap(async (req, res) => {
      const size = Number(req.url.slice(1));
      setRoute(req, size % 2 ? "/odd" : "/even");
      let n = 0;
      for await (const c of req) n += c.length;
      for (let left = size; left > 0; left -= 777) {
        res.write("z".repeat(Math.min(777, left)));
        await new Promise((r) => setImmediate(r));
      }
      res.end(String(n));
    }),
  );
  const port = await listen(server);
  const sizes = Array.from({ length: 100 }, (_, i) => (i * 7919) % 20000);
  const results = await Promise.all(sizes.map((size) => request(port, { method: "PUT", path: `/${size}`, body: "b".repeat(size % 3000) })));
  await counted(m, 100);
  const s = streams(m);
  for (const parity of [0, 1]) {
    const idx = sizes.map((v, i) => i).filter((i) => sizes[i] % 2 === parity);
    const f = s[`${parity ? "/odd" : "/even"} PUT`];
    assert.equal(f.req, idx.length);
    assert.equal(f.bo, idx.reduce((a, i) => a + results[i].bytes, 0));
    assert.equal(f.bi, idx.reduce((a, i) => a + (sizes[i] % 3000), 0));
  }
  server.close();
});

async function receiver() {
  const sock = dgram.createSocket("udp4");
  sock.bind(0, "127.0.0.1");
  await once(sock, "listening");
  const frames = [];
  sock.on("message", (m) => frames.push(...JSON.parse(m)));
  return { sock, frames, port: sock.address().port };
}

// A child process that counts two requests and then ends as `how` says.
function child(port, how) {
  const code = `
    import { createMonitor } from ${JSON.stringify(INDEX)};
    const m = createMonitor({ service: "exit", port: ${port}, intervalMs: 3600e3 });
    m.emitter.record("/a", "GET", 200, 1, 10, 1);
    m.emitter.record("/a", "GET", 200, 1, 10, 1);
    ${how === "sigterm" ? 'setInterval(() => {}, 1000); process.stdout.write("ready\\n");' : ""}
  `;
  return spawn(process.execPath, ["--input-type=module", "-e", code], { stdio: ["ignore", "pipe", "inherit"] });
}

async function framesFrom(r, n) {
  while (r.frames.length < n) await new Promise((res) => setTimeout(res, 5));
  return r.frames;
}

test("a process that ends on its own sends its last counters (beforeExit)", async () => {
  const r = await receiver();
  const proc = child(r.port, "natural");
  const [code] = await once(proc, "exit");
  assert.equal(code, 0);
  const [f] = await framesFrom(r, 1);
  assert.equal(f.req, 2);
  assert.equal(f.bo, 20);
  assert.equal(f.q, 0);
  r.sock.close();
});

test("SIGTERM sends the last counters, then the process still dies of SIGTERM", async () => {
  const r = await receiver();
  const proc = child(r.port, "sigterm");
  await once(proc.stdout, "data");
  proc.kill("SIGTERM");
  const [code, signal] = await once(proc, "exit");
  assert.equal(code, null);
  assert.equal(signal, "SIGTERM");
  const [f] = await framesFrom(r, 1);
  assert.equal(f.req, 2);
  r.sock.close();
});

test("a daemon that is down costs nothing: flush resolves, no error reaches the application", async () => {
  const r = await receiver();
  const port = r.port;
  r.sock.close(); // nothing listens there any more
  const m = createMonitor({ service: "down", port, intervalMs: 3600e3, exitFlush: false });
  for (let i = 0; i < 3000; i++) m.emitter.record(`/r${i}`, "GET", 200, 0, 1, 1);
  for (let i = 0; i < 5; i++) await m.flush();
  assert.equal(m.emitter.routes, 2000);
  assert.ok(m.stats.datagrams + m.stats.dropped > 0);
  await m.close();
  await m.flush(); // after close: nothing, no error
});
