// Device page: facts, deploy and pin actions, telemetry charts with the controller's
// events marked on them, the ladder, deployments and events of the device.

import { api } from "../api.js";
import { timeSeriesChart } from "../charts.js";
import {
  ago, budgetBadge, bytes, element, millis, number, percent, scrolling, shortId, stateBadge, table, time,
} from "../format.js";

const REFRESH_MS = 5000;
// Time windows: raw samples for short ones, SQL-side buckets for long ones.
const WINDOWS = [
  { label: "last 10 minutes", seconds: 600, step: null },
  { label: "last hour", seconds: 3600, step: 5 },
  { label: "last 6 hours", seconds: 6 * 3600, step: 30 },
  { label: "last 24 hours", seconds: 24 * 3600, step: 120 },
];
// Event kinds drawn on the charts. The others appear only in the event table.
const MARKED_EVENTS = new Set([
  "deployed", "deploy_failed", "rolled_back", "stepped_down", "stepped_up", "recompressed",
  "alert", "rollout_revert",
]);

export async function render(view, { deviceId }, page) {
  document.title = `${deviceId} · edgefleet`;
  const state = { window: WINDOWS[0] };
  const header = element("div", { class: "panel", id: "device-facts" });
  const actions = element("div", { class: "panel", id: "device-actions" });
  const charts = element("div", { class: "charts", id: "charts" });
  const ladder = element("div", { id: "ladder" });
  const deployments = element("div", { id: "deployments" });
  const events = element("div", { id: "device-events" });

  let refresh = async () => {};
  const windowSelect = element("select", {
    id: "window",
    onchange: async () => {
      state.window = WINDOWS[windowSelect.value];
      try {
        await refresh();
      } catch (error) {
        page.say(error.message, "error");
      }
    },
  }, WINDOWS.map((w, index) => element("option", { value: index }, w.label)));

  view.append(
    element("p", {}, element("a", { href: "#/" }, "← Fleet")),
    element("h1", {}, `Device ${deviceId}`),
    header,
    actions,
    element("h2", { id: "telemetry-heading" }, "Telemetry"),
    element("div", { class: "actions" }, element("label", {}, "Time window", windowSelect)),
    legend(),
    charts,
    element("h2", {}, "Ladder"),
    ladder,
    element("h2", {}, "Deployments"),
    deployments,
    element("h2", {}, "Events"),
    events,
  );

  refresh = async () => {
    const since = new Date(Date.now() - state.window.seconds * 1000).toISOString();
    const [device, history, eventList, ladderDoc, deploymentList] = await Promise.all([
      api.device(deviceId),
      api.telemetry(deviceId, { since, step: state.window.step, limit: 5000 }),
      api.events({ device_id: deviceId, since, limit: 1000 }),
      api.ladder(deviceId),
      api.deviceDeployments(deviceId),
    ]);
    if (!page.isCurrent()) return;
    header.replaceChildren(...facts(device));
    if (!actions.childElementCount || actions.dataset.variant !== String(device.desired_variant_id)
        || actions.dataset.pinned !== String(device.pinned) || actions.dataset.rungs !== String(ladderDoc.ladder.length)) {
      actions.replaceChildren(...actionForms(device, ladderDoc.ladder, page, refresh));
      actions.dataset.variant = String(device.desired_variant_id);
      actions.dataset.pinned = String(device.pinned);
      actions.dataset.rungs = String(ladderDoc.ladder.length);
    }
    charts.replaceChildren(...telemetryCharts(device, history, eventList.events, state.window.seconds));
    ladder.replaceChildren(ladderTable(device, ladderDoc.ladder));
    deployments.replaceChildren(deploymentTable(deploymentList.deployments));
    events.replaceChildren(eventTable(eventList.events));
  };
  await page.every(REFRESH_MS, refresh);
}

