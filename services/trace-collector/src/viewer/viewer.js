// The trace viewer: search traces through the Jaeger-compatible API, show one as a waterfall
// (nesting, durations, errors, the critical path), a span's details on click, and the service
// dependency graph.
"use strict";

const palette = ["#6ea8fe", "#63e6be", "#ffa94d", "#da77f2", "#4dabf7", "#ffd43b", "#ff8787", "#a9e34b"];
const colors = new Map();
function color(service) {
  if (!colors.has(service)) colors.set(service, palette[colors.size % palette.length]);
  return colors.get(service);
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

function ms(us) {
  if (us < 1000) return us + " µs";
  if (us < 1e6) return (us / 1000).toFixed(us < 10000 ? 2 : 1) + " ms";
  return (us / 1e6).toFixed(2) + " s";
}

async function api(path) {
  const response = await fetch(path);
  const body = await response.json();
  if (!response.ok) throw new Error((body.errors && body.errors[0] && body.errors[0].msg) || response.statusText);
  return body.data;
}

function showError(message) {
  const error = document.getElementById("search-error");
  error.textContent = message;
  error.hidden = !message;
}

// --- search ---------------------------------------------------------------------------------

async function loadServices() {
  const services = await api("/api/services");
  const select = document.getElementById("service");
  select.replaceChildren(el("option", { value: "", textContent: "all services" }));
  services.forEach((s) => select.append(el("option", { value: s, textContent: s })));
}

async function loadOperations() {
  const service = document.getElementById("service").value;
  const select = document.getElementById("operation");
  select.replaceChildren(el("option", { value: "", textContent: "all" }));
  if (!service) return;
  const operations = await api("/api/services/" + encodeURIComponent(service) + "/operations");
  operations.forEach((o) => select.append(el("option", { value: o, textContent: o })));
}

function searchQuery() {
  const params = new URLSearchParams();
  for (const id of ["service", "operation", "min-duration", "max-duration", "lookback", "limit"]) {
    const input = document.getElementById(id);
    if (input.value) params.set(input.name, input.value);
  }
  const tags = {};
  for (const pair of document.getElementById("tags").value.split(/\s+/).filter(Boolean)) {
    const [key, ...rest] = pair.split("=");
    tags[key] = rest.join("=");
  }
  if (Object.keys(tags).length) params.set("tags", JSON.stringify(tags));
  return params;
}

function summary(trace) {
  const spans = trace.spans;
  const start = Math.min(...spans.map((s) => s.startTime));
  const end = Math.max(...spans.map((s) => s.startTime + s.duration));
  const ids = new Set(spans.map((s) => s.spanID));
  const root = spans.find((s) => !s.references.some((r) => r.refType === "CHILD_OF" && ids.has(r.spanID))) || spans[0];
  const services = [...new Set(spans.map((s) => trace.processes[s.processID].serviceName))];
  const errors = spans.filter((s) => s.tags.some((t) => t.key === "error" && t.value === true)).length;
  return { start, end, root, services, errors, rootService: trace.processes[root.processID].serviceName };
}

async function search(event) {
  if (event) event.preventDefault();
  showError("");
  const results = document.getElementById("results");
  results.replaceChildren();
  let traces;
  try {
    traces = await api("/api/traces?" + searchQuery());
  } catch (e) {
    showError(e.message);
    return;
  }
  if (!traces.length) {
    results.append(el("li", { class: "empty", textContent: "No traces match." }));
    return;
  }
  for (const trace of traces) {
    const s = summary(trace);
    const item = el(
      "li",
      { "data-trace-id": trace.traceID },
      el("div", { class: "title", textContent: s.rootService + ": " + s.root.operationName }),
      el(
        "div",
        { class: "meta" },
        ms(s.end - s.start) + " · " + trace.spans.length + " spans · " + new Date(s.start / 1000).toLocaleTimeString() + " ",
        s.errors ? el("span", { class: "errors", textContent: s.errors + " errors" }) : ""
      ),
      el("div", {}, ...s.services.map((name) => chip(name)))
    );
    item.addEventListener("click", () => openTrace(trace.traceID));
    results.append(item);
  }
}

function chip(service) {
  const node = el("span", { class: "chip", textContent: service });
  node.style.background = color(service);
  return node;
}

// --- one trace ------------------------------------------------------------------------------

// Marks the spans that determine when `span` ends: its last-finishing child, then the child that
// finished before that one started, and so on, recursively.
function markCritical(span, children, marked, until) {
  marked.add(span.spanID);
  let cursor = Math.min(until, span.startTime + span.duration);
  const sorted = (children.get(span.spanID) || []).slice().sort((a, b) => b.startTime + b.duration - (a.startTime + a.duration));
  for (const child of sorted) {
    if (child.startTime + child.duration <= cursor + 1) {
      markCritical(child, children, marked, cursor);
      cursor = child.startTime;
    }
  }
}

async function openTrace(traceId) {
  const main = document.getElementById("trace");
  let traces;
  try {
    traces = await api("/api/traces/" + encodeURIComponent(traceId));
  } catch (e) {
    main.replaceChildren(el("p", { class: "error", textContent: "Trace " + traceId + ": " + e.message }));
    return;
  }
  const trace = traces[0];
  history.replaceState(null, "", "/trace/" + trace.traceID);
  document.querySelectorAll("#results li").forEach((li) => li.classList.toggle("selected", li.dataset.traceId === trace.traceID));
  const s = summary(trace);
  const ids = new Set(trace.spans.map((span) => span.spanID));
  const parentOf = (span) => {
    const ref = span.references.find((r) => r.refType === "CHILD_OF" && ids.has(r.spanID));
    return ref ? ref.spanID : null;
  };
  const children = new Map();
  for (const span of trace.spans) {
    const parent = parentOf(span);
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(span);
  }
  for (const list of children.values()) list.sort((a, b) => a.startTime - b.startTime);
  const critical = new Set();
  for (const root of children.get(null) || []) markCritical(root, children, critical, Infinity);

  const total = Math.max(1, s.end - s.start);
  const rows = [];
  const walk = (span, depth) => {
    rows.push([span, depth]);
    for (const child of children.get(span.spanID) || []) walk(child, depth + 1);
  };
  (children.get(null) || []).forEach((root) => walk(root, 0));

  const waterfall = el("div", { class: "waterfall" });
  waterfall.append(el("div", { class: "ruler" }, el("div", { textContent: "" }), el("div", {}, el("span", { textContent: "0" }), el("span", { textContent: ms(Math.round(total / 2)) }), el("span", { textContent: ms(total) }))));
  for (const [span, depth] of rows) {
    const service = trace.processes[span.processID].serviceName;
    const isError = span.tags.some((t) => t.key === "error" && t.value === true);
    const label = el("div", { class: "label" }, chip(service), el("span", { class: "name", textContent: span.operationName }));
    label.style.paddingLeft = 8 + depth * 16 + "px";
    label.firstChild.classList.add("service");
    const left = ((span.startTime - s.start) / total) * 100;
    const width = Math.max((span.duration / total) * 100, 0.2);
    const bar = el("div", { class: "bar" });
    bar.style.left = left + "%";
    bar.style.width = width + "%";
    bar.style.background = color(service);
    const duration = el("span", { class: "duration", textContent: ms(span.duration) });
    duration.style.left = Math.min(left + width + 0.5, 92) + "%";
    const row = el("div", { class: "row", "data-span-id": span.spanID }, label, el("div", { class: "timeline" }, bar, duration));
    if (isError) row.classList.add("error");
    if (critical.has(span.spanID)) row.classList.add("critical");
    row.addEventListener("click", () => {
      waterfall.querySelectorAll(".row").forEach((r) => r.classList.toggle("selected", r === row));
      showSpan(trace, span);
    });
    waterfall.append(row);
  }
  main.replaceChildren(
    el("div", { class: "trace-header" },
      el("h2", { textContent: s.rootService + ": " + s.root.operationName }),
      el("p", { textContent: "trace " + trace.traceID + " · " + ms(total) + " · " + trace.spans.length + " spans · " + s.services.length + " services · " + new Date(s.start / 1000).toLocaleString() + (s.errors ? " · " + s.errors + " errors" : "") })),
    el("p", { class: "legend" }, "Bars outlined in ", el("span", { class: "critical", textContent: "yellow" }), " are the critical path; red spans failed."),
    waterfall,
    el("section", { id: "details", hidden: true })
  );
}

function table(rows) {
  return el("table", {}, ...rows.map(([key, value]) => el("tr", {}, el("td", { textContent: key }), el("td", { textContent: typeof value === "string" ? value : JSON.stringify(value) }))));
}

function showSpan(trace, span) {
  const details = document.getElementById("details");
  const process = trace.processes[span.processID];
  const kind = (span.tags.find((t) => t.key === "span.kind") || {}).value || "unspecified";
  const status = (span.tags.find((t) => t.key === "otel.status_code") || {}).value || "UNSET";
  const parent = span.references.find((r) => r.refType === "CHILD_OF");
  const parts = [
    el("h3", { textContent: span.operationName }),
    table([
      ["service", process.serviceName],
      ["kind", kind],
      ["status", status],
      ["duration", ms(span.duration)],
      ["start", new Date(span.startTime / 1000).toISOString()],
      ["span id", span.spanID],
      ["parent span id", parent ? parent.spanID : "(root)"],
    ]),
    el("h4", { textContent: "Attributes" }),
    table(span.tags.filter((t) => !["span.kind", "otel.status_code"].includes(t.key)).map((t) => [t.key, t.value])),
    el("h4", { textContent: "Resource" }),
    table([["service.name", process.serviceName], ...process.tags.map((t) => [t.key, t.value])]),
  ];
  if (span.logs.length) {
    parts.push(el("h4", { textContent: "Events" }));
    parts.push(table(span.logs.map((log) => [ms(log.timestamp - span.startTime), log.fields.map((f) => f.key + "=" + JSON.stringify(f.value)).join(" ")])));
  }
  details.replaceChildren(...parts);
  details.hidden = false;
}

// --- dependencies ---------------------------------------------------------------------------

async function showDependencies() {
  const svg = document.getElementById("graph");
  const edges = await api("/api/dependencies");
  const services = [...new Set(edges.flatMap((e) => [e.parent, e.child]))];
  // Layers: a service sits one column right of its furthest caller.
  const layer = new Map(services.map((s) => [s, 0]));
  for (let round = 0; round < services.length; round++) {
    for (const e of edges) layer.set(e.child, Math.max(layer.get(e.child), Math.min(layer.get(e.parent) + 1, services.length)));
  }
  const columns = new Map();
  for (const s of services) {
    const l = layer.get(s);
    if (!columns.has(l)) columns.set(l, []);
    columns.get(l).push(s);
  }
  const position = new Map();
  for (const [l, list] of columns) list.forEach((s, i) => position.set(s, { x: 40 + l * 240, y: 60 + i * 110 }));
  const ns = "http://www.w3.org/2000/svg";
  const node = (tag, attributes, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attributes)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    return n;
  };
  svg.replaceChildren();
  const defs = node("defs", {});
  const marker = node("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "10", refY: "5", markerWidth: "8", markerHeight: "8", orient: "auto-start-reverse" });
  marker.append(node("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#9aa3b5" }));
  defs.append(marker);
  svg.append(defs);
  for (const e of edges) {
    const a = position.get(e.parent), b = position.get(e.child);
    svg.append(node("line", { x1: a.x + 170, y1: a.y + 20, x2: b.x, y2: b.y + 20, "marker-end": "url(#arrow)" }));
    svg.append(node("text", { class: "count", x: (a.x + 170 + b.x) / 2, y: (a.y + b.y) / 2 + 12, "text-anchor": "middle" }, e.callCount + " calls"));
  }
  for (const s of services) {
    const p = position.get(s);
    const group = node("g", { "data-service": s });
    const rect = node("rect", { x: p.x, y: p.y, width: 170, height: 40, rx: 8 });
    rect.style.stroke = color(s);
    group.append(rect, node("text", { x: p.x + 85, y: p.y + 25, "text-anchor": "middle" }, s));
    svg.append(group);
  }
  if (!services.length) svg.append(node("text", { x: 40, y: 60 }, "No calls between services yet."));
}

// --- wiring ---------------------------------------------------------------------------------

function show(view) {
  history.replaceState(null, "", view === "dependencies" ? "/dependencies" : "/");
  for (const name of ["search", "dependencies"]) {
    document.getElementById("view-" + name).hidden = name !== view;
    document.getElementById("tab-" + name).classList.toggle("active", name === view);
  }
  if (view === "dependencies") showDependencies().catch((e) => showError(e.message));
}

document.querySelectorAll(".tab").forEach((tab) => tab.addEventListener("click", () => show(tab.dataset.view)));
document.getElementById("service").addEventListener("change", () => loadOperations().catch((e) => showError(e.message)));
document.getElementById("search").addEventListener("submit", search);
document.getElementById("lookup").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = document.getElementById("trace-id").value.trim();
  if (id) openTrace(id);
});

loadServices()
  .then(() => {
    if (location.pathname === "/dependencies") {
      show("dependencies");
      return null;
    }
    const deep = location.pathname.match(/^\/trace\/([0-9a-fA-F]{1,32})$/);
    if (deep) openTrace(deep[1]);
    return search();
  })
  .catch((e) => showError(e.message));
