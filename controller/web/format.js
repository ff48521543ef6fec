// Small formatting and DOM helpers shared by the pages.

export function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function shortId(id) {
  return id ? id.slice(0, 12) : "none";
}

export function number(value, digits = 1) {
  return value === null || value === undefined ? "n/a" : Number(value).toFixed(digits);
}

export function percent(fraction, digits = 1) {
  return fraction === null || fraction === undefined ? "n/a" : `${(fraction * 100).toFixed(digits)}%`;
}

export function bytes(count) {
  if (count >= 1024 * 1024) return `${(count / 1024 / 1024).toFixed(1)} MiB`;
  if (count >= 1024) return `${(count / 1024).toFixed(1)} KiB`;
  return `${count} B`;
}

export function time(iso) {
  if (!iso) return "never";
  const date = new Date(iso);
  const clock = date.toLocaleTimeString([], { hour12: false });
  const today = new Date().toDateString() === date.toDateString();
  return today ? clock : `${date.toLocaleDateString()} ${clock}`;
}

// A budget or measurement in milliseconds, with enough digits for sub-millisecond values.
export function millis(value) {
  if (value === null || value === undefined) return "n/a";
  if (value >= 10) return Number(value).toFixed(1);
  if (value >= 1) return Number(value).toFixed(2);
  return Number(value).toFixed(3);
}

export function ago(iso, now = Date.now()) {
  if (!iso) return "never";
  const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (seconds < 90) return `${seconds} s ago`;
  if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}

// A badge states its meaning in text, and its colour only repeats it.
export function badge(text, tone) {
  return element("span", { class: `badge badge-${tone}` }, text);
}

export function budgetBadge(withinBudget) {
  if (withinBudget === null || withinBudget === undefined) return badge("no data", "muted");
  return withinBudget ? badge("within budget", "ok") : badge("over budget", "bad");
}

export function stateBadge(online) {
  return online ? badge("online", "ok") : badge("offline", "muted");
}

export function table({ caption, columns, rows, className = "" }) {
  return element(
    "table",
    { class: className },
    caption ? element("caption", {}, caption) : null,
    element("thead", {}, element("tr", {}, columns.map((c) => element("th", { scope: "col" }, c)))),
    element("tbody", {}, rows.map((cells) => element("tr", {}, cells.map((c) => element("td", {}, c))))),
  );
}

// Tables scroll sideways inside narrow panels instead of overflowing them.
export function scrolling(node) {
  return element("div", { class: "table-scroll" }, node);
}