function facts(device) {
  const entry = (label, ...value) => element("div", {}, element("dt", {}, label), element("dd", {}, ...value));
  const sample = device.last_telemetry;
  return [
    element("dl", { class: "facts" },
      entry("State", stateBadge(device.online)),
      entry("Budget", budgetBadge(device.within_budget)),
      entry("Profile", device.profile_name),
      entry("p95 budget", `${millis(device.latency_budget_ms)} ms`),
      entry("Memory budget", `${number(device.model_memory_budget_mb, 0)} MB`),
      entry("Serving", element("code", {}, shortId(device.current_variant_id))),
      entry("Target", element("code", {}, shortId(device.desired_variant_id))),
      entry("Pinned", device.pinned ? "yes" : "no"),
      entry("Latest p95", sample && sample.requests > 0 ? `${millis(sample.latency_p95_ms)} ms` : "no requests served"),
      entry("Latency scale", device.latency_scale === null ? "not measured" : number(device.latency_scale, 3)),
      entry("Agent", device.agent_version || "unknown"),
      entry("Last seen", ago(device.last_seen)),
    ),
  ];
}

function actionForms(device, ladder, page, refresh) {
  const select = element("select", { id: "deploy-variant", name: "variant" },
    ladder.map((rung) => element("option", {
      value: rung.variant_id,
      selected: rung.variant_id === device.desired_variant_id,
    }, `rung ${rung.ladder_rank}: ${shortId(rung.variant_id)}, accuracy ${percent(rung.accuracy)}, ` +
       `p95 ${millis(rung.latency_p95_ms)} ms`)));
  const reason = element("input", { id: "deploy-reason", name: "reason", value: "deployed from the dashboard", size: 28 });
  const deploy = element("button", { type: "submit", id: "deploy-button", disabled: ladder.length === 0 }, "Deploy");
  const form = element("form", {
    class: "actions",
    "aria-label": "Deploy a variant",
    onsubmit: async (event) => {
      event.preventDefault();
      deploy.disabled = true;
      try {
        const result = await api.deploy(device.device_id, select.value, reason.value);
        page.say(`Deployment ${shortId(result.deployment_id)} of ${shortId(result.variant_id)} ` +
          `to ${device.device_id} is ${result.state}.`);
        await refresh();
      } catch (error) {
        page.say(error.message, "error");
      } finally {
        deploy.disabled = false;
      }
    },
  },
  element("label", {}, "Variant", select),
  element("label", {}, "Reason", reason),
  deploy);

  const pinButton = element("button", {
    type: "button",
    id: "pin-button",
    class: "secondary",
    onclick: async () => {
      pinButton.disabled = true;
      try {
        const updated = device.pinned
          ? await api.unpin(device.device_id)
          : await api.pin(device.device_id, "pinned from the dashboard");
        page.say(updated.pinned
          ? `${device.device_id} is pinned to ${shortId(updated.desired_variant_id)}; the policy leaves it alone.`
          : `${device.device_id} is unpinned; the policy manages it again.`);
        await refresh();
      } catch (error) {
        page.say(error.message, "error");
        pinButton.disabled = false;
      }
    },
  }, device.pinned ? "Unpin" : "Pin to target variant");

  const hint = ladder.length === 0
    ? element("p", { class: "muted" }, "No ladder yet: the planner has not finished for this profile.")
    : null;
  return [element("h2", {}, "Actions"), form, element("div", { class: "actions" }, pinButton), hint]
    .filter((node) => node !== null);
}

function legend() {
  const item = (swatch, text) => element("li", {}, element("span", { class: `swatch ${swatch}`, "aria-hidden": "true" }), text);
  return element("ul", { class: "legend", "aria-label": "Chart legend" },
    item("budget", "budget"),
    item("deploy", "deployed"),
    item("down", "stepped down or recompressed"),
    item("up", "stepped up"),
    item("alert", "alert, failed deployment or rollback"));
}

