// The falrt dashboard (docs/dashboard.md). Vanilla JS, no build step.
//
// Safety rules of this file: every value from the server (app names, logs, outputs) goes into
// the DOM as text (`textContent`, attributes), never as HTML; the key lives in this tab's
// sessionStorage and travels only in the Authorization header of same-origin fetches.
"use strict";

const KEY_ITEM = "falrt.dashboard.key";
const main = () => document.getElementById("main");

// -- DOM -------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function s(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  for (const child of children) node.append(child);
  return node;
}

function show(...nodes) {
  main().replaceChildren(...nodes.flat(Infinity).filter((n) => n !== null && n !== undefined && n !== false));
}
function time(t) { return t ? new Date(t * 1000).toLocaleString() : "—"; }
function ago(t) {
  const s = Math.max(0, Date.now() / 1000 - t);
  return s < 90 ? `${s.toFixed(0)} s` : s < 5400 ? `${(s / 60).toFixed(0)} min` : `${(s / 3600).toFixed(1)} h`;
}
function link(href, text) { return h("a", { href }, text); }
function table(headers, rows, attrs) {
  const body = rows instanceof HTMLTableSectionElement ? rows : h("tbody", {}, rows);
  return h("table", attrs, h("thead", {}, h("tr", {}, headers.map((t) => h("th", {}, t)))), body);
}

// -- the key and the API -----------------------------------------------------------------------

function key() { return sessionStorage.getItem(KEY_ITEM); }
function authHeaders(extra) { return { ...extra, Authorization: `Key ${key()}` }; }

class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

async function errorOf(response) {
  let detail = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch (_) { /* not fal's envelope */ }
  return new ApiError(response.status, detail);
}

async function api(path) {
  const response = await fetch(`/ui/api${path}`, { headers: authHeaders(), cache: "no-store" });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

function login(message) {
  sessionStorage.removeItem(KEY_ITEM);
  document.getElementById("sign-out").hidden = true;
  const input = h("input", { id: "key", type: "password", autocomplete: "off",
    placeholder: "KEY_ID:SECRET", "aria-label": "key" });
  const form = h("form", { id: "login", class: "card login", onsubmit: (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_ITEM, input.value.trim());
    route();
  } },
  h("h1", {}, "falrt dashboard"),
  h("p", {}, "An ADMIN key of this server (", h("code", {}, "falrt keys create --scope ADMIN"),
    ", or the server's admin.key). It stays in this tab only."),
  message ? h("p", { class: "error" }, message) : null,
  input, h("button", { type: "submit" }, "Open"));
  show(form);
  input.focus();
}

// -- pages -------------------------------------------------------------------------------------

async function route() {
  if (!key()) return login();
  document.getElementById("sign-out").hidden = false;
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  try {
    if (parts[0] === "apps" && parts[1]) await appPage(parts[1]);
    else if (parts[0] === "requests" && parts[1]) await requestPage(parts[1]);
    else if (parts[0] === "runners") await runnersPage();
    else await overviewPage();
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) login(error.message);
    else show(h("p", { class: "error" }, String(error.message || error)));
  }
}

function chart(title, series, unit) {
  return h("div", { class: "chart" }, h("div", { class: "muted" }, title),
    h("div", { class: "value" }, `${series.last}${unit}`),
    s("svg", { width: 300, height: 44, viewBox: "0 -2 300 44", role: "img" },
      s("polyline", { points: series.points || "0,40 300,40" })),
    h("div", { class: "muted" }, `max ${series.max}${unit}`));
}

function charts(history) {
  const { series } = history;
  const since = history.since ? `since ${time(history.since)}` : "no samples yet";
  return h("section", { id: "charts" },
    h("h2", {}, "Last hour ", h("span", { class: "muted" }, `(one sample per ${history.interval_s} s, ${since})`)),
    h("div", { class: "charts" }, chart("Queue depth", series.queue_depth, ""),
      chart("Requests finished", series.requests_per_s, "/s"), chart("Runners alive", series.runners, "")));
}

