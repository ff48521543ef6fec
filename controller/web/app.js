// The dashboard shell: a hash router over the pages, the notice line, page timers and the
// API token. Every page is a module whose `render(view, params, page)` fills `view`, and
// `page.every` registers a refresh that stops when the operator navigates away.
//
// A token arrives once in the URL fragment (`/#token=...`, as `edgefleet demo` prints it),
// moves to sessionStorage and leaves the address bar and history. Fragments are never
// sent to the server, so the token appears in no access log. Without a valid token the
// page shows a form to paste one.

import * as fleet from "./pages/fleet.js";
import * as device from "./pages/device.js";
import * as models from "./pages/models.js";
import * as rollouts from "./pages/rollouts.js";
import * as events from "./pages/events.js";
import { clearToken, getToken, setToken } from "./api.js";
import { element } from "./format.js";

const CREATE_COMMAND = "edgefleet controller api-token create NAME --role operator";
const TOKEN_FRAGMENT = /^#token=([^&]+)/;

const ROUTES = [
  { pattern: /^\/?$/, module: fleet, nav: "fleet" },
  { pattern: /^\/devices\/(?<deviceId>[^/]+)$/, module: device, nav: "fleet" },
  { pattern: /^\/models(?:\/(?<modelId>[^/]+))?$/, module: models, nav: "models" },
  { pattern: /^\/rollouts$/, module: rollouts, nav: "rollouts" },
  { pattern: /^\/events$/, module: events, nav: "events" },
];

const view = document.getElementById("view");
const notice = document.getElementById("notice");
const refreshed = document.getElementById("refreshed");
let timers = [];
let generation = 0;

export function say(message, tone = "info") {
  notice.textContent = message;
  notice.className = `notice ${tone}`;
}

function clearNotice() {
  notice.textContent = "";
  notice.className = "notice";
}

function stopTimers() {
  for (const timer of timers) clearInterval(timer);
  timers = [];
}

function markRefreshed() {
  refreshed.textContent = `updated ${new Date().toLocaleTimeString([], { hour12: false })}`;
}

async function route() {
  stopTimers();
  clearNotice();
  generation += 1;
  const current = generation;
  const path = decodeURIComponent(location.hash.replace(/^#/, "")).split("?")[0];
  const match = ROUTES.map((r) => ({ r, m: r.pattern.exec(path) })).find(({ m }) => m);
  for (const link of document.querySelectorAll("nav a")) {
    link.toggleAttribute("aria-current", false);
    if (match && link.dataset.route === match.r.nav) link.setAttribute("aria-current", "page");
  }
  if (!match) {
    view.replaceChildren();
    view.append(Object.assign(document.createElement("h1"), { textContent: "Page not found" }));
    say(`No dashboard page at ${path}; use the links above.`, "error");
    return;
  }

  const page = {
    // Run `task` now and then every `intervalMs`, until the next navigation.
    every(intervalMs, task) {
      const run = async () => {
        if (current !== generation) return;
        try {
          await task();
          markRefreshed();
        } catch (error) {
          if (!handleUnauthorized(error)) say(error.message, "error");
        }
      };
      timers.push(setInterval(run, intervalMs));
      return run();
    },
    isCurrent: () => current === generation,
    say,
  };
  view.replaceChildren();
  document.title = "edgefleet";
  if (!getToken()) {
    showLogin("Paste an API token to see the fleet.");
    return;
  }
  try {
    await match.r.module.render(view, match.m.groups ?? {}, page);
    markRefreshed();
  } catch (error) {
    if (!handleUnauthorized(error)) say(error.message, "error");
  }
}

// Show the token form when the API rejected the token (401); return whether it did.
function handleUnauthorized(error) {
  if (error.status !== 401) return false;
  clearToken();
  showLogin(error.message);
  return true;
}

function showLogin(message) {
  stopTimers();
  generation += 1;
  const input = element("input", {
    id: "token-input", name: "token", type: "password", autocomplete: "off", size: 60, required: true,
  });
  const form = element("form", {
    class: "actions login",
    "aria-label": "Sign in with an API token",
    onsubmit: (event) => {
      event.preventDefault();
      // A header value must be printable ASCII, or fetch fails before sending anything.
      if (!/^[\x21-\x7e]+$/.test(input.value.trim())) {
        say("Invalid token: paste the single line that the command printed.", "error");
        return;
      }
      setToken(input.value);
      route();
    },
  },
  element("label", {}, "API token", input),
  element("button", { type: "submit" }, "Use token"));
  view.replaceChildren(
    element("h1", {}, "API token needed"),
    element("p", {}, "Create a token on the controller host and paste it here:"),
    element("pre", {}, element("code", {}, CREATE_COMMAND)),
    element("p", { class: "muted" },
      "A token created with --role read can view the fleet but not deploy, pin or drive rollouts. " +
      "The token stays in this browser tab until it closes."),
    form);
  document.title = "API token · edgefleet";
  say(message, "error");
  input.focus();
}

// Move a token given as `#token=...` into sessionStorage and out of the address bar.
function takeTokenFromFragment() {
  const match = TOKEN_FRAGMENT.exec(location.hash);
  if (!match) return;
  setToken(decodeURIComponent(match[1]));
  history.replaceState(null, "", `${location.pathname}${location.search}#/`);
}

takeTokenFromFragment();
window.addEventListener("hashchange", () => {
  takeTokenFromFragment();
  route();
});
route();
