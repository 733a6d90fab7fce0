// Numbers with their units, times, and the quality level badges: each level has a text, a
// shape (CSS, from data-level) and a colour of the Okabe–Ito palette, so it never rests on
// colour alone. Pure functions: no DOM but `badge`, which makes one element.

export const LEVELS = ["excellent", "good", "fair", "poor", "bad", "unknown"];

const missing = "—";

const num = (value) => typeof value === "number" && Number.isFinite(value);

/** 3 significant digits with an SI prefix: 1530000 → "1.53 M". */
function si(value, unit) {
  if (!num(value)) return missing;
  const abs = Math.abs(value);
  const [div, prefix] =
    abs >= 1e9 ? [1e9, "G"] : abs >= 1e6 ? [1e6, "M"] : abs >= 1e3 ? [1e3, "k"] : [1, ""];
  const scaled = value / div;
  const digits = Math.abs(scaled) >= 100 || div === 1 ? 0 : Math.abs(scaled) >= 10 ? 1 : 2;
  return `${scaled.toFixed(digits)} ${prefix}${unit}`;
}

export const bps = (value) => si(value, "bit/s");
export const rate = (value) => si(value, "").trimEnd(); // "28.0 k", "1.31 M": a column in bit/s
export const bytesPerS = (value) => si(value, "B/s");
export const perS = (value) => (num(value) ? `${fixed(value, value < 10 ? 2 : 1)}/s` : missing);
const grouped = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });
export const count = (value) => (num(value) ? grouped.format(value) : missing);
export const pct = (value, digits = 1) => (num(value) ? `${value.toFixed(digits)} %` : missing);
export const share = (value) => (num(value) ? `${Math.round(value * 100)} %` : missing);
export const ms = (value) => (num(value) ? `${fixed(value, value < 10 ? 1 : 0)} ms` : missing);
export const mos = (value) => (num(value) ? value.toFixed(2) : missing);
export const score = (value) => (num(value) ? String(Math.round(value)) : missing);
export const money = (value) => (num(value) ? value.toFixed(value < 10 ? 4 : 2) : missing);

function fixed(value, digits) {
  return value.toFixed(digits).replace(/\.0+$/, "");
}

const two = (n) => (n < 10 ? `0${n}` : String(n));

/** "12:04:05" (local time) of a time in s since the Unix epoch. */
export function clock(seconds) {
  if (!num(seconds)) return missing;
  const date = new Date(seconds * 1000);
  return `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
}

export function levelOf(value) {
  return LEVELS.includes(value) ? value : "unknown";
}

/** A quality badge: the level's name as text, its shape and colour from CSS (data-level). */
export function badge(level, doc = document) {
  const element = doc.createElement("span");
  setBadge(element, level);
  return element;
}

export function setBadge(element, level) {
  const name = levelOf(level);
  if (element.dataset.level === name) return;
  element.className = "badge";
  element.dataset.level = name;
  element.textContent = name;
}

/** The path of a participant: "direct" or "TURN udp" / "TURN tcp" / "TURN tls". */
export function path(relay) {
  if (typeof relay !== "string") return missing;
  return relay.startsWith("turn-") ? `TURN ${relay.slice(5)}` : relay;
}