async function overviewPage() {
  const doc = await api("/overview");
  const rows = doc.apps.map((app) => h("tr", { "data-app": app.name },
    h("td", {}, link(`#/apps/${encodeURIComponent(app.name)}`, `${doc.owner}/${app.name}`)),
    h("td", { class: "mono" }, app.revision_id), h("td", {}, app.auth),
    h("td", {}, app.endpoints.map((e) => h("span", { class: "badge" }, `${e.path} ${e.kind}`))),
    h("td", {}, Object.entries(app.runners).map(([state, n]) => `${n} ${state}`).join(", ") || "none"),
    h("td", {}, app.queued), h("td", {}, ago(app.updated_at) + " ago")));
  show(h("h1", {}, "Apps"), charts(doc.history),
    h("h2", {}, "Deployed apps"),
    doc.apps.length ? table(["App", "Live revision", "Auth", "Endpoints", "Runners", "Queued", "Deployed"],
      rows, { id: "apps-table" }) : h("p", { id: "apps-table", class: "muted" }, "No apps: falrt deploy app.py::App"),
    h("h2", {}, "Runners"), runnersTable(doc.runners, doc.now));
}

async function runnersPage() {
  const doc = await api("/overview");
  show(h("h1", {}, "Runners"), runnersTable(doc.runners, doc.now));
}

function timeline(runner, now) {
  const start = runner.timeline.length ? runner.timeline[0].start : now;
  const span = Math.max(now - start, 1e-3);
  const svg = s("svg", { class: "timeline", width: 260, height: 14, viewBox: "0 0 260 14" });
  for (const seg of runner.timeline) {
    const x = ((seg.start - start) / span) * 260;
    const w = Math.max(((seg.end - seg.start) / span) * 260, 1);
    const title = s("title", {});
    title.textContent = `${seg.state} from ${time(seg.start)} for ${(seg.end - seg.start).toFixed(1)} s`;
    svg.append(s("rect", { x: x.toFixed(1), y: 0, width: w.toFixed(1), height: 14,
      class: `state-${seg.state}` }, title));
  }
  return svg;
}

function gpus(runner) {
  if (!runner.gpus.length) return "—";
  return runner.gpus.map((g) => h("div", { class: "mono" },
    `${g.utilization_percent}% · ${(g.memory_used_bytes / 2 ** 30).toFixed(1)}/${(g.memory_total_bytes / 2 ** 30).toFixed(1)} GiB`));
}

const STATES = ["PENDING", "IMAGE_PULL", "SETUP", "CRASH_BACKOFF", "IDLE", "RUNNING", "DRAINING",
  "TERMINATING", "TERMINATED"];

function legend() {
  return h("p", { class: "legend muted" }, STATES.map((state) => h("span", {},
    s("svg", { width: 10, height: 10 }, s("rect", { width: 10, height: 10, class: `state-${state}` })),
    ` ${state} `)));
}

function runnersTable(runners, now) {
  if (!runners.length) return h("p", { class: "muted", id: "runners-table" }, "No runners.");
  const rows = runners.map((r) => h("tr", {},
    h("td", { class: "mono" }, r.runner_id), h("td", {}, r.app_name),
    h("td", {}, r.state, r.last_error ? h("div", { class: "error" }, r.last_error) : null),
    h("td", {}, timeline(r, now)), h("td", {}, `${r.in_flight}/${r.max_multiplexing}`),
    h("td", {}, r.served), h("td", {}, r.machine_type), h("td", {}, gpus(r))));
  return h("div", { id: "runners-table" },
    table(["Runner", "App", "State", "Timeline", "Slots", "Served", "Machine", "GPUs"], rows), legend());
}

// -- the playground ----------------------------------------------------------------------------

