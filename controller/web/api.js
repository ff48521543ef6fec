// Calls to the controller's HTTP API under /api/v1. Errors carry the API's message, which
// names the rejected value and the fix, so the pages show it as it is.
//
// Every call sends the API token as a bearer token. The token lives in sessionStorage,
// so it is gone when the tab closes and other tabs and sites cannot read it.

const BASE = "/api/v1";
const TOKEN_KEY = "edgefleet.apiToken";

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token.trim());
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function request(method, path, body) {
  const options = { method, headers: { Accept: "application/json" } };
  const token = getToken();
  if (token) options.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(BASE + path, options);
  } catch (error) {
    throw new ApiError(0, "unreachable", `no response from the controller (${error.message})`);
  }
  const payload = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = payload?.error ?? {};
    throw new ApiError(
      response.status,
      detail.code ?? "http_error",
      detail.message ?? `${method} ${path} failed with HTTP ${response.status}`,
    );
  }
  return payload;
}

const encode = encodeURIComponent;

function query(parameters) {
  const pairs = Object.entries(parameters).filter(([, value]) => value !== null && value !== undefined);
  return pairs.length ? `?${new URLSearchParams(pairs)}` : "";
}

export const api = {
  devices: () => request("GET", "/devices"),
  device: (id) => request("GET", `/devices/${encode(id)}`),
  telemetry: (id, parameters) => request("GET", `/devices/${encode(id)}/telemetry${query(parameters)}`),
  ladder: (id) => request("GET", `/devices/${encode(id)}/ladder`),
  deviceDeployments: (id) => request("GET", `/devices/${encode(id)}/deployments`),
  deploy: (id, variantId, reason) =>
    request("POST", `/devices/${encode(id)}/deployments`, { variant_id: variantId, reason }),
  pin: (id, reason) => request("PUT", `/devices/${encode(id)}/pin`, { reason }),
  unpin: (id) => request("DELETE", `/devices/${encode(id)}/pin`),
  models: () => request("GET", "/models"),
  variants: (modelId) => request("GET", `/models/${encode(modelId)}/variants`),
  rollouts: () => request("GET", "/rollouts"),
  rolloutAction: (id, action) => request("POST", `/rollouts/${encode(id)}/${action}`),
  events: (parameters) => request("GET", `/events${query(parameters)}`),
};
