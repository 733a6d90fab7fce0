// Export buttons: download what /api/export streams (CSV or JSON) for the view's filter and a
// time range, with the token (a fetch, then a file), under the daemon's file name.

import { download } from "./api.js";

const RANGES = [
  ["3600", "last hour"],
  ["86400", "last 24 hours"],
  ["604800", "last 7 days"],
  ["", "everything stored"],
];

/**
 * whats: [[what, label]] (a select when more than one); params(what): the view's filter as
 * /api/export parameters (meeting, participant, service).
 */
export function exportControls(host, { whats, params }) {
  const box = document.createElement("div");
  box.className = "export";
  box.setAttribute("role", "group");
  box.setAttribute("aria-label", "Export stored rows");
  const title = document.createElement("span");
  title.textContent = "Export";
  box.append(title);

  const what = document.createElement("select");
  what.setAttribute("aria-label", "What to export");
  for (const [value, label] of whats) what.add(new Option(label, value));
  if (whats.length > 1) box.append(what);

  const range = document.createElement("select");
  range.setAttribute("aria-label", "Time range");
  for (const [value, label] of RANGES) range.add(new Option(label, value));
  box.append(range);

  const status = document.createElement("span");
  status.className = "note";
  status.setAttribute("role", "status");
  for (const format of ["csv", "json"]) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.format = format;
    button.textContent = `Export ${format.toUpperCase()}`;
    box.append(button);
  }
  box.append(status);
  host.append(box);

  /** The /api/export URL the buttons fetch now. */
  function url(format) {
    const query = new URLSearchParams({ what: what.value, format });
    if (range.value) query.set("start", String(Math.floor(Date.now() / 1000) - Number(range.value)));
    for (const [key, value] of Object.entries(params(what.value))) query.set(key, value);
    return `/api/export?${query}`;
  }

  box.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-format]");
    if (!button) return;
    button.disabled = true;
    status.textContent = "Exporting…";
    try {
      const name = await download(url(button.dataset.format));
      status.textContent = `Downloaded ${name}`;
    } catch (error) {
      status.textContent = `Export failed: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  });
  return { url };
}
