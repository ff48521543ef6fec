// The dashboard shell: a hash router over the pages, the notice line and page timers.
// Every page is a module whose `render(view, params, page)` fills `view`, and `page.every`
// registers a refresh that stops when the operator navigates away.

import * as fleet from "./pages/fleet.js";
import * as device from "./pages/device.js";
import * as models from "./pages/models.js";
import * as rollouts from "./pages/rollouts.js";
import * as events from "./pages/events.js";

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
          say(error.message, "error");
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
  try {
    await match.r.module.render(view, match.m.groups ?? {}, page);
    markRefreshed();
  } catch (error) {
    say(error.message, "error");
  }
}

window.addEventListener("hashchange", route);
route();