function telemetryCharts(device, history, events, windowSeconds) {
  const points = history.points.map((point) => ({ ...point, t: Date.parse(point.at) }));
  const marks = events
    .filter((event) => MARKED_EVENTS.has(event.kind))
    .map((event) => ({ t: Date.parse(event.at), kind: event.kind, label: event.reason }));
  // The time axis spans the data and the marked events, within the chosen window, so a
  // young device's few minutes of data fill the chart instead of its right edge.
  const now = Date.now();
  const windowStart = now - windowSeconds * 1000;
  const earliest = Math.min(...points.map((p) => p.t), ...marks.map((m) => m.t), now);
  const domain = [Math.max(windowStart, earliest), now];
  // A bucket that served no request has no latency to show, so the line breaks there.
  const latency = points.map((p) => ({ t: p.t, v: p.requests > 0 ? p.latency_p95_ms : null }));
  const specs = [
    { id: "latency", title: "Latency p95", unit: "ms", points: latency, budget: device.latency_budget_ms, budgetLabel: "p95 budget" },
    { id: "cpu", title: "CPU", unit: "%", points: points.map((p) => ({ t: p.t, v: p.cpu_percent })) },
    { id: "memory", title: "Memory available", unit: "MB", points: points.map((p) => ({ t: p.t, v: p.memory_available_mb })) },
    { id: "temperature", title: "Temperature", unit: "°C", points: points.map((p) => ({ t: p.t, v: p.temperature_c })) },
  ];
  return specs.map((spec) => {
    const note = spec.id === "temperature" && points.length && points.every((p) => p.temperature_c === null)
      ? element("p", { class: "muted" }, "This device reports no temperature sensor.")
      : null;
    return element("figure", { class: "chart-card", id: `chart-${spec.id}` },
      element("h3", {}, `${spec.title} (${spec.unit})`),
      timeSeriesChart({ ...spec, title: `${spec.title} of ${device.device_id}`, events: marks, domain }),
      note);
  });
}

function ladderTable(device, ladder) {
  if (!ladder.length) return element("p", { class: "muted" }, "No ladder yet.");
  const node = table({
    caption: `Ladder of ${device.profile_name}, most accurate first`,
    columns: ["Rung", "Variant", "Accuracy", "p95 (ms)", "Peak memory", "Size", "Recipe"],
    rows: ladder.map((rung) => [
      String(rung.ladder_rank),
      element("span", {}, element("code", {}, shortId(rung.variant_id)),
        rung.variant_id === device.current_variant_id ? " (serving)" : ""),
      percent(rung.accuracy, 2),
      millis(rung.latency_p95_ms),
      `${number(rung.peak_memory_mb, 1)} MB`,
      bytes(rung.size_bytes),
      recipeCell(rung.recipe),
    ]),
  });
  ladder.forEach((rung, index) => {
    if (rung.variant_id === device.current_variant_id) node.tBodies[0].rows[index].classList.add("current");
  });
  return scrolling(node);
}

// Recipe fields worth showing in a table cell. The full recipe is in the cell's tooltip.
const RECIPE_KEYS = ["ratio", "sparsity", "weight_type", "width", "epochs"];

export function recipeText(recipe) {
  const steps = (recipe ?? []).flatMap((entry) => (entry && Array.isArray(entry.steps) ? entry.steps : [entry]));
  if (!steps.length) return "fp32 baseline";
  return steps.map((step) => {
    if (typeof step !== "object" || step === null) return String(step);
    const fields = step.fields ?? {};
    const shown = RECIPE_KEYS.filter((key) => key in fields).map((key) => `${key} ${fields[key]}`);
    return shown.length ? `${step.type} (${shown.join(", ")})` : step.type;
  }).join(" → ");
}

export function recipeCell(recipe) {
  return element("span", { class: "recipe", title: JSON.stringify(recipe) }, recipeText(recipe));
}

function deploymentTable(deployments) {
  if (!deployments.length) return element("p", { class: "muted" }, "No deployments yet.");
  const newest = deployments.slice().sort((a, b) => b.created_at.localeCompare(a.created_at)).slice(0, 10);
  return table({
    caption: "Newest deployments",
    columns: ["Created", "Variant", "From", "State", "Reason"],
    rows: newest.map((d) => [
      time(d.created_at),
      element("code", {}, shortId(d.variant_id)),
      element("code", {}, shortId(d.previous_variant_id)),
      d.state,
      element("span", { class: "reason" }, d.reason),
    ]),
  });
}

function eventTable(events) {
  if (!events.length) return element("p", { class: "muted" }, "No events in this window.");
  const newest = events.slice(-25).reverse();
  return table({
    caption: "Newest events of this device in the window",
    columns: ["Time", "Kind", "From", "To", "Reason"],
    rows: newest.map((e) => [
      time(e.at), e.kind, element("code", {}, shortId(e.from_variant)), element("code", {}, shortId(e.to_variant)),
      element("span", { class: "reason" }, e.reason),
    ]),
  });
}
