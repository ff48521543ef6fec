// SVG charts drawn without a library: a time-series chart with a budget line and event
// markers, and a scatter chart of accuracy against latency with the Pareto front.
//
// Every chart is an <svg role="img"> with a <title> and a <desc> that state what it shows,
// and every data series carries data-count with the number of points it draws, so that a
// screen reader and a test both see the data behind the picture.

const SVG_NS = "http://www.w3.org/2000/svg";
const MARGIN = { top: 14, right: 16, bottom: 28, left: 64 };

export function svgElement(name, attributes = {}, text = null) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined) element.setAttribute(key, String(value));
  }
  if (text !== null) element.textContent = text;
  return element;
}

function linearScale([domainMin, domainMax], [rangeMin, rangeMax]) {
  const span = domainMax - domainMin || 1;
  return (value) => rangeMin + ((value - domainMin) / span) * (rangeMax - rangeMin);
}

// Round tick values: 1, 2 or 5 times a power of ten, about `count` of them.
export function niceTicks(min, max, count = 5) {
  if (!Number.isFinite(min) || !Number.isFinite(max)) return [];
  if (min === max) return [min];
  const rough = (max - min) / count;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough) ?? rough;
  const ticks = [];
  for (let value = Math.ceil(min / step) * step; value <= max + step * 1e-9; value += step) {
    ticks.push(Number(value.toPrecision(12)));
  }
  return ticks;
}

function formatClock(milliseconds) {
  return new Date(milliseconds).toLocaleTimeString([], { hour12: false });
}

function formatNumber(value) {
  const size = Math.abs(value);
  if (size >= 100) return value.toFixed(0);
  if (size >= 10) return value.toFixed(1);
  if (size >= 1) return value.toFixed(2).replace(/\.?0+$/, "");
  if (size === 0) return "0";
  return String(Number(value.toPrecision(2)));
}

function frame(svg, width, height) {
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  return {
    left: MARGIN.left,
    right: width - MARGIN.right,
    top: MARGIN.top,
    bottom: height - MARGIN.bottom,
  };
}

function drawAxes(svg, box, { xTicks, yTicks, x, y, formatX, formatY, xLabel, yLabel }) {
  const axes = svgElement("g", { class: "axes", "aria-hidden": "true" });
  for (const tick of yTicks) {
    const ty = y(tick);
    axes.append(svgElement("line", { class: "grid", x1: box.left, x2: box.right, y1: ty, y2: ty }));
    axes.append(
      svgElement("text", { class: "tick", x: box.left - 6, y: ty + 4, "text-anchor": "end" },
        formatY(tick)),
    );
  }
  for (const tick of xTicks) {
    const tx = x(tick);
    axes.append(svgElement("line", { class: "grid", x1: tx, x2: tx, y1: box.top, y2: box.bottom }));
    axes.append(
      svgElement("text", { class: "tick", x: tx, y: box.bottom + 16, "text-anchor": "middle" },
        formatX(tick)),
    );
  }
  axes.append(svgElement("line", { class: "axis", x1: box.left, x2: box.right, y1: box.bottom, y2: box.bottom }));
  axes.append(svgElement("line", { class: "axis", x1: box.left, x2: box.left, y1: box.top, y2: box.bottom }));
  if (yLabel) {
    axes.append(
      svgElement("text", {
        class: "axis-label",
        transform: `translate(11 ${(box.top + box.bottom) / 2}) rotate(-90)`,
        "text-anchor": "middle",
      }, yLabel),
    );
  }
  if (xLabel) {
    axes.append(
      svgElement("text", { class: "axis-label", x: box.right, y: box.bottom - 6, "text-anchor": "end" },
        xLabel),
    );
  }
  svg.append(axes);
}

function describe(svg, title, description) {
  const id = `chart-${Math.random().toString(36).slice(2, 10)}`;
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-labelledby", `${id}-title ${id}-desc`);
  svg.append(svgElement("title", { id: `${id}-title` }, title));
  svg.append(svgElement("desc", { id: `${id}-desc` }, description));
}

