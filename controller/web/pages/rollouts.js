// Rollouts: every rollout with its waves and devices, and pause, resume and abort.

import { api } from "../api.js";
import { element, shortId, table, time } from "../format.js";

const REFRESH_MS = 5000;
// The actions each rollout state allows, as the rollout engine defines them.
const ACTIONS = {
  running: ["pause", "abort"],
  paused: ["resume", "abort"],
};

export async function render(view, _params, page) {
  document.title = "Rollouts · edgefleet";
  const holder = element("div", { id: "rollout-list" });
  view.append(
    element("h1", {}, "Rollouts"),
    element("p", { class: "muted" },
      "Start a rollout with ", element("code", {}, "edgefleet rollouts start"),
      "; pause, resume or abort it here."),
    holder,
  );
  const refresh = async () => {
    const { rollouts } = await api.rollouts();
    if (!page.isCurrent()) return;
    holder.replaceChildren(...(rollouts.length
      ? [rolloutTable(rollouts, page, refresh)]
      : [element("p", { class: "muted" }, "No rollouts yet.")]));
  };
  await page.every(REFRESH_MS, refresh);
}

export function targetText(target) {
  if (!target || typeof target !== "object") return String(target ?? "all");
  if (target.kind === "profile") return `profile ${target.profile}`;
  if (target.kind === "devices") return `devices ${target.device_ids.join(", ")}`;
  return "all devices";
}

function rolloutTable(rollouts, page, refresh) {
  const newest = rollouts.slice().sort((a, b) => (b.created_at ?? "").localeCompare(a.created_at ?? ""));
  return table({
    caption: "Rollouts, newest first",
    className: "rollouts",
    columns: ["Rollout", "State", "Target", "Waves", "Devices updated", "Created", "Reason", "Actions"],
    rows: newest.map((rollout) => {
      const id = rollout.rollout_id ?? rollout.id;
      const waves = rollout.waves ?? [];
      const devices = rollout.devices ?? [];
      const updated = devices.filter((d) => d.state === "updated" || d.state === "unchanged").length;
      const passed = waves.filter((w) => w.state === "passed").length;
      return [
        element("code", {}, shortId(id)),
        rollout.state,
        targetText(rollout.target),
        waves.length ? `${passed} of ${waves.length} passed (${waves.map((w) => w.spec).join(", ")})` : "n/a",
        devices.length ? `${updated} of ${devices.length}` : "n/a",
        time(rollout.created_at),
        element("span", { class: "reason" }, rollout.reason ?? ""),
        element("span", { class: "actions" },
          (ACTIONS[rollout.state] ?? []).map((action) => actionButton(id, action, page, refresh))),
      ];
    }),
  });
}

function actionButton(id, action, page, refresh) {
  const button = element("button", {
    type: "button",
    class: action === "abort" ? "danger" : "secondary",
    "data-action": action,
    "aria-label": `${action} rollout ${shortId(id)}`,
    onclick: async () => {
      if (action === "abort" && !window.confirm(`Abort rollout ${shortId(id)}? Updated devices go back to their previous variant.`)) {
        return;
      }
      button.disabled = true;
      try {
        const result = await api.rolloutAction(id, action);
        page.say(`Rollout ${shortId(id)} is ${result.state}.`);
        await refresh();
      } catch (error) {
        page.say(error.message, "error");
        button.disabled = false;
      }
    },
  }, action[0].toUpperCase() + action.slice(1));
  return button;
}
