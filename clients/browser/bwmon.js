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

// ---- monitor: createMonitor, the sampling loop, events, the RTCPeerConnection wrapper ----

/** @param {object} options */
export function createMonitor(options) {
  throw new Error("not built yet");
}

// ---- indicator: <bwmon-indicator>, an optional custom element showing the local view ----
