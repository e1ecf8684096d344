// The trace viewer: search traces through the Jaeger-compatible API and list them in a sortable
// table under a timeline that marks hot swaps of the trace filter; show one trace as a waterfall
// (nesting, durations, errors, the critical path), a flamegraph or statistics (self time by
// service and operation); compare two traces span by span; a span's details on click, with which
// generation of the trace filter made it; and the service dependency graph.
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

// A collector answering as many queries as it answers at once says 503 and when to come back
// (Retry-After): the viewer waits and asks again, a few times, before it shows the error.
async function api(path) {
  let response = await fetch(path);
  for (let attempt = 0; response.status === 503 && attempt < 3; attempt++) {
    const seconds = Math.min(Number(response.headers.get("Retry-After")) || 1, 5);
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    response = await fetch(path);
  }
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

// The attribute the trace filter records its generation in (and its module's sha256).
const GENERATION = "wasmtrace.filter.generation";
const MODULE_SHA256 = "wasmtrace.filter.sha256";

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
  const generation = document.getElementById("generation").value.trim();
  if (generation) tags[GENERATION] = generation;
  if (Object.keys(tags).length) params.set("tags", JSON.stringify(tags));
  return params;
}

function tagValue(span, key) {
  const tag = span.tags.find((t) => t.key === key);
  return tag ? tag.value : undefined;
}

function isError(span) {
  return tagValue(span, "error") === true;
}

function serviceOf(trace, span) {
  return trace.processes[span.processID].serviceName;
}

function summary(trace) {
  const spans = trace.spans;
  // A loop, not Math.min(...spans): a spread of a huge trace exceeds the engine's argument limit.
  let start = Infinity, end = -Infinity;
  for (const span of spans) {
    start = Math.min(start, span.startTime);
    end = Math.max(end, span.startTime + span.duration);
  }
  const ids = new Set(spans.map((s) => s.spanID));
  const root = spans.find((s) => !s.references.some((r) => r.refType === "CHILD_OF" && ids.has(r.spanID))) || spans[0];
  const services = [...new Set(spans.map((s) => serviceOf(trace, s)))].sort();
  const errors = spans.filter(isError).length;
  // Which generation of which trace filter made the trace's spans: one per service and kind
  // (a sidecar's inbound and outbound filters are two plugins, each with its generations).
  const generations = new Map();
  for (const span of spans) {
    const generation = Number(tagValue(span, GENERATION));
    if (!Number.isInteger(generation)) continue;
    const service = serviceOf(trace, span), kind = tagValue(span, "span.kind") || "";
    generations.set(service + "\u0000" + kind, { service, kind, generation });
  }
  const rootService = serviceOf(trace, root);
  return {
    start, end, root, services, errors, rootService, generations,
    duration: end - start, spans: spans.length, name: rootService + ": " + root.operationName,
  };
}

// The search's results, as last found, and how the table is sorted.
// `picks`: the traces ticked for comparison, in the order ticked (the first is A).
const results = { traces: [], sort: "start", descending: true, asked: 0, picks: [] };

async function search(event) {
  if (event) event.preventDefault();
  showError("");
  // Only the latest search's answer is shown, whichever answer arrives last.
  const asked = ++results.asked;
  let traces;
  try {
    traces = await api("/api/traces?" + searchQuery());
  } catch (e) {
    if (asked === results.asked) showError(e.message);
    return;
  }
  if (asked !== results.asked) return;
  results.traces = traces.filter((t) => t.spans.length).map((trace) => ({ trace, s: summary(trace) }));
  results.picks = [];
  document.getElementById("results-panel").hidden = false;
  document.getElementById("trace").replaceChildren();
  renderResults();
}

