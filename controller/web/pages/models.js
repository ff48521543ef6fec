// Model page: per device profile, accuracy against latency of every variant with the
// Pareto front and the budget, and the ladder the controller moves devices along.

import { api } from "../api.js";
import { paretoChart } from "../charts.js";
import { bytes, element, millis, number, percent, scrolling, shortId, table, time } from "../format.js";
import { recipeCell, recipeText } from "./device.js";

const REFRESH_MS = 15000;

export async function render(view, { modelId }, page) {
  document.title = "Models · edgefleet";
  const list = element("div", { id: "model-list" });
  const detail = element("div", { id: "model-detail" });
  view.append(element("h1", {}, "Models"), list, detail);

  await page.every(REFRESH_MS, async () => {
    const { models, active_model_id: activeId } = await api.models();
    list.replaceChildren(modelTable(models));
    const shown = modelId ?? activeId;
    if (!shown) {
      detail.replaceChildren(element("p", { class: "muted" },
        "No model is registered. Start the controller with ",
        element("code", {}, "--model FILE --data FILE.npz"), "."));
      return;
    }
    const [variants, { devices }] = await Promise.all([api.variants(shown), api.devices()]);
    if (!page.isCurrent()) return;
    const model = models.find((m) => m.model_id === shown);
    detail.replaceChildren(...profileSections(shown, variants, devices, model));
  });
}

function modelTable(models) {
  return table({
    caption: "Registered models",
    columns: ["Model", "Name", "Active", "Registered", "Plans"],
    rows: models.map((model) => [
      element("a", { href: `#/models/${encodeURIComponent(model.model_id)}` }, element("code", {}, model.model_id)),
      model.name,
      model.active ? "active" : "",
      time(model.registered_at),
      Object.values(model.plans).join(", ") || "none",
    ]),
  });
}

function profileSections(modelId, variants, devices, model) {
  if (!variants.profiles.length) {
    const plans = Object.values(model?.plans ?? {});
    const status = plans.length
      ? `planning is under way (plans: ${plans.join(", ")})`
      : "planning starts when a device registers";
    return [element("p", { class: "muted", id: "model-status" }, `Model ${modelId} has no variants yet: ${status}.`)];
  }
  const grid = element("div", { class: "profiles" });
  const profiles = variants.profiles.slice().sort((a, b) => a.profile_name.localeCompare(b.profile_name));
  for (const profile of profiles) {
    const members = devices.filter((d) => d.profile_fingerprint === profile.profile_fingerprint);
    const budget = members.length ? members[0].latency_budget_ms : null;
    const serving = new Set(members.map((d) => d.current_variant_id));
    const ladder = new Set(profile.ladder);
    const chart = paretoChart({
      title: `Accuracy against p95 latency of ${profile.profile_name}`,
      budget,
      variants: profile.variants.map((v) => ({
        id: v.variant_id,
        latency: v.latency_p95_ms,
        accuracy: v.accuracy,
        onLadder: ladder.has(v.variant_id),
        current: serving.has(v.variant_id),
        label: `${shortId(v.variant_id)} (${recipeText(v.recipe)})`,
      })),
    });
    const byId = new Map(profile.variants.map((v) => [v.variant_id, v]));
    const rungs = profile.ladder.map((id) => byId.get(id)).filter(Boolean);
    grid.append(element("section", {
      class: "panel",
      "aria-labelledby": `profile-${profile.profile_fingerprint}`,
      "data-profile": profile.profile_name,
    },
    element("h2", { id: `profile-${profile.profile_fingerprint}` },
      `${profile.profile_name}`, element("span", { class: "muted" },
        ` · ${profile.variants.length} variants, ${rungs.length} rungs, ` +
        `${members.length} device(s)`)),
    element("p", { class: "muted" },
      "Green points are ladder rungs joined by the front; grey ones were dominated or out of budget; " +
      "a dark ring marks a variant a device serves."),
    chart,
    scrolling(table({
      caption: "Ladder, most accurate first",
      columns: ["Rung", "Variant", "Accuracy", "p95 (ms)", "Memory", "Size", "Recipe"],
      rows: rungs.map((v) => [
        String(v.ladder_rank),
        element("code", {}, shortId(v.variant_id)),
        percent(v.accuracy, 2),
        millis(v.latency_p95_ms),
        `${number(v.peak_memory_mb, 1)} MB`,
        bytes(v.size_bytes),
        recipeCell(v.recipe),
      ]),
    }))));
  }
  return [element("h2", {}, `Model ${modelId}`), grid];
}
