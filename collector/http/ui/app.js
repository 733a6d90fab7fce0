// The dashboard's entry: the live connection, the token form, the reconnect banner and a hash
// router (#/ overview, #/meeting/<id>, #/alerts, #/http). Each view module exports
// `mount(main, params)` returning `{ update(topic, batch), destroy() }`.

import { Live } from "./live.js";
import { api, checkToken, onRefused, setToken, token } from "./api.js";
import { addToFeed, shared } from "./context.js";
import { normalizeAlert } from "./alerts.js";

const main = document.getElementById("main");
const banner = document.getElementById("banner");
const connection = document.getElementById("connection");
const dialog = document.getElementById("login");
const form = document.getElementById("login-form");
const input = document.getElementById("login-token");
const loginError = document.getElementById("login-error");
const loginWhy = document.getElementById("login-why");

const VIEWS = {
  overview: () => import("./overview.js"),
  meeting: () => import("./meeting.js"),
  alerts: () => import("./alerts.js"),
  http: () => import("./http.js"),
};

let view = null;
let routing = 0;

function route() {
  const hash = location.hash || "#/";
  if (!hash.startsWith("#/")) return null;
  const parts = hash.slice(2).split("/");
  if (parts[0] === "meeting" && parts.length > 1) {
    const raw = parts.slice(1).join("/");
    let id = raw;
    try {
      id = decodeURIComponent(raw);
    } catch {
      // a malformed escape: the id as written
    }
    return { name: "meeting", params: { id } };
  }
  if (parts[0] === "alerts") return { name: "alerts", params: {} };
  if (parts[0] === "http") return { name: "http", params: {} };
  return { name: "overview", params: {} };
}

async function navigate() {
  const next = route();
  if (!next) return;
  const turn = ++routing;
  const module = await VIEWS[next.name]();
  if (turn !== routing) return;
  view?.destroy();
  main.replaceChildren();
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    if (link.dataset.view === next.name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const first = view === null;
  view = module.mount(main, next.params);
  document.title = `${view.title || "bwmon"} · bwmon`;
  if (!first && !dialog.open) main.focus({ preventScroll: true }); // where the new view begins
}

/** Topic batches go to the view that shows; the alerts feed is kept whatever shows. */
function deliver(batch, topic) {
  if (topic.name === "alerts" && batch.alerts.length) addToFeed(batch.alerts.map(normalizeAlert));
  view?.update(topic.name, batch, topic);
}

function showStatus({ live, age, message }) {
  connection.textContent = live ? "live" : "offline";
  connection.dataset.live = String(live);
  if (live) {
    banner.hidden = true;
    return;
  }
  const seconds = Math.round(age);
  if (dialog.open) message = "Waiting for a read token…";
  banner.textContent = message || (shared.everLive
    ? `Reconnecting… data is ${seconds} s old`
    : "Connecting to the daemon…");
  banner.hidden = false;
}

function askForToken(reason) {
  setToken("");
  loginWhy.textContent = "This daemon requires an access token with the read right.";
  if (reason && shared.triedToken) {
    loginError.textContent = `Refused: ${reason}`;
    loginError.hidden = false;
  }
  if (!dialog.open) dialog.showModal();
  input.focus();
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const value = input.value.trim();
  if (!value) return;
  shared.triedToken = true;
  const refusal = await checkToken(value);
  if (refusal !== null) {
    loginError.textContent = `Refused: ${refusal}`;
    loginError.hidden = false;
    input.select();
    return;
  }
  setToken(value);
  input.value = "";
  loginError.hidden = true;
  dialog.close();
  shared.live.authenticate();
  loadRecentAlerts();
  navigate();
});
dialog.addEventListener("cancel", (event) => event.preventDefault());

document.getElementById("skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});

onRefused((reason) => askForToken(reason));
shared.triedToken = Boolean(token());
shared.live = new Live({
  token,
  onStatus: (status) => {
    if (status.live) shared.everLive = true;
    showStatus(status);
  },
  onRefused: (reason) => askForToken(reason),
});
shared.live.subscribe("meetings", deliver);
shared.live.subscribe("alerts", deliver);
shared.deliver = deliver;

addEventListener("hashchange", navigate);
navigate();

/** Recent alerts (stored) for the feed; live ones come from the alerts topic. */
export async function loadRecentAlerts() {
  try {
    const response = await api("/api/alerts?limit=200");
    if (!response.ok) return;
    const body = await response.json();
    const events = [];
    for (const row of [...body.recent, ...body.open]) {
      events.push(normalizeAlert({ ...row, state: "raised", at: row.raised_at }));
      if (row.cleared_at !== null && row.cleared_at !== undefined) {
        events.push(normalizeAlert({ ...row, state: "cleared", at: row.cleared_at }));
      }
    }
    events.sort((a, b) => a.at - b.at);
    addToFeed(events);
  } catch {
    // the feed fills from the live topic all the same
  }
}

loadRecentAlerts();