function renderResults() {
  const count = results.traces.length;
  document.getElementById("results-count").textContent = count === 1 ? "1 trace" : count + " traces";
  renderTimeline();
  const key = results.sort;
  const sign = results.descending ? -1 : 1;
  const value = (r) => (key === "services" ? r.s.services.length : r.s[key]);
  const sorted = results.traces.slice().sort((a, b) => {
    const x = value(a), y = value(b);
    return sign * (typeof x === "string" ? x.localeCompare(y) : x - y);
  });
  document.querySelectorAll("#results th[data-sort]").forEach((th) => {
    if (th.dataset.sort === key) th.setAttribute("aria-sort", results.descending ? "descending" : "ascending");
    else th.removeAttribute("aria-sort");
  });
  const body = document.querySelector("#results tbody");
  body.replaceChildren();
  if (!count) body.append(el("tr", { class: "empty" }, el("td", { colSpan: 7, textContent: "No traces match." })));
  for (const { trace, s } of sorted) {
    const select = el("input", { type: "checkbox", class: "pick", title: "compare", checked: results.picks.includes(trace.traceID) });
    select.dataset.traceId = trace.traceID;
    select.addEventListener("click", (event) => event.stopPropagation());
    select.addEventListener("change", () => {
      results.picks = results.picks.filter((id) => id !== trace.traceID);
      if (select.checked) results.picks.push(trace.traceID);
      updateCompare();
    });
    const row = el(
      "tr",
      { "data-trace-id": trace.traceID },
      el("td", {}, select),
      el("td", { class: "title", textContent: s.name }),
      el("td", { textContent: new Date(s.start / 1000).toLocaleTimeString(), title: new Date(s.start / 1000).toISOString() }),
      el("td", { class: "number", textContent: ms(s.duration) }),
      el("td", { class: "number", textContent: String(s.spans) }),
      el("td", { class: s.errors ? "number errors" : "number", textContent: String(s.errors) }),
      el("td", {}, ...s.services.map((name) => chip(name)))
    );
    row.addEventListener("click", () => openTrace(trace.traceID));
    body.append(row);
  }
  updateCompare();
}

function sortBy(key) {
  results.descending = results.sort === key ? !results.descending : key !== "name";
  results.sort = key;
  renderResults();
}

function picked() {
  return results.picks;
}

function updateCompare() {
  const ids = picked();
  const button = document.getElementById("compare");
  button.disabled = ids.length !== 2;
  button.textContent = ids.length === 2 ? "Compare the two selected" : "Compare (select two)";
}

// The traces found on a time line (x: start, y: duration), with a dashed marker wherever the
// generation of a trace filter changes between one trace and the next: a hot swap. Each marker
// offers the search before and after it.
function renderTimeline() {
  const timeline = document.getElementById("timeline");
  timeline.replaceChildren();
  const found = results.traces.slice().sort((a, b) => a.s.start - b.s.start);
  if (!found.length) return;
  const first = found[0].s.start, last = found[found.length - 1].s.start;
  const span = Math.max(1, last - first);
  const longest = Math.max(1, ...found.map((r) => r.s.duration));
  const x = (time) => (found.length === 1 ? 50 : 2 + ((time - first) / span) * 96);
  for (const { trace, s } of found) {
    const dot = el("button", { class: s.errors ? "dot error" : "dot", title: s.name + " · " + ms(s.duration), type: "button" });
    dot.dataset.traceId = trace.traceID;
    dot.style.left = x(s.start) + "%";
    dot.style.bottom = 8 + (s.duration / longest) * 76 + "%";
    dot.addEventListener("click", () => openTrace(trace.traceID));
    timeline.append(dot);
  }
  // Generations only grow (a rollback is a new generation too), so a trace that started before a
  // swap and ended after it, listed after one of the new generation, marks nothing.
  const newest = new Map();
  let previous = null;
  for (const { s } of found) {
    for (const [key, { service, kind, generation }] of s.generations) {
      const before = newest.get(key);
      if (before !== undefined && generation > before && previous) {
        const at = (previous.start + s.start) / 2;
        timeline.append(swapMarker(service, kind, before, generation, x(at), at));
      }
      if (before === undefined || generation > before) newest.set(key, generation);
    }
    previous = s;
  }
}

