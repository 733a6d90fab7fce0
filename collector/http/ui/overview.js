// The overview: summary cards, the quality distribution, and the meetings table (search,
// filters, sort, export). The model is the `meetings` topic's Map; the view is one array of
// ids, filtered and sorted again when a batch arrives or a control changes, of which the
// table draws only what is visible.

import { VirtualTable } from "./table.js";
import * as f from "./format.js";
import { topicState } from "./context.js";
import { apiJson } from "./api.js";
import { exportControls } from "./exporting.js";

const SKELETON = `
<h1 class="visually-hidden">Overview</h1>
<section class="cards" aria-label="Summary">
  <div class="card"><span class="label">Live meetings</span><span class="value" data-card="meetings">—</span></div>
  <div class="card"><span class="label">Participants</span><span class="value" data-card="participants">—</span></div>
  <div class="card"><span class="label">Relayed (TURN)</span><span class="value" data-card="relayed">—</span></div>
  <div class="card"><span class="label">Bandwidth up</span><span class="value" data-card="up">—</span></div>
  <div class="card"><span class="label">Bandwidth down</span><span class="value" data-card="down">—</span></div>
  <div class="card" title="Relayed volume of the live meetings so far and of the meetings ended today, × the configured price per GB"><span class="label">Relay cost today</span><span class="value" data-card="cost">—</span></div>
  <div class="card"><span class="label">Active alerts</span><span class="value" data-card="alerts">—</span></div>
</section>
<section class="quality" aria-labelledby="quality-title">
  <h2 id="quality-title">Quality distribution <small>(meetings by their worst participant)</small></h2>
  <ul class="bars"></ul>
</section>
<section class="meetings" aria-labelledby="meetings-title">
  <div class="toolbar">
    <h2 id="meetings-title">Meetings</h2>
    <span class="search">
      <label for="search">Search</label>
      <input id="search" type="search" autocomplete="off" spellcheck="false" placeholder="meeting id">
      <select id="search-in" aria-label="Search in">
        <option value="meeting">by meeting id</option>
        <option value="participant">by participant id</option>
      </select>
    </span>
    <fieldset class="levels"><legend>Quality</legend></fieldset>
    <label>Relay
      <select id="relay"><option value="">any</option><option value="true">some relayed</option><option value="false">none relayed</option></select>
    </label>
    <label class="check"><input id="has-alerts" type="checkbox"> with open alerts</label>
    <span id="count" class="count" role="status"></span>
  </div>
  <p id="search-note" class="note" hidden></p>
  <div class="export-slot"></div>
  <div class="table-slot"></div>
</section>`;

const SORTS = {
  id: null,
  level: "quality",
  quality: "quality",
  participants: "participants",
  up_bps: "up_bps",
  down_bps: "down_bps",
  relay_share: "relay_share",
  relay_cost: "relay_cost",
  alerts: "alerts",
  started_at: "started_at",
};

// What the overview shows (filters, sort, the focused meeting) survives a visit to another view.
const saved = {
  filter: { text: "", in: "meeting", levels: new Set(f.LEVELS), relay: "", alerts: false, members: null },
  sortKey: "quality",
  sortDesc: false,
  focused: undefined,
};

