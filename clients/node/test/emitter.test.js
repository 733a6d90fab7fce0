// The emitter without a network: counters, frames (against the protocol's JSON Schema),
// datagram packing, the route cap and its overflow bucket.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  createEmitter,
  latencyBucket,
  LATENCY_BOUNDS_MS,
  OVERFLOW,
  packJson,
  UNMATCHED,
  wireId,
  wireMethod,
} from "../emitter.js";

const SCHEMA = JSON.parse(readFileSync(new URL("../../../protocol/schema/frames.schema.json", import.meta.url)));

// The part of JSON Schema that frames.schema.json uses for `http` frames.
function validate(schema, v, at = "$") {
  if (schema.enum && !schema.enum.includes(v)) return `${at}: not one of ${schema.enum}`;
  const t = schema.type;
  if (t === "integer" && !Number.isInteger(v)) return `${at}: not an integer`;
  if (t === "number" && typeof v !== "number") return `${at}: not a number`;
  if (t === "string" && typeof v !== "string") return `${at}: not a string`;
  if (t === "array" && !Array.isArray(v)) return `${at}: not an array`;
  if (t === "object" && (typeof v !== "object" || v === null || Array.isArray(v))) return `${at}: not an object`;
  if (schema.minimum !== undefined && v < schema.minimum) return `${at}: below minimum`;
  if (schema.maximum !== undefined && v > schema.maximum) return `${at}: above maximum`;
  if (typeof v === "string") {
    const n = [...v].length;
    if (schema.minLength !== undefined && n < schema.minLength) return `${at}: too short`;
    if (schema.maxLength !== undefined && n > schema.maxLength) return `${at}: too long`;
    if (schema.pattern && !new RegExp(schema.pattern, "u").test(v)) return `${at}: does not match ${schema.pattern}`;
  }
  if (Array.isArray(v)) {
    if (schema.minItems !== undefined && v.length < schema.minItems) return `${at}: too few items`;
    if (schema.maxItems !== undefined && v.length > schema.maxItems) return `${at}: too many items`;
    for (const [i, item] of v.entries()) {
      const e = schema.items && validate(schema.items, item, `${at}[${i}]`);
      if (e) return e;
    }
  }
  if (t === "object") {
    for (const k of schema.required ?? []) if (!(k in v)) return `${at}: ${k} missing`;
    for (const [k, sub] of Object.entries(schema.properties ?? {})) {
      const e = k in v && validate(sub, v[k], `${at}.${k}`);
      if (e) return e;
    }
  }
  return null;
}
const checkHttpFrame = (f) => assert.equal(validate(SCHEMA.$defs.HttpSample, f), null, JSON.stringify(f));

const quiet = (o = {}) => createEmitter({ service: "svc", port: 9, intervalMs: 3600e3, ...o });
const frames = (e, all = true) => e.sample(1764338400123, all).map((t) => JSON.parse(t));
const byRoute = (fs) => Object.fromEntries(fs.map((f) => [`${f.route} ${f.meth}`, f]));

test("latency buckets follow PROTOCOL.md §4.1: bound[i-1] < L <= bound[i]", () => {
  assert.deepEqual(LATENCY_BOUNDS_MS, [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]);
  assert.equal(latencyBucket(0), 0);
  assert.equal(latencyBucket(5), 0);
  assert.equal(latencyBucket(5.0001), 1);
  assert.equal(latencyBucket(10000), 10);
  assert.equal(latencyBucket(10000.5), 11);
  assert.equal(latencyBucket(1e9), 11);
  LATENCY_BOUNDS_MS.forEach((b, i) => {
    assert.equal(latencyBucket(b), i);
    assert.equal(latencyBucket(b + 0.001), i + 1);
  });
});

test("methods outside the standard ones are sent as _OTHER", () => {
  for (const m of ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]) assert.equal(wireMethod(m), m);
  assert.equal(wireMethod("PROPFIND"), "_OTHER");
  assert.equal(wireMethod("get"), "_OTHER");
});

test("route names become valid identifiers: bad characters replaced, 128 code points at most", () => {
  assert.equal(wireId("/v1/orders/:id", "x"), "/v1/orders/:id");
  assert.equal(wireId("/a b\tc\u200bd\u00a0e", "x"), "/a_b_c_d_e");
  assert.equal(wireId("", UNMATCHED), UNMATCHED);
  assert.equal(wireId(undefined, UNMATCHED), UNMATCHED);
  const long = "/北".repeat(100);
  assert.equal([...wireId(long, "x")].length, 128);
});

