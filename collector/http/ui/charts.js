// A meeting's charts over time: bitrate up and down, loss, RTT and jitter, MOS, drawn with uPlot
// (vendor/uplot, a pinned copy of the npm package) from GET /api/series, which downsamples on
// the daemon to the chart's width in pixels: per bucket the lowest, mean and highest value, so
// a spike survives. Each chart draws the mean as a line and the band from lowest to highest.
//
// mountCharts(section, { meeting, api }) draws into `section` and returns { refresh, plots,
// destroy }; `participant` narrows the charts to one participant, `rangeS` and `refreshMs` set
// the range shown first and the refresh period.
// One request per refresh feeds every chart. It refreshes every `refreshMs` while the document
// is visible (none while hidden; one at once when shown again), follows the section's width,
// and destroy() leaves nothing behind: no timer, observer, listener, request or canvas.

import uPlot from "./vendor/uplot/uPlot.esm.js";

const RANGES = [
  [900, "15 min"],
  [3600, "1 h"],
  [6 * 3600, "6 h"],
  [24 * 3600, "24 h"],
  [7 * 24 * 3600, "7 days"],
];
const MAX_POINTS = 2000; // the API's limit
const HEIGHT = 160;
// A gap in the data wider than this (s) is drawn as a gap; a narrower one (buckets between two
// stored minutes, narrower than a minute) is bridged.
const GAP_S = 150;
// Okabe-Ito colours, told apart with colour-blindness; the second series is dashed too.
const COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7"];

const CHARTS = [
  { title: "Bitrate", metrics: [["up_bps", "up"], ["down_bps", "down"]], value: bits, min: 0 },
  { title: "Loss", metrics: [["loss_pct", "loss"]], value: (v) => `${num(v)} %`, min: 0, top: 1 },
  {
    title: "RTT and jitter",
    metrics: [["rtt_ms", "RTT"], ["jitter_ms", "jitter"]],
    value: (v) => `${num(v)} ms`,
    min: 0,
  },
  { title: "MOS", metrics: [["mos", "MOS"]], value: num, min: 1, max: 5 },
];

const STYLE = `
.bw-charts{display:grid;gap:.75rem;grid-template-columns:repeat(auto-fill,minmax(min(100%,26rem),1fr))}
.bw-charts-bar{grid-column:1/-1;display:flex;gap:.5rem;align-items:center;flex-wrap:wrap}
.bw-charts-status{opacity:.75;font-size:.85em}
.bw-chart{min-width:0;margin:0}.bw-chart h3{margin:0 0 .25rem;font-size:.95em}
.bw-chart .u-legend{font-size:.8em}
`;

let styled = false;

function addStyles() {
  if (styled) return;
  styled = true;
  const link = document.createElement("link");
  link.rel = "stylesheet";
  link.href = new URL("./vendor/uplot/uPlot.min.css", import.meta.url).href;
  const style = document.createElement("style");
  style.textContent = STYLE;
  document.head.append(link, style);
}

function num(v) {
  if (v == null) return "–";
  return Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 10 ? v.toFixed(1) : v.toFixed(2);
}