function swapMarker(service, kind, from, to, left, at) {
  const key = service + (kind ? " " + kind : "");
  const marker = el("div", { class: "swap-marker", title: "hot swap of " + key + "'s trace filter" });
  marker.dataset.service = service;
  marker.dataset.kind = kind;
  marker.dataset.from = String(from);
  marker.dataset.to = String(to);
  marker.dataset.at = String(at);
  marker.style.left = left + "%";
  const searchGeneration = (generation) => {
    document.getElementById("service").value = service;
    document.getElementById("generation").value = String(generation);
    loadOperations().then(() => search()).catch((e) => showError(e.message));
  };
  const before = el("button", { type: "button", class: "before", textContent: "◀ gen " + from });
  before.addEventListener("click", () => searchGeneration(from));
  const after = el("button", { type: "button", class: "after", textContent: "gen " + to + " ▶" });
  after.addEventListener("click", () => searchGeneration(to));
  marker.append(el("div", { class: "swap-label" }, el("span", { textContent: key }), before, after));
  return marker;
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
  if (marked.has(span.spanID)) return;
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

// A trace's spans as a tree: children by parent span id (null: the roots), each list by start.
function tree(trace) {
  const ids = new Set(trace.spans.map((span) => span.spanID));
  const children = new Map();
  for (const span of trace.spans) {
    const ref = span.references.find((r) => r.refType === "CHILD_OF" && ids.has(r.spanID));
    const parent = ref ? ref.spanID : null;
    if (!children.has(parent)) children.set(parent, []);
    children.get(parent).push(span);
  }
  for (const list of children.values()) list.sort((a, b) => a.startTime - b.startTime);
  const rows = [];
  // Each span once, even where ids repeat or parents loop.
  const visited = new Set();
  const walk = (span, depth, path) => {
    if (visited.has(span)) return;
    visited.add(span);
    rows.push({ span, depth, path });
    for (const child of children.get(span.spanID) || []) walk(child, depth + 1, path + " > " + serviceOf(trace, child) + ": " + child.operationName);
  };
  (children.get(null) || []).forEach((root) => walk(root, 0, serviceOf(trace, root) + ": " + root.operationName));
  // Spans whose parents form a loop are reached from no root: shown as roots, each once.
  for (const span of trace.spans) {
    if (visited.has(span)) continue;
    visited.add(span);
    rows.push({ span, depth: 0, path: serviceOf(trace, span) + ": " + span.operationName + " (loop)" });
  }
  return { children, rows };
}

// Time a span spent itself: its duration less the time some child (clipped to it) was running.
function selfTime(span, children) {
  const end = span.startTime + span.duration;
  const intervals = (children.get(span.spanID) || [])
    .map((c) => [Math.max(c.startTime, span.startTime), Math.min(c.startTime + c.duration, end)])
    .filter(([a, b]) => b > a)
    .sort((a, b) => a[0] - b[0]);
  let covered = 0, from = -Infinity, to = -Infinity;
  for (const [a, b] of intervals) {
    if (a > to) {
      if (to > from) covered += to - from;
      from = a;
      to = b;
    } else to = Math.max(to, b);
  }
  if (to > from) covered += to - from;
  return Math.max(0, span.duration - covered);
}

// The trace on screen, and how it is shown.
const current = { trace: null, mode: "timeline" };

async function fetchTrace(traceId) {
  const traces = await api("/api/traces/" + encodeURIComponent(traceId));
  return traces[0];
}

async function openTrace(traceId) {
  const main = document.getElementById("trace");
  let trace;
  try {
    trace = await fetchTrace(traceId);
  } catch (e) {
    main.replaceChildren(el("p", { class: "error", textContent: "Trace " + traceId + ": " + e.message }));
    return;
  }
  history.replaceState(null, "", "/trace/" + trace.traceID);
  current.trace = trace;
  document.getElementById("results-panel").hidden = true;
  renderTrace();
}

function backToResults() {
  history.replaceState(null, "", "/");
  document.getElementById("trace").replaceChildren();
  document.getElementById("results-panel").hidden = false;
}

function renderTrace() {
  const trace = current.trace;
  const s = summary(trace);
  const header = el("div", { class: "trace-header" });
  if (results.traces.length) {
    const back = el("button", { type: "button", id: "back", textContent: "◀ Results" });
    back.addEventListener("click", backToResults);
    header.append(back);
  }
  header.append(
    el("h2", { textContent: s.name }),
    el("p", { textContent: "trace " + trace.traceID + " · " + ms(s.duration) + " · " + s.spans + " spans · " + s.services.length + " services · " + new Date(s.start / 1000).toLocaleString() + (s.errors ? " · " + s.errors + " errors" : "") })
  );
  const modes = el("nav", { class: "modes" });
  for (const [mode, label] of [["timeline", "Timeline"], ["flamegraph", "Flamegraph"], ["statistics", "Statistics"]]) {
    const button = el("button", { type: "button", class: mode === current.mode ? "mode active" : "mode", textContent: label });
    button.dataset.mode = mode;
    button.addEventListener("click", () => {
      current.mode = mode;
      renderTrace();
    });
    modes.append(button);
  }
  const view = current.mode === "flamegraph" ? flamegraph(trace, s) : current.mode === "statistics" ? statistics(trace) : waterfall(trace, s);
  document.getElementById("trace").replaceChildren(header, modes, view, el("section", { id: "details", hidden: true }));
}

function waterfall(trace, s) {
  const { children, rows } = tree(trace);
  const critical = new Set();
  for (const root of children.get(null) || []) markCritical(root, children, critical, Infinity);
  const total = Math.max(1, s.duration);
  const view = el("div", {});
  view.append(el("p", { class: "legend" }, "Bars outlined in ", el("span", { class: "critical", textContent: "yellow" }), " are the critical path; red spans failed; g2 marks a span made by generation 2 of a trace filter."));
  const box = el("div", { class: "waterfall" });
  box.append(el("div", { class: "ruler" }, el("div", { textContent: "" }), el("div", {}, el("span", { textContent: "0" }), el("span", { textContent: ms(Math.round(total / 2)) }), el("span", { textContent: ms(total) }))));
  for (const { span, depth } of rows) {
    const service = serviceOf(trace, span);
    const label = el("div", { class: "label" }, chip(service), el("span", { class: "name", textContent: span.operationName }));
    const generation = tagValue(span, GENERATION);
    if (generation !== undefined) label.append(el("span", { class: "generation", textContent: "g" + generation, title: "made by generation " + generation + " of this trace filter" }));
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
    if (isError(span)) row.classList.add("error");
    if (critical.has(span.spanID)) row.classList.add("critical");
    row.addEventListener("click", () => {
      box.querySelectorAll(".row").forEach((r) => r.classList.toggle("selected", r === row));
      showSpan(trace, span);
    });
    box.append(row);
  }
  view.append(box);
  return view;
}

// Spans stacked by depth under their parents, as wide as they last: where the time went, at a
// glance.
function flamegraph(trace, s) {
  const { rows } = tree(trace);
  const total = Math.max(1, s.duration);
  const depth = Math.max(0, ...rows.map((r) => r.depth)) + 1;
  const graph = el("div", { class: "flamegraph" });
  graph.style.height = depth * 24 + "px";
  for (const { span, depth: level } of rows) {
    const service = serviceOf(trace, span);
    const frame = el("div", { class: isError(span) ? "flame error" : "flame", textContent: span.operationName, title: service + ": " + span.operationName + " · " + ms(span.duration) });
    frame.dataset.spanId = span.spanID;
    frame.style.left = ((span.startTime - s.start) / total) * 100 + "%";
    frame.style.width = Math.max((span.duration / total) * 100, 0.3) + "%";
    frame.style.top = level * 24 + "px";
    frame.style.background = color(service);
    frame.addEventListener("click", () => showSpan(trace, span));
    graph.append(frame);
  }
  return el("div", {}, el("p", { class: "legend", textContent: "Each span under its parent, as wide as it lasted; click one for its details." }), graph);
}

// Self time by service and operation: where the trace's time was spent, not waited.
function statistics(trace) {
  const { children } = tree(trace);
  const groups = new Map();
  let totalSelf = 0;
  for (const span of trace.spans) {
    const key = serviceOf(trace, span) + "\u0000" + span.operationName;
    const group = groups.get(key) || { service: serviceOf(trace, span), operation: span.operationName, count: 0, total: 0, self: 0, errors: 0 };
    const own = selfTime(span, children);
    group.count += 1;
    group.total += span.duration;
    group.self += own;
    group.errors += isError(span) ? 1 : 0;
    totalSelf += own;
    groups.set(key, group);
  }
  const sorted = [...groups.values()].sort((a, b) => b.self - a.self);
  const head = el("tr", {}, ...["Service", "Operation", "Spans", "Errors", "Total", "Self time", "Avg self", "% of self time"].map((t) => el("th", { textContent: t })));
  const body = sorted.map((g) =>
    el("tr", { "data-service": g.service, "data-operation": g.operation, "data-self-us": String(g.self) },
      el("td", {}, chip(g.service)),
      el("td", { textContent: g.operation }),
      el("td", { class: "number", textContent: String(g.count) }),
      el("td", { class: g.errors ? "number errors" : "number", textContent: String(g.errors) }),
      el("td", { class: "number", textContent: ms(g.total) }),
      el("td", { class: "number self", textContent: ms(g.self) }),
      el("td", { class: "number", textContent: ms(Math.round(g.self / g.count)) }),
      el("td", { class: "number", textContent: ((g.self / Math.max(1, totalSelf)) * 100).toFixed(1) + " %" })));
  return el("div", {}, el("p", { class: "legend", textContent: "Self time: a span's duration less the time its children ran inside it." }), el("table", { class: "statistics" }, el("thead", {}, head), el("tbody", {}, ...body)));
}

function table(rows) {
  return el("table", {}, ...rows.map(([key, value]) => el("tr", {}, el("td", { textContent: key }), el("td", { textContent: typeof value === "string" ? value : JSON.stringify(value) }))));
}

function showSpan(trace, span) {
  const details = document.getElementById("details");
  const process = trace.processes[span.processID];
  const kind = tagValue(span, "span.kind") || "unspecified";
  const status = tagValue(span, "otel.status_code") || "UNSET";
  const parent = span.references.find((r) => r.refType === "CHILD_OF");
  const rows = [
    ["service", process.serviceName],
    ["kind", kind],
    ["status", status],
    ["duration", ms(span.duration)],
    ["start", new Date(span.startTime / 1000).toISOString()],
    ["span id", span.spanID],
    ["parent span id", parent ? parent.spanID : "(root)"],
  ];
  const generation = tagValue(span, GENERATION);
  if (generation !== undefined) {
    const sha = tagValue(span, MODULE_SHA256);
    rows.push(["made by", "trace filter generation " + generation + (sha ? ", module sha256 " + String(sha).slice(0, 12) + "…" : "")]);
  }
  const parts = [
    el("h3", { textContent: span.operationName }),
    table(rows),
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

// --- compare --------------------------------------------------------------------------------

// Two traces side by side, span by span: spans match by their path from the root (service and
// name of each ancestor) and their place among spans of the same path.
async function compare(idA, idB) {
  let a, b;
  try {
    [a, b] = await Promise.all([fetchTrace(idA), fetchTrace(idB)]);
  } catch (e) {
    showError(e.message);
    return;
  }
  history.replaceState(null, "", "/compare/" + a.traceID + "/" + b.traceID);
  document.getElementById("results-panel").hidden = true;
  const keyed = (trace) => {
    const seen = new Map();
    const out = new Map();
    for (const { span, depth, path } of tree(trace).rows) {
      const n = (seen.get(path) || 0) + 1;
      seen.set(path, n);
      out.set(path + (n > 1 ? " #" + n : ""), { span, depth });
    }
    return out;
  };
  const left = keyed(a), right = keyed(b);
  const keys = [...new Set([...left.keys(), ...right.keys()])];
  const sa = summary(a), sb = summary(b);
  const rows = keys.map((key) => {
    const x = left.get(key), y = right.get(key);
    const depth = (x || y).depth;
    const span = (x || y).span;
    const trace = x ? a : b;
    const delta = x && y ? y.span.duration - x.span.duration : null;
    const name = el("td", { class: "name" }, chip(serviceOf(trace, span)), span.operationName);
    name.style.paddingLeft = 8 + depth * 16 + "px";
    const deltaCell = el("td", { class: "number delta", textContent: delta === null ? (x ? "only in A" : "only in B") : (delta >= 0 ? "+" : "−") + ms(Math.abs(delta)) });
    if (delta !== null) deltaCell.classList.add(delta > 0 ? "slower" : delta < 0 ? "faster" : "same");
    else deltaCell.classList.add(x ? "only-a" : "only-b");
    const row = el("tr", { "data-span-key": key }, name,
      el("td", { class: "number", textContent: x ? ms(x.span.duration) : "–" }),
      el("td", { class: "number", textContent: y ? ms(y.span.duration) : "–" }),
      deltaCell);
    if (delta !== null) row.dataset.deltaUs = String(delta);
    return row;
  });
  const back = el("button", { type: "button", id: "back", textContent: "◀ Results" });
  back.addEventListener("click", backToResults);
  const head = el("tr", {}, el("th", { textContent: "Span" }), el("th", { textContent: "A " + a.traceID.slice(0, 8) }), el("th", { textContent: "B " + b.traceID.slice(0, 8) }), el("th", { textContent: "B − A" }));
  document.getElementById("trace").replaceChildren(
    el("div", { class: "trace-header" }, back,
      el("h2", { textContent: "Compare " + sa.name + " and " + sb.name }),
      el("p", { textContent: "A " + a.traceID + " · " + ms(sa.duration) + " · " + sa.spans + " spans   |   B " + b.traceID + " · " + ms(sb.duration) + " · " + sb.spans + " spans" })),
    el("table", { class: "compare" }, el("thead", {}, head), el("tbody", {}, ...rows)));
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
document.querySelectorAll("#results th[data-sort]").forEach((th) => th.addEventListener("click", () => sortBy(th.dataset.sort)));
document.getElementById("compare").addEventListener("click", () => {
  const ids = picked();
  if (ids.length === 2) compare(ids[0], ids[1]);
});
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
    if (deep) return openTrace(deep[1]);
    const pair = location.pathname.match(/^\/compare\/([0-9a-fA-F]{1,32})\/([0-9a-fA-F]{1,32})$/);
    if (pair) return compare(pair[1], pair[2]);
    return search();
  })
  .catch((e) => showError(e.message));
