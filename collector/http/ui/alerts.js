// The alerts view: the open alerts (the `alerts` topic) and the feed of raises and clears
// (live `alert` messages and the stored recent ones, context.js), newest first.

import * as f from "./format.js";
import { shared, topicState } from "./context.js";
import { exportControls } from "./exporting.js";

const MAX_OPEN = 200;

/** One alert event as the feed keeps it, from a live `alert` message or an /api/alerts row. */
export function normalizeAlert(alert) {
  const key = Array.isArray(alert.key) ? alert.key : [];
  return {
    id: alert.id,
    rule: alert.rule,
    severity: alert.severity,
    state: alert.state === "cleared" ? "cleared" : "raised",
    meeting: alert.meeting ?? key[0] ?? null,
    participant: alert.participant ?? key[1] ?? null,
    at: alert.at ?? alert.raised_at,
    raised_at: alert.raised_at,
    value: alert.value,
    threshold: alert.threshold,
  };
}

function scope(alert, doc) {
  const span = doc.createElement("span");
  if (!alert.meeting) return span;
  const link = doc.createElement("a");
  link.href = `#/meeting/${encodeURIComponent(alert.meeting)}`;
  link.textContent = alert.meeting;
  span.append(link);
  if (alert.participant) span.append(` / ${alert.participant}`);
  return span;
}

function number(value) {
  return typeof value === "number" ? String(Math.round(value * 100) / 100) : "—";
}

function feedItem(alert) {
  const item = document.createElement("li");
  item.className = `event ${alert.state}`;
  const state = document.createElement("span");
  state.className = "state";
  state.dataset.state = alert.state;
  state.textContent = alert.state;
  const time = document.createElement("time");
  time.dateTime = new Date(alert.at * 1000).toISOString();
  time.textContent = f.clock(alert.at);
  const rule = document.createElement("strong");
  rule.textContent = alert.rule;
  const severity = document.createElement("span");
  severity.className = "severity";
  severity.dataset.severity = alert.severity;
  severity.textContent = alert.severity;
  const values = document.createElement("span");
  values.className = "values";
  values.textContent = `value ${number(alert.value)} · threshold ${number(alert.threshold)}`;
  item.append(time, state, severity, rule, scope(alert, document), values);
  return item;
}

export function mount(main) {
  const root = document.createElement("div");
  root.className = "alerts-view";
  root.innerHTML = `
    <h1>Alerts</h1>
    <section aria-labelledby="feed-title">
      <h2 id="feed-title">Feed <small>(raised and cleared, newest first; the last ${500})</small></h2>
      <div class="export-slot"></div>
      <ol class="feed" id="feed" aria-live="polite"></ol>
      <p class="note" id="feed-empty">No alert raised or cleared yet.</p>
    </section>
    <section aria-labelledby="open-title">
      <h2 id="open-title">Open <span class="count" id="open-count"></span></h2>
      <div class="open-alerts"><table class="plain">
        <thead><tr><th scope="col">Raised</th><th scope="col">Severity</th><th scope="col">Rule</th><th scope="col">Meeting / participant</th><th scope="col" class="num">Value</th><th scope="col" class="num">Threshold</th></tr></thead>
        <tbody id="open"></tbody>
      </table></div>
      <p class="note" id="open-empty">No alert is open.</p>
    </section>`;
  main.append(root);
  const $ = (selector) => root.querySelector(selector);
  const feed = $("#feed");
  exportControls($(".export-slot"), { whats: [["alerts", "alerts"]], params: () => ({}) });

  function renderOpen() {
    const all = [...topicState("alerts").values()].map(normalizeAlert);
    all.sort((a, b) => (b.raised_at || 0) - (a.raised_at || 0));
    const rows = all.slice(0, MAX_OPEN);
    const body = $("#open");
    body.replaceChildren(
      ...rows.map((alert) => {
        const row = document.createElement("tr");
        const cells = [f.clock(alert.raised_at), alert.severity, alert.rule, null, number(alert.value), number(alert.threshold)];
        cells.forEach((text, index) => {
          const cell = document.createElement("td");
          if (index === 3) cell.append(scope(alert, document));
          else cell.textContent = text;
          if (index >= 4) cell.className = "num";
          if (index === 1) cell.dataset.severity = text;
          row.append(cell);
        });
        return row;
      }),
    );
    $("#open-count").textContent =
      all.length > rows.length ? `(${all.length}; the newest ${rows.length} shown)` : `(${all.length})`;
    $("#open-empty").hidden = all.length > 0;
  }

  function renderFeed() {
    feed.replaceChildren(...shared.feed.map(feedItem));
    $("#feed-empty").hidden = shared.feed.length > 0;
  }

  const onFeed = () => renderFeed();
  shared.feedListeners.add(onFeed);
  renderOpen();
  renderFeed();
  return {
    title: "Alerts",
    update(topic) {
      if (topic === "alerts") renderOpen();
    },
    destroy() {
      shared.feedListeners.delete(onFeed);
    },
  };
}