// The top of a chart with a budget line: a few peaks far above the budget would squeeze
// the budget line and the ordinary samples against the bottom, so the axis stops at four
// times the budget, or 1.5 times the 90th percentile when that is higher.
function valueCap(values, budget) {
  if (budget === null || !values.length) return Infinity;
  const sorted = values.slice().sort((a, b) => a - b);
  const p90 = sorted[Math.floor(0.9 * (sorted.length - 1))];
  return Math.max(budget * 4, p90 * 1.5);
}

/**
 * Draw a time series. `points` are {t: epoch milliseconds, v: number or null}, and null values
 * (a sample without a temperature, say) break the line. `budget` draws a dashed limit line.
 * `events` are {t, kind, label} drawn as vertical markers with a tooltip.
 */
export function timeSeriesChart({
  title,
  unit,
  points,
  budget = null,
  budgetLabel = "budget",
  events = [],
  domain = null,
  width = 640,
  height = 200,
}) {
  const svg = svgElement("svg", { class: "chart time-series", width: "100%" });
  const box = frame(svg, width, height);
  const values = points.filter((p) => p.v !== null && Number.isFinite(p.v));

  const times = points.map((p) => p.t);
  const [t0, t1] = domain ?? [Math.min(...times), Math.max(...times)];
  const peak = Math.max(...values.map((p) => p.v), 0);
  const cap = valueCap(values.map((p) => p.v), budget);
  const yMax = Math.max(budget ?? 0, Math.min(peak, cap)) * 1.1 || 1;
  const clipped = values.filter((p) => p.v > yMax).length;
  const x = linearScale([t0, t1], [box.left, box.right]);
  const y = linearScale([0, yMax], [box.bottom, box.top]);

  const latest = values.length ? values[values.length - 1].v : null;
  const summary = [
    `${values.length} samples`,
    latest === null ? "no values" : `latest ${formatNumber(latest)} ${unit}`,
    budget === null ? null : `${budgetLabel} ${formatNumber(budget)} ${unit}`,
    clipped ? `${clipped} samples above the axis, up to ${formatNumber(peak)} ${unit}` : null,
    events.length ? `${events.length} controller events marked` : null,
  ].filter(Boolean).join(", ");
  describe(svg, title, summary);

  if (!points.length || !Number.isFinite(t0)) {
    svg.append(svgElement("text", { class: "empty", x: width / 2, y: height / 2, "text-anchor": "middle" },
      "no telemetry yet"));
    return svg;
  }
  drawAxes(svg, box, {
    xTicks: niceTicks(t0, t1, 5).filter((t) => t >= t0 && t <= t1),
    yTicks: niceTicks(0, yMax, 4),
    x, y,
    formatX: formatClock,
    formatY: formatNumber,
    yLabel: unit,
  });

  // One path per unbroken run of values, so that a gap in the data shows as a gap.
  let d = "";
  let penDown = false;
  for (const point of points) {
    if (point.v === null || !Number.isFinite(point.v)) {
      penDown = false;
      continue;
    }
    // Values above the axis are drawn at its top; the note below gives the peak.
    d += `${penDown ? "L" : "M"}${x(point.t).toFixed(1)},${y(Math.min(point.v, yMax)).toFixed(1)}`;
    penDown = true;
  }
  svg.append(svgElement("path", { class: "series", d, "data-count": values.length }));
  if (clipped) {
    svg.append(svgElement("text", { class: "clipped", x: box.left + 6, y: box.top + 10, "data-count": clipped },
      `▲ ${clipped} peaks above the axis, up to ${formatNumber(peak)} ${unit}`));
  }

  if (budget !== null) {
    const by = y(budget);
    const line = svgElement("g", { class: "budget", "data-value": budget });
    line.append(svgElement("line", { x1: box.left, x2: box.right, y1: by, y2: by }));
    line.append(svgElement("text", { x: box.right - 4, y: by - 4, "text-anchor": "end" },
      `${budgetLabel} ${formatNumber(budget)} ${unit}`));
    svg.append(line);
  }

  const markers = svgElement("g", { class: "events", "data-count": events.length });
  for (const event of events) {
    if (event.t < t0 || event.t > t1) continue;
    const ex = x(event.t);
    const marker = svgElement("g", { class: `event-marker event-${event.kind}`, "data-kind": event.kind });
    marker.append(svgElement("title", {}, `${formatClock(event.t)} ${event.kind}: ${event.label}`));
    marker.append(svgElement("line", { x1: ex, x2: ex, y1: box.top, y2: box.bottom }));
    marker.append(svgElement("circle", { cx: ex, cy: box.top + 4, r: 4 }));
    markers.append(marker);
  }
  markers.setAttribute("data-count", markers.childElementCount);
  svg.append(markers);
  return svg;
}

