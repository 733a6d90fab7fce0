// The HTTP side of the page: fetch with the read token (Authorization: Bearer), errors as
// ApiError, and the token itself (sessionStorage: gone with the tab). A 401 or 403 calls the
// handler set by `onRefused` (the page asks for a token again).

const KEY = "bwmon.token";
let refused = () => {};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function token() {
  try {
    return sessionStorage.getItem(KEY) || "";
  } catch {
    return "";
  }
}

export function setToken(value) {
  try {
    if (value) sessionStorage.setItem(KEY, value);
    else sessionStorage.removeItem(KEY);
  } catch {
    // storage disabled: the token lives as long as nothing asks for it again
  }
}

export function onRefused(handler) {
  refused = handler;
}

function withToken(init = {}, value = token()) {
  const headers = new Headers(init.headers || {});
  if (value) headers.set("authorization", `Bearer ${value}`);
  return { ...init, headers };
}

/** fetch(path) with the token; a Response whatever its status (refusals also reported). */
export async function api(path, init) {
  const response = await fetch(path, withToken(init));
  if (response.status === 401 || response.status === 403) {
    refused(await errorOf(response.clone()), response.status);
  }
  return response;
}

/** What an error answer says ({"error": …}), else its status line. */
export async function errorOf(response) {
  try {
    const body = await response.json();
    if (body && typeof body.error === "string") return body.error;
  } catch {
    // not JSON
  }
  return `${response.status} ${response.statusText}`.trim();
}

/** The JSON of a 2xx answer; ApiError otherwise. */
export async function apiJson(path, init) {
  const response = await api(path, init);
  if (!response.ok) throw new ApiError(response.status, await errorOf(response));
  return response.json();
}

/** Check a token without keeping it: null when it reads everything, else why not. */
export async function checkToken(value) {
  const response = await fetch("/api/quality", withToken({}, value));
  if (response.ok) return null;
  return await errorOf(response);
}

/** Download what `path` answers (an /api/export) as a file, under the name the daemon gives. */
export async function download(path) {
  const response = await api(path);
  if (!response.ok) throw new ApiError(response.status, await errorOf(response));
  const disposition = response.headers.get("content-disposition") || "";
  const name = /filename="([^"]+)"/.exec(disposition)?.[1] || "bwmon-export";
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
  return name;
}