async function appPage(name) {
  const app = await api(`/apps/${encodeURIComponent(name)}`);
  show(h("h1", {}, app.endpoint_id),
    h("p", {}, "Live revision ", h("code", {}, app.revision_id), ` · auth ${app.auth} · `,
      `${app.queued} queued`, app.revision_message ? ` · “${app.revision_message}”` : ""),
    app.waiting_reason ? h("p", { class: "error" }, app.waiting_reason) : null,
    app.endpoints.map((endpoint) => playground(app, endpoint)),
    h("h2", {}, "Runners"), h("div", { id: "app-runners" }, runnersTable(app.runner_list, Date.now() / 1000)));
}

async function refreshRunners(app) {
  // After a playground call: the runner it started, or the one that served it.
  const fresh = await api(`/apps/${encodeURIComponent(app.name)}`);
  const box = document.getElementById("app-runners");
  if (box) box.replaceChildren(runnersTable(fresh.runner_list, Date.now() / 1000));
}

function fieldInput(field, prefix) {
  const id = `${prefix}-${field.name}`;
  const value = field.default ? JSON.parse(field.default) : null;
  if (field.kind === "boolean") return h("input", { id, name: field.name, type: "checkbox", checked: value === true });
  if (field.kind === "enum") {
    return h("select", { id, name: field.name },
      field.required ? null : h("option", { value: "" }, "—"),
      field.choices.map((choice) => h("option", { value: choice, selected: choice === field.default }, JSON.parse(choice))));
  }
  if (field.kind === "json") {
    const area = h("textarea", { id, name: field.name, placeholder: "JSON" });
    area.value = field.default;
    return area;
  }
  const input = h("input", { id, name: field.name, type: field.kind === "string" ? "text" : "number",
    step: field.kind === "number" ? "any" : null, required: field.required });
  input.value = value === null ? "" : String(value);
  return input;
}

function formValue(form, fields) {
  if (!fields) return JSON.parse(form.elements.namedItem("input").value || "{}");
  const body = {};
  for (const field of fields) {
    const input = form.elements.namedItem(field.name);
    if (field.kind === "boolean") { body[field.name] = input.checked; continue; }
    const text = input.value;
    if (text === "") {
      if (field.required) throw new Error(`${field.title} is required`);
      continue;
    }
    if (field.kind === "string") body[field.name] = text;
    else if (field.kind === "integer" || field.kind === "number") body[field.name] = Number(text);
    else body[field.name] = JSON.parse(text);  // json, enum: JSON text
  }
  return body;
}

