// HTTP services and routes: the `http` topic (one entity per service, method and route:
// requests, bytes in and out per second, status classes, p50/p95/p99 over the live window),
// in a sortable table, with an export of the stored minute rows.

import { VirtualTable } from "./table.js";
import * as f from "./format.js";
import { shared } from "./context.js";
import { exportControls } from "./exporting.js";

const NUMERIC = ["requests_per_s", "bytes_in_per_s", "bytes_out_per_s", "errors_per_s", "p50_ms", "p95_ms", "p99_ms"];

function errors(route) {
  const status = route.status_per_s;
  return Array.isArray(status) ? (status[3] || 0) + (status[4] || 0) : null;
}

export function mount(main) {
  const root = document.createElement("div");
  root.className = "http-view";
  root.innerHTML = `
    <h1>HTTP services and routes</h1>
    <div class="toolbar">
      <label for="service-filter">Service</label>
      <select id="service-filter"><option value="">every service</option></select>
      <span class="count" id="route-count" role="status"></span>
    </div>
    <div class="export-slot"></div>
    <div class="table-slot"></div>`;
  main.append(root);
  const $ = (selector) => root.querySelector(selector);
  const services = $("#service-filter");
  let service = "";
  let sortKey = "requests_per_s";
  let sortDesc = true;
  let topic = null;

  const table = new VirtualTable($(".table-slot"), {
    label: "HTTP routes",
    empty: "No HTTP route reported yet",
    onSort: (key) => {
      if (key === sortKey) sortDesc = !sortDesc;
      else {
        sortKey = key;
        sortDesc = NUMERIC.includes(key);
      }
      table.setSort(sortKey, sortDesc);
      rebuild();
    },
    columns: [
      { key: "service", label: "Service", width: "minmax(6rem, 1fr)", text: (r) => r.service ?? "—" },
      { key: "method", label: "Method", width: "5rem", text: (r) => r.method ?? "—" },
      { key: "route", label: "Route", width: "minmax(10rem, 2.5fr)", text: (r) => r.route ?? "—" },
      { key: "requests_per_s", label: "Requests", width: "7.5rem", align: "right", text: (r) => f.perS(r.requests_per_s) },
      { key: "bytes_in_per_s", label: "In", width: "6.5rem", align: "right", text: (r) => f.bytesPerS(r.bytes_in_per_s) },
      { key: "bytes_out_per_s", label: "Out", width: "6.5rem", align: "right", text: (r) => f.bytesPerS(r.bytes_out_per_s) },
      { key: "errors_per_s", label: "4xx+5xx", width: "6.5rem", align: "right", text: (r) => f.perS(errors(r)) },
      { key: "p50_ms", label: "p50", width: "5rem", align: "right", text: (r) => f.ms(r.p50_ms) },
      { key: "p95_ms", label: "p95", width: "5rem", align: "right", text: (r) => f.ms(r.p95_ms) },
      { key: "p99_ms", label: "p99", width: "5rem", align: "right", text: (r) => f.ms(r.p99_ms) },
    ],
  });
  table.setSort(sortKey, sortDesc);
  exportControls($(".export-slot"), {
    whats: [["http", "minute rows per route"]],
    params: () => (service ? { service } : {}),
  });

  function value(route, key) {
    return key === "errors_per_s" ? errors(route) : route[key];
  }

  function rebuild() {
    const state = topic ? topic.state : new Map();
    const known = new Set();
    const ids = [];
    for (const [id, route] of state) {
      known.add(route.service);
      if (!service || route.service === service) ids.push(id);
    }
    const sign = sortDesc ? -1 : 1;
    ids.sort((a, b) => {
      const x = value(state.get(a), sortKey);
      const y = value(state.get(b), sortKey);
      if (typeof x === "number" || typeof y === "number") {
        if (typeof x !== "number") return 1;
        if (typeof y !== "number") return -1;
        if (x !== y) return (x - y) * sign;
      } else if (x !== y && x != null && y != null) return (x < y ? -1 : 1) * sign;
      return a < b ? -1 : a > b ? 1 : 0;
    });
    const listed = new Set([...services.options].map((option) => option.value));
    for (const name of [...known].sort()) if (name && !listed.has(name)) services.add(new Option(name, name));
    table.setRows(ids, (id) => state.get(id));
    $("#route-count").textContent = `${ids.length} of ${state.size} routes`;
  }

  services.addEventListener("change", () => {
    service = services.value;
    rebuild();
  });
  topic = shared.live.subscribe("http", shared.deliver);
  rebuild();
  return {
    title: "HTTP routes",
    update(name) {
      if (name === "http") rebuild();
    },
    destroy() {
      shared.live.unsubscribe("http");
      table.destroy();
    },
  };
}
