// Fleet overview: counts, then one table per device profile, refreshed every 5 s.

import { api } from "../api.js";
import { ago, budgetBadge, element, millis, number, shortId, stateBadge, table } from "../format.js";

const REFRESH_MS = 5000;

export async function render(view, _params, page) {
  document.title = "Fleet · edgefleet";
  const summary = element("ul", { class: "tiles", "aria-label": "Fleet summary" });
  const profiles = element("div", { id: "profiles" });
  view.append(element("h1", {}, "Fleet"), summary, profiles);

  await page.every(REFRESH_MS, async () => {
    const { devices } = await api.devices();
    summary.replaceChildren(...tiles(devices));
    profiles.replaceChildren(...profileTables(devices));
  });
}

function tiles(devices) {
  const count = (predicate) => devices.filter(predicate).length;
  const entries = [
    ["devices", devices.length, "total"],
    ["online", count((d) => d.online), "online"],
    ["offline", count((d) => !d.online), "offline"],
    ["within-budget", count((d) => d.within_budget === true), "within budget"],
    ["over-budget", count((d) => d.within_budget === false), "over budget"],
    ["no-data", count((d) => d.within_budget === null), "no telemetry"],
  ];
  return entries.map(([key, value, label]) =>
    element("li", { "data-tile": key },
      element("span", { class: "value" }, value),
      element("span", { class: "label" }, label)));
}

function profileTables(devices) {
  if (!devices.length) {
    return [element("p", { class: "muted" },
      "No device has registered yet. Start an agent with ",
      element("code", {}, "edgefleet agent run --controller HOST:PORT ..."), ".")];
  }
  const byProfile = new Map();
  for (const device of devices) {
    if (!byProfile.has(device.profile_name)) byProfile.set(device.profile_name, []);
    byProfile.get(device.profile_name).push(device);
  }
  return [...byProfile.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([name, members]) => {
    const first = members[0];
    const caption = `${name}: p95 budget ${millis(first.latency_budget_ms)} ms, ` +
      `model memory budget ${number(first.model_memory_budget_mb, 0)} MB, ${members.length} device(s)`;
    return table({
      caption,
      className: "devices",
      columns: ["Device", "State", "Budget", "Variant", "p95 (ms)", "CPU", "Memory free", "Temp.", "Last seen"],
      rows: members.map((device) => deviceRow(device)),
    });
  });
}

function deviceRow(device) {
  const sample = device.last_telemetry;
  const pinned = device.pinned ? element("span", { class: "badge badge-warn" }, "pinned") : null;
  const moving = device.desired_variant_id && device.desired_variant_id !== device.current_variant_id
    ? element("span", { class: "muted" }, ` → ${shortId(device.desired_variant_id)}`)
    : null;
  return [
    element("a", { href: `#/devices/${encodeURIComponent(device.device_id)}` }, device.device_id),
    stateBadge(device.online),
    budgetBadge(device.within_budget),
    element("span", {}, element("code", {}, shortId(device.current_variant_id)), moving, " ", pinned),
    // A sample that served no request carries no latency.
    `${sample && sample.requests > 0 ? millis(sample.latency_p95_ms) : "n/a"} / ${millis(device.latency_budget_ms)}`,
    sample ? `${number(sample.cpu_percent, 0)}%` : "n/a",
    sample ? `${number(sample.memory_available_mb, 0)} MB` : "n/a",
    sample && sample.temperature_c !== null ? `${number(sample.temperature_c, 1)} °C` : "n/a",
    ago(device.last_seen),
  ];
}