function playground(app, endpoint) {
  const out = h("div", { class: "output", id: `output-${endpoint.path}` });
  const section = h("section", { class: "card", "data-endpoint": endpoint.path },
    h("h2", {}, h("code", {}, endpoint.path), ` ${endpoint.name} `, h("span", { class: "badge" }, endpoint.kind)));
  if (endpoint.kind === "realtime") {
    section.append(h("p", { class: "muted" }, "A realtime endpoint: open a WebSocket to ",
      h("code", {}, `/${app.endpoint_id}${endpoint.path}`), " (docs/http.md)."));
    return section;
  }
  const prefix = `field${endpoint.path.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  const controls = endpoint.fields
    ? endpoint.fields.map((field) => h("div", {},
      h("label", { for: `${prefix}-${field.name}` }, field.title, field.required ? " *" : ""),
      field.description ? h("div", { class: "muted" }, field.description) : null, fieldInput(field, prefix)))
    : [h("label", { for: `${prefix}-input` }, "Input (JSON)"),
      h("textarea", { id: `${prefix}-input`, name: "input" }, "{}")];
  const form = h("form", { class: "playground", id: `playground-${endpoint.path}`, autocomplete: "off",
    onsubmit: (event) => {
      event.preventDefault();
      let body;
      try { body = formValue(form, endpoint.fields); } catch (error) {
        out.replaceChildren(h("p", { class: "error" }, error.message));
        return;
      }
      const call = endpoint.kind === "stream" ? streamCall : queueCall;
      call(app, endpoint, body, out).catch((error) => out.append(h("p", { class: "error" }, error.message)))
        .finally(() => refreshRunners(app).catch(() => {}));
    } }, controls, h("button", { type: "submit" }, "Run"));
  section.append(form, out);
  return section;
}

function endpointUrl(prefix, app, endpoint) {
  const tail = endpoint.path === "/" ? "" : endpoint.path;
  return `${prefix}/${app.endpoint_id}${tail}`;
}

async function* events(response) {
  // The JSON of each server-sent event of a fetch response, as it arrives.
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const kind = (chunk.match(/^event: (.*)$/m) || [])[1] || "message";
      const data = chunk.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data) yield { kind, data: JSON.parse(data) };
    }
  }
}

async function post(url, body) {
  const response = await fetch(url, { method: "POST", body: JSON.stringify(body),
    headers: authHeaders({ "Content-Type": "application/json" }) });
  if (!response.ok) throw await errorOf(response);
  return response;
}

async function queueCall(app, endpoint, body, out) {
  const statuses = h("ul", { class: "statuses" });
  const logs = h("tbody", {});
  const result = h("div", { class: "result" });
  out.replaceChildren(statuses, table(["Time", "Log"], logs, { class: "logs" }), result);
  const submitted = await (await post(endpointUrl("/queue", app, endpoint), body)).json();
  const id = submitted.request_id;
  statuses.append(h("li", {}, `${new Date().toLocaleTimeString()} submitted `,
    link(`#/requests/${encodeURIComponent(id)}`, id)));
  const base = `/queue/${app.endpoint_id}/requests/${encodeURIComponent(id)}`;
  const response = await fetch(`${base}/status/stream?logs=1`, { headers: authHeaders() });
  if (!response.ok) throw await errorOf(response);
  let last = "";
  for await (const { data } of events(response)) {
    if (data.status !== last) statuses.append(h("li", {}, `${new Date().toLocaleTimeString()} ${data.status}`));
    last = data.status;
    for (const line of data.logs || []) logs.append(logRow(line.timestamp, line.message));
  }
  const answer = await fetch(base, { headers: authHeaders() });
  if (!answer.ok) throw await errorOf(answer);
  result.replaceChildren(renderOutput(await answer.json()));
}

async function streamCall(app, endpoint, body, out) {
  const partials = h("div", { class: "partials" });
  const latest = h("div", { class: "result" });
  out.replaceChildren(latest, h("details", {}, h("summary", {}, "every partial output"), partials));
  const response = await post(endpointUrl("", app, endpoint), body);
  let count = 0;
  for await (const { kind, data } of events(response)) {
    if (kind === "error") { out.append(h("p", { class: "error" }, `${data.error_type}: ${data.detail}`)); return; }
    count += 1;
    partials.append(h("pre", {}, JSON.stringify(data)));
    latest.replaceChildren(h("p", { class: "muted" }, `output ${count}`), renderOutput(data));
  }
}

function logRow(timestamp, message) {
  const t = typeof timestamp === "number" ? time(timestamp) : new Date(timestamp).toLocaleString();
  return h("tr", {}, h("td", {}, t), h("td", { class: "mono" }, message));
}

// -- outputs -----------------------------------------------------------------------------------

function imageUrl(value) {
  if (typeof value !== "string") return null;
  if (/^data:image\/(png|jpe?g|gif|webp|svg\+xml);base64,/i.test(value)) return value;
  if (/^https?:\/\/\S+\.(png|jpe?g|gif|webp|svg)(\?\S*)?$/i.test(value)) return value;
  return null;
}