function sameOrder(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function mount(main) {
  const root = document.createElement("div");
  root.className = "overview";
  root.innerHTML = SKELETON;
  main.append(root);
  const $ = (selector) => root.querySelector(selector);
  const cards = {};
  for (const element of root.querySelectorAll("[data-card]")) cards[element.dataset.card] = element;

  const levelsBox = $(".levels");
  const bars = {};
  for (const level of f.LEVELS) {
    const label = document.createElement("label");
    label.className = "check";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = saved.filter.levels.has(level);
    box.value = level;
    label.append(box, f.badge(level));
    levelsBox.append(label);

    const item = document.createElement("li");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.dataset.level = level;
    const fill = document.createElement("span");
    fill.className = "fill";
    bar.append(fill);
    const figure = document.createElement("span");
    figure.className = "figure";
    item.append(f.badge(level), bar, figure);
    $(".bars").append(item);
    bars[level] = { fill, figure };
  }

  const filter = saved.filter;
  let { sortKey, sortDesc } = saved;
  let endedCost = 0;
  let lastGet = null;
  let rendered = false;
  const count = $("#count");

  const table = new VirtualTable($(".table-slot"), {
    label: "Live meetings",
    empty: "No live meeting matches",
    onOpen: (id) => {
      location.hash = `#/meeting/${encodeURIComponent(id)}`;
    },
    onSort: (key) => {
      if (key === sortKey) sortDesc = !sortDesc;
      else {
        sortKey = key;
        sortDesc = ["participants", "up_bps", "down_bps", "relay_share", "relay_cost", "alerts"].includes(key);
      }
      table.setSort(sortKey, sortDesc);
      rebuild();
    },
    columns: [
      { key: "id", label: "Meeting", width: "minmax(8rem, 2.2fr)", text: (_m, id) => id, link: (_m, id) => `#/meeting/${encodeURIComponent(id)}` },
      { key: "level", label: "Quality", width: "7.5rem", badge: (m) => m.level },
      { key: "quality", label: "Score", width: "4.5rem", align: "right", text: (m) => f.score(m.quality) },
      { key: "participants", label: "People", width: "5rem", align: "right", text: (m) => f.count(m.participants) },
      { key: "up_bps", label: "Up", width: "minmax(6rem, 1fr)", align: "right", text: (m) => f.bps(m.up_bps) },
      { key: "down_bps", label: "Down", width: "minmax(6rem, 1fr)", align: "right", text: (m) => f.bps(m.down_bps) },
      { key: "relay_share", label: "Relayed", width: "5.5rem", align: "right", text: (m) => f.share(m.relay_share) },
      { key: "relay_cost", label: "Relay cost", width: "6.5rem", align: "right", text: (m) => f.money(m.relay_cost) },
      { key: "alerts", label: "Alerts", width: "4.5rem", align: "right", text: (m) => f.count(m.alerts) },
      { key: "started_at", label: "Started", width: "6rem", align: "right", text: (m) => f.clock(m.started_at) },
    ],
  });
  table.setSort(sortKey, sortDesc);

  const exporter = exportControls($(".export-slot"), {
    whats: [["rtc", "minute rows"], ["meetings", "ended meetings"], ["alerts", "alerts"]],
    params: (what) => {
      const params = {};
      if (filter.in === "participant" && filter.text && what !== "meetings") params.participant = filter.text;
      else if (filter.in === "meeting" && filter.text) {
        const state = topicState("meetings");
        if (state.has(filter.text)) params.meeting = filter.text;
      }
      return params;
    },
  });

  function matches(id, m) {
    if (!filter.levels.has(f.levelOf(m.level))) return false;
    if (filter.relay === "true" && !(m.relay_share > 0)) return false;
    if (filter.relay === "false" && m.relay_share > 0) return false;
    if (filter.alerts && !(m.alerts > 0)) return false;
    if (filter.text) {
      if (filter.in === "meeting") return id.toLowerCase().includes(filter.text.toLowerCase());
      return filter.members !== null && filter.members.has(id);
    }
    return true;
  }

  /** Compares [value, id] pairs: the sort column's value (a meeting without one last either
   * way), then the id. */
  function order() {
    const sign = sortDesc ? -1 : 1;
    return (a, b) => {
      const x = a[0];
      const y = b[0];
      const xm = typeof x !== "number";
      const ym = typeof y !== "number";
      if (xm !== ym) return xm ? 1 : -1;
      if (!xm && x !== y) return (x - y) * sign;
      return a[1] < b[1] ? -sign : a[1] > b[1] ? sign : 0;
    };
  }

  /** Filter and sort again; the table repaints every visible row if the order changed, else
   * only the visible rows among `changed` (a batch's ids). The rows are sorted by values read
   * once each, starting from the order shown: a batch of deltas moves few meetings, and a
   * nearly sorted array sorts in about linear time, so 5,000 meetings take a few ms. */
  function rebuild(changed) {
    const state = topicState("meetings");
    const field = SORTS[sortKey];
    const keyed = [];
    const seen = new Set();
    for (const id of table.ids) {
      seen.add(id);
      const m = state.get(id);
      if (m !== undefined && matches(id, m)) keyed.push([field ? m[field] : undefined, id]);
    }
    for (const [id, m] of state) {
      if (!seen.has(id) && matches(id, m)) keyed.push([field ? m[field] : undefined, id]);
    }
    keyed.sort(order());
    const ids = keyed.map((pair) => pair[1]);
    const same = changed && sameOrder(ids, table.ids) && table.get === lastGet;
    if (same) table.refresh(changed);
    else {
      lastGet = (id) => state.get(id);
      table.setRows(ids, lastGet);
    }
    if (ids.length && !rendered) {
      rendered = true;
      performance.mark("bwmon:first-render"); // the first meetings drawn (for the benchmarks)
    }
    const text = `${f.count(ids.length)} of ${f.count(state.size)} meetings`;
    if (count.textContent !== text) count.textContent = text;
  }

  function summarize() {
    const state = topicState("meetings");
    let people = 0;
    let relayed = 0;
    let up = 0;
    let down = 0;
    let cost = 0;
    const meetings = Object.fromEntries(f.LEVELS.map((level) => [level, 0]));
    const participants = { ...meetings };
    for (const m of state.values()) {
      const n = m.participants || 0;
      people += n;
      relayed += (m.relay_share || 0) * n;
      up += m.up_bps || 0;
      down += m.down_bps || 0;
      cost += m.relay_cost || 0;
      const level = f.levelOf(m.level);
      meetings[level] += 1;
      participants[level] += n;
    }
    cards.meetings.textContent = f.count(state.size);
    cards.participants.textContent = f.count(people);
    cards.relayed.textContent = people ? f.pct((100 * relayed) / people, 0) : "—";
    cards.up.textContent = f.bps(up);
    cards.down.textContent = f.bps(down);
    cards.cost.textContent = f.money(cost + endedCost);
    const most = Math.max(1, ...Object.values(meetings));
    for (const level of f.LEVELS) {
      bars[level].fill.style.width = `${(100 * meetings[level]) / most}%`;
      bars[level].figure.textContent = `${meetings[level]} meeting${meetings[level] === 1 ? "" : "s"} · ${participants[level]} people`;
    }
  }

  function alertCount() {
    cards.alerts.textContent = f.count(topicState("alerts").size);
  }

  async function loadEndedCost() {
    if (document.visibilityState === "hidden") return;
    const midnight = new Date();
    midnight.setHours(0, 0, 0, 0);
    try {
      const rows = await apiJson(`/api/export?what=meetings&format=json&start=${Math.floor(midnight / 1000)}`);
      endedCost = rows.reduce((sum, row) => sum + (row.relay_cost || 0), 0);
      summarize();
    } catch (error) {
      endedCost = 0; // nothing stored: the live meetings only
      if (error.status === 404) clearInterval(costTimer); // storage.backend = "none"
    }
  }

  let searchTurn = 0;
  async function findParticipant() {
    const turn = ++searchTurn;
    const note = $("#search-note");
    filter.members = null;
    if (filter.in !== "participant" || !filter.text) {
      note.hidden = true;
      return;
    }
    note.hidden = false;
    note.textContent = "Looking up the participant's meetings…";
    const since = Math.floor(Date.now() / 1000) - 900;
    const query = new URLSearchParams({ what: "rtc", format: "json", participant: filter.text, start: String(since) });
    try {
      const rows = await apiJson(`/api/export?${query}`);
      if (turn !== searchTurn) return;
      filter.members = new Set(rows.map((row) => row.meeting));
      note.textContent = `Participant ${filter.text}: in ${filter.members.size} meeting(s) in the last 15 minutes of stored rows.`;
    } catch (error) {
      if (turn !== searchTurn) return;
      filter.members = new Set();
      note.textContent = `Participant search needs stored rows: ${error.message}`;
    }
    rebuild();
  }

  let debounce = 0;
  $("#search").addEventListener("input", (event) => {
    filter.text = event.target.value.trim();
    clearTimeout(debounce);
    if (filter.in === "meeting") rebuild();
    else debounce = setTimeout(findParticipant, 300);
  });
  $("#search-in").addEventListener("change", (event) => {
    filter.in = event.target.value;
    $("#search").placeholder = filter.in === "meeting" ? "meeting id" : "exact participant id";
    findParticipant();
    rebuild();
  });
  levelsBox.addEventListener("change", (event) => {
    const box = event.target;
    if (box.checked) filter.levels.add(box.value);
    else filter.levels.delete(box.value);
    rebuild();
  });
  $("#relay").addEventListener("change", (event) => {
    filter.relay = event.target.value;
    rebuild();
  });
  $("#has-alerts").addEventListener("change", (event) => {
    filter.alerts = event.target.checked;
    rebuild();
  });

  $("#search").value = filter.text;
  $("#search-in").value = filter.in;
  if (filter.in !== "meeting") $("#search").placeholder = "exact participant id";
  $("#relay").value = filter.relay;
  $("#has-alerts").checked = filter.alerts;
  summarize();
  alertCount();
  rebuild();
  if (saved.focused !== undefined) {
    const index = table.ids.indexOf(saved.focused);
    if (index >= 0) table.focus(index, true);
  }
  const costTimer = setInterval(loadEndedCost, 120_000);
  loadEndedCost();

  return {
    title: "Overview",
    table,
    exporter,
    update(topic, batch) {
      if (topic === "alerts") return alertCount();
      if (topic !== "meetings") return;
      summarize();
      rebuild(batch.full || batch.removed.size ? null : batch.changed);
    },
    destroy() {
      saved.sortKey = sortKey;
      saved.sortDesc = sortDesc;
      saved.focused = table.focusedId();
      clearInterval(costTimer);
      clearTimeout(debounce);
      table.destroy();
    },
  };
}