function bits(v) {
  if (v == null) return "–";
  const units = ["b/s", "kb/s", "Mb/s", "Gb/s"];
  let i = 0;
  while (Math.abs(v) >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return `${num(v)} ${units[i]}`;
}

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

// Only the gaps wider than GAP_S stay gaps: stored minutes come one per minute, so on a narrow
// bucket most buckets between them are empty without the data having a gap.
function wideGaps(u, _series, _first, _last, gaps) {
  return gaps.filter(([x0, x1]) => u.posToVal(x1, "x") - u.posToVal(x0, "x") > GAP_S);
}

function chartOptions(spec, width, colour) {
  const series = [{}];
  const bands = [];
  spec.metrics.forEach(([, label], i) => {
    const stroke = colour(i);
    const dash = i ? [6, 4] : undefined;
    const base = series.length;
    series.push(
      { label, stroke, dash, width: 1.5, gaps: wideGaps, value: (_, v) => spec.value(v) },
      { label: `${label} max`, stroke, alpha: 0.35, width: 0.5, gaps: wideGaps, value: (_, v) => spec.value(v) },
      { label: `${label} min`, stroke, alpha: 0.35, width: 0.5, gaps: wideGaps, value: (_, v) => spec.value(v) },
    );
    const fill = /^#[0-9a-f]{6}$/i.test(stroke) ? `${stroke}33` : "rgba(128,128,128,.2)";
    bands.push({ series: [base + 1, base + 2], fill });
  });
  return {
    width,
    height: HEIGHT,
    series,
    bands,
    cursor: { drag: { x: false, y: false } },
    legend: { live: true },
    scales: {
      y: {
        range: (_, lo, hi) => [
          spec.min ?? Math.min(0, lo ?? 0),
          spec.max ?? (Math.max(hi ?? 0, spec.top ?? 0) * 1.1 || 1),
        ],
      },
    },
    axes: [{}, { size: 84, values: (_, ticks) => ticks.map(spec.value) }],
  };
}

// The series of one chart in uPlot's column order: t, then per metric mean, max, min.
function columns(spec, answer) {
  const data = [answer.t];
  for (const [metric] of spec.metrics) {
    const s = answer.series[metric] ?? {};
    const empty = answer.t.map(() => null);
    data.push(s.mean ?? empty, s.max ?? empty, s.min ?? empty);
  }
  return data;
}

export function mountCharts(section, { meeting, api, participant = null, rangeS = 900, refreshMs = 5000 }) {
  addStyles();
  const aborter = new AbortController();
  const status = el("span", { className: "bw-charts-status", role: "status" });
  const select = el(
    "select",
    { ariaLabel: "Chart range" },
    ...RANGES.map(([seconds, label]) => el("option", { value: String(seconds), selected: seconds === rangeS }, label)),
  );
  const root = el(
    "div",
    { className: "bw-charts" },
    el("div", { className: "bw-charts-bar" }, el("label", {}, "Range ", select), status),
  );
  const charts = CHARTS.map((spec) => {
    const box = el("figure", { className: "bw-chart" }, el("h3", {}, spec.title));
    root.append(box);
    return { spec, box, plot: null };
  });
  section.append(root);

  let destroyed = false;
  let timer = null;
  let inFlight = null;
  let width = 0;

  const colour = (i) => getComputedStyle(section).getPropertyValue(`--chart-${i + 1}`).trim() || COLOURS[i];

  function chartWidth() {
    return Math.max(120, Math.floor(charts[0].box.clientWidth || section.clientWidth || 600));
  }

  let again = false;

  function refresh() {
    if (destroyed) return Promise.resolve();
    if (inFlight) {
      again = true; // a range or width changed while a request was out: ask once more after it
      return inFlight;
    }
    const points = Math.min(MAX_POINTS, chartWidth());
    const to = Date.now() / 1000;
    const query = new URLSearchParams({ meeting, from: String(to - rangeS), to: String(to), points: String(points) });
    if (participant) query.set("participant", participant);
    inFlight = (async () => {
      try {
        const response = await api(`/api/series?${query}`, { signal: aborter.signal });
        if (!response.ok) {
          const body = await response.json().catch(() => ({}));
          throw new Error(body.error ?? `HTTP ${response.status}`);
        }
        draw(await response.json());
        status.textContent = "";
      } catch (error) {
        if (!destroyed) status.textContent = `Charts not updated: ${error.message ?? error}`;
      } finally {
        inFlight = null;
      }
      if (again) {
        again = false;
        await refresh();
      }
    })();
    return inFlight;
  }

  function draw(answer) {
    if (destroyed) return;
    width = chartWidth();
    for (const chart of charts) {
      const data = columns(chart.spec, answer);
      if (chart.plot) {
        if (chart.plot.width !== width) chart.plot.setSize({ width, height: HEIGHT });
        chart.plot.setData(data);
      } else {
        chart.plot = new uPlot(chartOptions(chart.spec, width, colour), data, chart.box);
        // The legend names each metric once: its max and min rows (the band) are left out.
        chart.plot.root.querySelectorAll(".u-legend .u-series").forEach((row, i) => {
          if (i > 0 && i % 3 !== 1) row.style.display = "none";
        });
      }
    }
  }

  function schedule() {
    clearTimeout(timer);
    timer = null;
    if (destroyed || document.hidden) return;
    timer = setTimeout(() => refresh().finally(schedule), refreshMs);
  }

  function onVisibility() {
    if (document.hidden) {
      clearTimeout(timer);
      timer = null;
    } else {
      refresh().finally(schedule);
    }
  }

  let resizeFrame = 0;
  const resizer = new ResizeObserver(() => {
    cancelAnimationFrame(resizeFrame);
    resizeFrame = requestAnimationFrame(() => {
      const now = chartWidth();
      if (destroyed || now === width || !charts[0].plot) return;
      width = now;
      for (const chart of charts) chart.plot.setSize({ width, height: HEIGHT });
      refresh(); // as many points as the new width has pixels
    });
  });
  resizer.observe(section);

  select.addEventListener("change", () => {
    rangeS = Number(select.value);
    refresh();
  });
  document.addEventListener("visibilitychange", onVisibility);
  if (!document.hidden) refresh().finally(schedule);

  return {
    refresh,
    // The uPlot instances, in the order of CHARTS, once drawn (to sync cursors, or to test).
    get plots() {
      return charts.map((chart) => chart.plot).filter(Boolean);
    },
    destroy() {
      if (destroyed) return;
      destroyed = true;
      aborter.abort();
      clearTimeout(timer);
      cancelAnimationFrame(resizeFrame);
      resizer.disconnect();
      document.removeEventListener("visibilitychange", onVisibility);
      for (const chart of charts) {
        chart.plot?.destroy();
        chart.plot = null;
      }
      root.remove();
    },
  };
}