function imageOf(value) {
  // An image URL or data URI, or fal's image object ({url, content_type: "image/…"}).
  if (!value || typeof value !== "object" || Array.isArray(value)) return imageUrl(value);
  const url = typeof value.url === "string" ? value.url : "";
  if (/^image\//.test(value.content_type || "") && /^(https?:|data:image\/)/i.test(url)) return url;
  return imageUrl(url);
}

function renderValue(value, name) {
  const image = imageOf(value);
  if (image) return h("img", { src: image, alt: name || "output image" });
  if (Array.isArray(value)) return h("div", {}, value.map((v, i) => renderValue(v, `${name}[${i}]`)));
  if (value && typeof value === "object") {
    return h("dl", {}, Object.entries(value).map(([k, v]) => [h("dt", {}, k), h("dd", {}, renderValue(v, k))]));
  }
  return h("span", { class: typeof value === "string" ? "" : "mono" }, typeof value === "string" ? value : JSON.stringify(value));
}

function renderOutput(value) {
  return h("div", {}, renderValue(value, "output"),
    h("details", {}, h("summary", {}, "JSON"), h("pre", {}, JSON.stringify(value, null, 2))));
}

// -- a request ---------------------------------------------------------------------------------

async function requestPage(id) {
  const doc = await api(`/requests/${encodeURIComponent(id)}`);
  showRequest(doc);
  if (doc.status !== "COMPLETED") followRequest(doc).catch(() => {});
}

function showRequest(doc) {
  const result = doc.result === null ? h("p", { class: "muted" }, "No result yet.")
    : doc.result.error ? h("div", { class: "error" }, h("p", {}, `${doc.result.error.error_type}: ${doc.result.error.message}`),
      doc.result.error.traceback ? h("pre", {}, doc.result.error.traceback) : null)
      : h("div", { class: "output" }, doc.result.output.value === null
        ? h("p", { class: "muted" }, `${doc.result.output.size_bytes} bytes of ${doc.result.output.content_type}`)
        : renderOutput(doc.result.output.value),
      h("p", { class: "muted" }, `inference ${doc.result.inference_time_s.toFixed(4)} s`));
  show(h("h1", {}, "Request ", h("code", {}, doc.request_id)),
    h("section", { class: "card" }, h("dl", { class: "facts" },
      h("dt", {}, "App"), h("dd", {}, link(`#/apps/${encodeURIComponent(doc.app_name)}`, doc.endpoint_id), ` ${doc.path}`),
      h("dt", {}, "Status"), h("dd", { id: "request-status" }, doc.status,
        doc.status === "IN_QUEUE" ? ` (position ${doc.queue_position})` : "", doc.waiting_reason ? ` — ${doc.waiting_reason}` : ""),
      h("dt", {}, "Submitted"), h("dd", {}, time(doc.times.submitted)),
      h("dt", {}, "Completed"), h("dd", {}, time(doc.times.completed)),
      h("dt", {}, "Attempts"), h("dd", {}, doc.attempts),
      h("dt", {}, "Runner"), h("dd", { class: "mono" }, doc.runner_id || "—"),
      h("dt", {}, "Priority"), h("dd", {}, doc.priority))),
    h("h2", {}, "Input"), h("pre", {}, JSON.stringify(doc.input.value, null, 2)),
    h("h2", {}, "Logs"), doc.logs.length
      ? table(["Time", "Source", "Message"], doc.logs.map((l) => h("tr", {}, h("td", {}, time(l.timestamp)),
        h("td", {}, l.source), h("td", { class: "mono" }, l.message))), { id: "logs", class: "logs" })
      : h("p", { id: "logs", class: "muted" }, "No log lines."),
    h("h2", {}, "Result"), result);
}

async function followRequest(doc) {
  // Shows the page again each time the request changes (its status stream, with logs, says
  // when), until it completes or the page shows something else.
  const id = encodeURIComponent(doc.request_id);
  const response = await fetch(`/queue/${doc.endpoint_id}/requests/${id}/status/stream?logs=1`,
    { headers: authHeaders() });
  if (!response.ok) return;
  const here = location.hash;
  for await (const _ of events(response)) {
    if (location.hash !== here) return;
    const fresh = await api(`/requests/${id}`);
    if (location.hash !== here) return;
    showRequest(fresh);
  }
}

// -- start -------------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
document.getElementById("sign-out").addEventListener("click", () => { login(); });
document.getElementById("find-request").addEventListener("submit", (event) => {
  event.preventDefault();
  const id = document.getElementById("find-request-id").value.trim();
  if (id) location.hash = `#/requests/${encodeURIComponent(id)}`;
});
route();
