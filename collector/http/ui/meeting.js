// A meeting's page: its summary, its participants (the `meeting:<id>` topic: bitrates up and
// down per kind, loss, jitter, RTT, MOS, quality with its reasons, the path), and its charts
// (charts.js, loaded when the page mounts; the page works without it).
//
// Bitrates per kind are computed here: a participant's bitrate up (down) split between audio
// and video as its streams' bytes sent (received) were at their last change.

import * as f from "./format.js";
import { topicState, shared } from "./context.js";
import { api } from "./api.js";
import { exportControls } from "./exporting.js";

const COLUMNS = [
  ["Participant", ""],
  ["Quality", ""],
  ["Score", "num"],
  ["MOS", "num"],
  ["Up", "num"],
  ["Down", "num"],
  ["Audio ↑/↓ bit/s", "num"],
  ["Video ↑/↓ bit/s", "num"],
  ["Loss ↓/↑ %", "num"],
  ["Jitter", "num"],
  ["RTT", "num"],
  ["Path", ""],
  ["Reasons", ""],
];

const fixed = (value) => (typeof value === "number" ? value.toFixed(1) : "—");

export function mount(main, { id }) {
  const topicName = `meeting:${id}`;
  const root = document.createElement("div");
  root.className = "meeting-view";
  root.innerHTML = `
    <p class="crumbs"><a href="#/">← Meetings</a></p>
    <h1><span class="visually-hidden">Meeting </span><span id="meeting-id"></span> <span id="meeting-badge"></span></h1>
    <dl class="facts" id="facts"></dl>
    <section aria-labelledby="people-title">
      <h2 id="people-title">Participants <span class="count" id="people-count"></span></h2>
      <div class="scroll-x">
        <table class="plain participants">
          <thead><tr></tr></thead>
          <tbody id="people"></tbody>
        </table>
      </div>
      <p class="note" id="people-empty">No participant is live in this meeting (yet).</p>
    </section>
    <section class="charts" aria-labelledby="charts-title">
      <h2 id="charts-title">Over time</h2>
      <div class="charts-slot"></div>
    </section>
    <div class="export-slot"></div>`;
  main.append(root);
  const $ = (selector) => root.querySelector(selector);
  $("#meeting-id").textContent = id;
  const head = $("thead tr");
  for (const [label, className] of COLUMNS) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = label;
    if (className) th.className = className;
    head.append(th);
  }
  exportControls($(".export-slot"), {
    whats: [["rtc", "this meeting's minute rows"], ["alerts", "this meeting's alerts"]],
    params: () => ({ meeting: id }),
  });

  const rows = new Map(); // participant id → <tr>
  const previous = new Map(); // stream id → its last byte counters
  const mix = new Map(); // stream id → bytes of its last change: [audio ↑, audio ↓, video ↑, video ↓]

  /** Each changed stream's bytes since its last change (at first, since its boot began). */
  function streamMix(state, changed) {
    for (const streamId of changed) {
      const stream = state.get(streamId);
      if (!stream || stream.kind !== "stream" || !Array.isArray(stream.bytes)) continue;
      const last = previous.get(streamId);
      const now = stream.bytes.slice(0, 4);
      const step = last ? now.map((value, k) => Math.max(0, value - last[k])) : now;
      if (step.some((value) => value > 0)) mix.set(streamId, step);
      previous.set(streamId, now);
    }
  }

  /** The participant's bitrates per kind: its total up and down split as its streams' bytes
   * of audio and video were at their last change ([audio ↑, audio ↓, video ↑, video ↓]). */
  function kindRates(state, participant, p) {
    const sum = [0, 0, 0, 0];
    let seen = false;
    for (const [streamId, stream] of state) {
      if (stream.kind !== "stream" || stream.participant !== participant) continue;
      const step = mix.get(streamId);
      if (!step) continue;
      seen = true;
      for (let k = 0; k < 4; k++) sum[k] += step[k];
    }
    if (!seen) return null;
    const split = (total, audio, video) =>
      typeof total === "number" && audio + video > 0 ? [(total * audio) / (audio + video), (total * video) / (audio + video)] : [null, null];
    const [audioUp, videoUp] = split(p.up_bps, sum[0], sum[2]);
    const [audioDown, videoDown] = split(p.down_bps, sum[1], sum[3]);
    return [audioUp, audioDown, videoUp, videoDown];
  }

  function fill(row, pid, p, state) {
    const r = kindRates(state, pid, p);
    const texts = [
      pid,
      null,
      f.score(p.quality),
      f.mos(p.mos),
      f.bps(p.up_bps),
      f.bps(p.down_bps),
      r ? `${f.rate(r[0])} / ${f.rate(r[1])}` : "—",
      r ? `${f.rate(r[2])} / ${f.rate(r[3])}` : "—",
      `${fixed(p.loss_down_pct)} / ${fixed(p.loss_up_pct)}`,
      f.ms(p.jitter_ms),
      f.ms(p.rtt_ms),
      f.path(p.relay),
      Array.isArray(p.reasons) && p.reasons.length ? p.reasons.join(", ") : "none",
    ];
    const cells = row.children;
    const server = p.turn_server ? `TURN server ${p.turn_server}` : "";
    if (cells[11].title !== server) cells[11].title = server;
    for (let c = 0; c < texts.length; c++) {
      if (c === 1) f.setBadge(cells[c].firstChild, p.level);
      else if (cells[c].textContent !== texts[c]) cells[c].textContent = texts[c];
    }
  }

  function render(topic, batch) {
    const state = topic.state;
    if (batch) {
      if (batch.full) {
        previous.clear();
        mix.clear();
      }
      for (const gone of batch.removed) {
        previous.delete(gone);
        mix.delete(gone);
      }
      streamMix(state, batch.full ? state.keys() : batch.changed);
    }
    const people = [];
    for (const [pid, p] of state) if (p.kind === "participant") people.push(pid);
    people.sort();
    const body = $("#people");
    for (const [pid, row] of rows) {
      if (!state.has(pid)) {
        row.remove();
        rows.delete(pid);
      }
    }
    people.forEach((pid, index) => {
      let row = rows.get(pid);
      if (!row) {
        row = document.createElement("tr");
        COLUMNS.forEach(([, className], c) => {
          const cell = document.createElement(c === 0 ? "th" : "td");
          if (c === 0) cell.scope = "row";
          if (className) cell.className = className;
          if (c === 1) cell.append(f.badge("unknown"));
          row.append(cell);
        });
        rows.set(pid, row);
      }
      if (body.children[index] !== row) body.insertBefore(row, body.children[index] || null);
      fill(row, pid, state.get(pid), state);
    });
    $("#people-count").textContent = `(${people.length})`;
    $("#people-empty").hidden = people.length > 0;
  }

  function renderSummary() {
    const m = topicState("meetings").get(id);
    f.setBadge($("#meeting-badge").firstChild || $("#meeting-badge").appendChild(f.badge("unknown")), m?.level);
    const facts = m
      ? [
          ["Participants", f.count(m.participants)],
          ["Score", f.score(m.quality)],
          ["Up", f.bps(m.up_bps)],
          ["Down", f.bps(m.down_bps)],
          ["Relayed", f.share(m.relay_share)],
          ["Relay cost", f.money(m.relay_cost)],
          ["Open alerts", f.count(m.alerts)],
          ["Started", f.clock(m.started_at)],
        ]
      : [["State", "not live"]];
    const list = $("#facts");
    list.replaceChildren(
      ...facts.flatMap(([term, value]) => {
        const dt = document.createElement("dt");
        dt.textContent = term;
        const dd = document.createElement("dd");
        dd.textContent = value;
        return [dt, dd];
      }),
    );
  }

  const topic = shared.live.subscribe(topicName, shared.deliver);
  render(topic, null);
  renderSummary();

  let charts = null;
  let gone = false;
  const slot = $(".charts-slot");
  (async () => {
    try {
      const { mountCharts } = await import("./charts.js");
      if (gone) return;
      charts = mountCharts(slot, { meeting: id, api });
    } catch (error) {
      const note = document.createElement("p");
      note.className = "note";
      note.textContent = "Charts unavailable.";
      slot.replaceChildren(note);
    }
  })();

  return {
    title: `Meeting ${id}`,
    update(name, batch, live) {
      if (name === topicName) render(live, batch);
      else if (name === "meetings" && (batch.full || batch.changed.has(id) || batch.removed.has(id))) renderSummary();
    },
    destroy() {
      gone = true;
      shared.live.unsubscribe(topicName);
      try {
        charts?.destroy();
      } catch {
        // the charts' own failure must not keep the page from leaving
      }
    },
  };
}
