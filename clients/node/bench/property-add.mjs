// Why bwmon-node keeps a request's counts in a WeakMap once a framework has changed the request's
// and the response's prototypes (clients/node/index.js): `node clients/node/bench/property-add.mjs`.
//
// Times one store per fresh http.ServerResponse, three ways: a symbol-keyed property added to the
// object as the server made it; the same after `Object.setPrototypeOf` (what Express does to
// every request and response before its first middleware); a WeakMap entry for it. Prints the
// median ns per store of each (rounds of 20,000 objects, the first two not counted) and the
// ratios; no dependency.

import http from "node:http";
import { Duplex } from "node:stream";

class NullSocket extends Duplex {
  _read() {}
  _write(chunk, encoding, callback) {
    callback();
  }
}

const socket = new NullSocket();
const STATE = Symbol("state");
const appResponse = Object.create(http.ServerResponse.prototype, { send: { value() {} } });
const ROUNDS = 7;
const PER_ROUND = 20000;

function round(way) {
  const states = new WeakMap();
  let ns = 0n;
  for (let i = 0; i < PER_ROUND; i++) {
    const req = new http.IncomingMessage(socket);
    const res = new http.ServerResponse(req);
    if (way === "after setPrototypeOf") Object.setPrototypeOf(res, appResponse);
    const t0 = process.hrtime.bigint();
    if (way === "WeakMap") states.set(res, req);
    else res[STATE] = req;
    ns += process.hrtime.bigint() - t0;
  }
  return Number(ns) / PER_ROUND;
}

const ways = ["as made", "after setPrototypeOf", "WeakMap"];
const times = Object.fromEntries(ways.map((w) => [w, []]));
for (let r = 0; r < ROUNDS; r++) {
  for (const w of ways) {
    const ns = round(w);
    if (r >= 2) times[w].push(ns); // the first two rounds warm up
  }
}
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
const figures = Object.fromEntries(ways.map((w) => [w, median(times[w])]));
process.stdout.write(`ns per store (with the clock's own cost), node ${process.version}\n`);
for (const w of ways) process.stdout.write(`${w.padEnd(22)}${figures[w].toFixed(0).padStart(8)}\n`);
const base = figures["as made"];
process.stdout.write(`after setPrototypeOf / as made: ${(figures["after setPrototypeOf"] / base).toFixed(1)}x; WeakMap / as made: ${(figures.WeakMap / base).toFixed(1)}x\n`);