/**
 * Draw variants as points of accuracy against latency. `variants` are
 * {id, latency, accuracy, onLadder, current, label}. Ladder points are joined by the front
 * line, most accurate first, and `budget` draws the latency limit.
 */
export function paretoChart({ title, variants, budget = null, width = 560, height = 280 }) {
  const svg = svgElement("svg", { class: "chart pareto", width: "100%" });
  const box = frame(svg, width, height);
  const ladder = variants.filter((v) => v.onLadder);
  describe(svg, title,
    `${variants.length} variants, ${ladder.length} on the ladder` +
    (budget === null ? "" : `, latency budget ${formatNumber(budget)} ms`));
  if (!variants.length) {
    svg.append(svgElement("text", { class: "empty", x: width / 2, y: height / 2, "text-anchor": "middle" },
      "no variants yet"));
    return svg;
  }

  const latencies = variants.map((v) => v.latency);
  const accuracies = variants.map((v) => v.accuracy);
  // A budget far beyond every variant would squeeze the points against the axis, so it
  // is then written at the right edge instead of drawn to scale.
  const slowest = Math.max(...latencies);
  const budgetInRange = budget !== null && budget <= slowest * 3;
  const xMax = Math.max(budgetInRange ? budget : 0, slowest) * 1.15;
  const yMin = Math.max(0, Math.min(...accuracies) - 0.02);
  const yMax = Math.min(1, Math.max(...accuracies) + 0.01);
  const x = linearScale([0, xMax], [box.left, box.right]);
  const y = linearScale([yMin, yMax], [box.bottom, box.top]);
  drawAxes(svg, box, {
    xTicks: niceTicks(0, xMax, 5),
    yTicks: niceTicks(yMin, yMax, 4),
    x, y,
    formatX: formatNumber,
    formatY: (value) => `${(value * 100).toFixed(1)}%`,
    xLabel: "p95 latency (ms)",
    yLabel: "accuracy",
  });

  if (budgetInRange) {
    const bx = x(budget);
    const line = svgElement("g", { class: "budget", "data-value": budget });
    line.append(svgElement("line", { x1: bx, x2: bx, y1: box.top, y2: box.bottom }));
    line.append(svgElement("text", { x: bx - 4, y: box.top + 10, "text-anchor": "end" },
      `budget ${formatNumber(budget)} ms`));
    svg.append(line);
  } else if (budget !== null) {
    const note = svgElement("g", { class: "budget off-scale", "data-value": budget });
    note.append(svgElement("text", { x: box.right, y: box.top + 10, "text-anchor": "end" },
      `budget ${formatNumber(budget)} ms, off the scale →`));
    svg.append(note);
  }

  const front = ladder
    .slice()
    .sort((a, b) => a.latency - b.latency)
    .map((v, index) => `${index ? "L" : "M"}${x(v.latency).toFixed(1)},${y(v.accuracy).toFixed(1)}`)
    .join("");
  svg.append(svgElement("path", { class: "front", d: front, "data-count": ladder.length }));

  const points = svgElement("g", { class: "variants", "data-count": variants.length });
  // Ladder rungs last, so that they are drawn over dominated variants at the same spot.
  const ordered = variants.slice().sort((a, b) => Number(a.onLadder) - Number(b.onLadder));
  for (const variant of ordered) {
    const classes = ["variant", variant.onLadder ? "on-ladder" : "off-ladder"];
    if (variant.current) classes.push("current");
    const point = svgElement("circle", {
      class: classes.join(" "),
      cx: x(variant.latency),
      cy: y(variant.accuracy),
      r: variant.current ? 7 : 5,
      "data-variant": variant.id,
    });
    point.append(svgElement("title", {},
      `${variant.label}: accuracy ${(variant.accuracy * 100).toFixed(2)}%, ` +
      `p95 ${formatNumber(variant.latency)} ms`));
    points.append(point);
  }
  svg.append(points);
  return svg;
}
