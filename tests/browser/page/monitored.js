// The call's two sides instrumented with the browser client as a web page would: the module
// imported from the daemon itself (/client/bwmon.js, a cross-origin import), one monitor per
// side (participants "a" and "b"). The last getStats() report each monitor read is kept, so
// that a test can hold the daemon's totals against the browser's own counters.

export const monitors = {};
export const lastReads = {};
const pcs = {};

/** Loads the module from `daemon` (its base URL) and adds each side's connection as it is made. */
export async function instrument(daemon, meeting, intervalMs) {
  const { createMonitor } = await import(`${daemon}/client/bwmon.js`);
  for (const side of ["a", "b"]) {
    monitors[side] = createMonitor({ url: daemon, meeting, participant: side, intervalMs });
  }
  globalThis.onCallPeer = (side, pc) => {
    const read = pc.getStats.bind(pc);
    pc.getStats = async (...args) => {
      const report = await read(...args);
      lastReads[side] = [...report.values()];
      return report;
    };
    pcs[side] = pc;
    monitors[side].add(pc, { connection: `${meeting}-${side}` });
  };
}

/** Each side's connection removed from its monitor: its last sample sent, no leave yet. */
export const remove = () =>
  Promise.all(Object.entries(pcs).map(([side, pc]) => monitors[side].remove(pc)));

/** Closes both monitors: a last sample of what they still watch, a leave, everything flushed. */
export const close = () => Promise.all(Object.values(monitors).map((m) => m.close()));

/** Each side's monitor.stats(). */
export const stats = () =>
  Object.fromEntries(Object.entries(monitors).map(([side, m]) => [side, m.stats()]));
