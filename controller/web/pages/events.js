// Event log: the newest events, filtered by device and kind, followed live.

import { api } from "../api.js";
import { element, shortId, table, time } from "../format.js";

const FOLLOW_MS = 3000;
const SHOWN = 200;

export async function render(view, _params, page) {
  document.title = "Events · edgefleet";
  const deviceFilter = element("input", { id: "event-device", name: "device", placeholder: "any device", size: 18 });
  const kindFilter = element("input", { id: "event-kind", name: "kind", placeholder: "any kind", size: 18 });
  const holder = element("div", { id: "event-table" });
  let events = [];
  let lastId = null;

  const reload = async () => {
    events = [];
    lastId = null;
    await poll();
  };
  const poll = async () => {
    const parameters = {
      device_id: deviceFilter.value.trim() || null,
      kind: kindFilter.value.trim() || null,
      after_id: lastId,
      // Without after_id the API returns the newest `limit` events.
      limit: lastId === null ? SHOWN : 1000,
    };
    const result = await api.events(parameters);
    if (!page.isCurrent()) return;
    events = events.concat(result.events).slice(-SHOWN);
    lastId = result.last_id ?? lastId;
    holder.replaceChildren(eventTable(events));
  };

  const form = element("form", {
    class: "actions",
    "aria-label": "Filter events",
    onsubmit: async (event) => {
      event.preventDefault();
      try {
        await reload();
      } catch (error) {
        page.say(error.message, "error");
      }
    },
  },
  element("label", {}, "Device", deviceFilter),
  element("label", {}, "Kind", kindFilter),
  element("button", { type: "submit" }, "Filter"));

  view.append(element("h1", {}, "Events"), form,
    element("p", { class: "muted" }, `The newest ${SHOWN} events, newest first; new ones appear as they happen.`),
    holder);
  await page.every(FOLLOW_MS, poll);
}

function eventTable(events) {
  if (!events.length) return element("p", { class: "muted" }, "No events match.");
  return table({
    caption: `${events.length} events`,
    columns: ["#", "Time", "Kind", "Device", "From", "To", "Reason"],
    rows: events.slice().reverse().map((e) => [
      String(e.id),
      time(e.at),
      e.kind,
      e.device_id ? element("a", { href: `#/devices/${encodeURIComponent(e.device_id)}` }, e.device_id) : "",
      element("code", {}, shortId(e.from_variant)),
      element("code", {}, shortId(e.to_variant)),
      element("span", { class: "reason" }, e.reason),
    ]),
  });
}