test("a sample holds the cumulative counters of each (route, method), valid against the schema", () => {
  const e = quiet();
  e.record("/items/:id", "GET", 200, 10, 1000, 3);
  e.record("/items/:id", "GET", 404, 0, 20, 7);
  e.record("/items/:id", "GET", 0, 5, 300, 20000); // client gone: no status class
  e.record("/items/:id", "POST", 503, 1, 2, 60);
  e.record("/items/:id", "GET", 102, 0, 0, 1);
  e.record("/items/:id", "GET", 999, 0, 0, 1); // outside every class
  const first = frames(e);
  first.forEach(checkHttpFrame);
  const get = byRoute(first)["/items/:id GET"];
  assert.equal(get.svc, "svc");
  assert.match(get.inst, /^.+:\d+$/);
  assert.match(get.boot, /^[0-9a-f]{16}$/);
  assert.equal(get.q, 0);
  assert.equal(get.ts, 1764338400123);
  assert.equal(get.req, 5);
  assert.deepEqual(get.st, [1, 1, 0, 1, 0]);
  assert.equal(get.bi, 15);
  assert.equal(get.bo, 1320);
  assert.deepEqual(get.lh, [3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
  assert.equal(get.req, get.lh.reduce((a, b) => a + b));
  assert.ok(Math.abs(get.ls - 20012) < 1e-9);
  assert.deepEqual(byRoute(first)["/items/:id POST"].st, [0, 0, 0, 0, 1]);
  // The next sample: q + 1, the same totals plus what came since.
  e.record("/items/:id", "GET", 201, 0, 1, 1);
  const second = byRoute(frames(e))["/items/:id GET"];
  assert.equal(second.q, 1);
  assert.equal(second.req, 6);
  assert.equal(second.bo, 1321);
  assert.equal(byRoute(frames(e))["/items/:id POST"].q, 2);
});

test("a sample holds the streams that changed since their last one; the first holds all", () => {
  const e = quiet();
  e.record("/a", "GET", 200, 0, 1, 1);
  e.record("/b", "GET", 200, 0, 1, 1);
  assert.deepEqual(frames(e, false).map((f) => f.route), ["/a", "/b"]); // the first: full
  assert.deepEqual(frames(e, false), []);
  e.record("/b", "GET", 200, 0, 1, 1);
  const [b] = frames(e, false);
  assert.equal(b.route, "/b");
  assert.equal(b.q, 1);
  assert.equal(b.req, 2);
  assert.deepEqual(frames(e, true).map((f) => [f.route, f.q]), [["/a", 1], ["/b", 2]]);
});

test("each process has its own boot nonce", () => {
  assert.notEqual(quiet().boot, quiet().boot);
  assert.equal(quiet({ boot: "b1", instance: "web-1:7" }).instance, "web-1:7");
});

test("(route, method) pairs past maxRoutes go to one overflow bucket that keeps the totals", () => {
  const e = quiet({ maxRoutes: 3 });
  let bytes = 0;
  for (let i = 0; i < 10; i++) {
    for (const m of ["GET", "POST"]) {
      e.record(`/r${i}`, m, 200, i, 100 + i, 1);
      bytes += 100 + i;
    }
  }
  e.record("/r0", "GET", 200, 0, 1, 1); // a kept route stays itself
  bytes += 1;
  const fs = frames(e);
  fs.forEach(checkHttpFrame);
  assert.deepEqual(Object.keys(byRoute(fs)).sort(), ["/r0 GET", "/r0 POST", "/r1 GET", `${OVERFLOW} GET`, `${OVERFLOW} POST`].sort());
  assert.equal(e.routes, 3);
  assert.equal(e.stats.overflowRequests, 17);
  assert.equal(fs.reduce((a, f) => a + f.req, 0), 21);
  assert.equal(fs.reduce((a, f) => a + f.bo, 0), bytes);
  assert.equal(byRoute(fs)[`${OVERFLOW} POST`].req, 9);
  assert.equal(byRoute(fs)[`${OVERFLOW} GET`].req, 8);
  assert.equal(byRoute(fs)["/r0 GET"].req, 2);
});

test("raw routes that clean to one identifier share one stream", () => {
  const e = quiet();
  e.record("/a b", "GET", 200, 0, 1, 1);
  e.record("/a\tb", "GET", 200, 0, 2, 1);
  e.record("/a_b", "GET", 200, 0, 4, 1);
  const fs = frames(e);
  assert.equal(fs.length, 1);
  assert.equal(fs[0].route, "/a_b");
  assert.equal(fs[0].bo, 7);
});

test("frames are packed into JSON arrays of at most the budget; a larger frame travels alone", () => {
  const e = quiet();
  for (let i = 0; i < 50; i++) e.record(`/route/${"x".repeat(i)}`, "GET", 200, 1, 2, 3);
  const texts = e.sample();
  const datagrams = packJson(texts, 1200);
  assert.ok(datagrams.length > 1);
  const all = datagrams.flatMap((d) => {
    assert.ok(d.length <= 1200, `${d.length} bytes`);
    assert.equal(d[0], 0x5b); // '[': JSON (§3.5)
    return JSON.parse(d);
  });
  assert.deepEqual(all, texts.map((t) => JSON.parse(t)));
  // Full datagrams: the next frame would not have fitted.
  for (let i = 0; i + 1 < datagrams.length; i++) {
    const next = Buffer.byteLength(texts[JSON.parse(datagrams.slice(0, i + 1).map(String).join("").replaceAll("][", ",")).length]);
    assert.ok(datagrams[i].length + 1 + next > 1200);
  }
  const big = "y".repeat(2000);
  assert.deepEqual(packJson([big, "1"], 1200).map(String), [`[${big}]`, "[1]"]);
  // Non-ASCII routes are measured in bytes, not characters.
  const wide = quiet();
  for (let i = 0; i < 20; i++) wide.record(`/北京/${i}/${"é".repeat(40)}`, "GET", 200, 0, 0, 1);
  for (const d of packJson(wide.sample(), 1200)) assert.ok(d.length <= 1200);
});

test("an invalid service name is a configuration error at creation", () => {
  assert.throws(() => createEmitter({ service: "" }), TypeError);
  assert.throws(() => createEmitter({}), TypeError);
});
