// eventfold console: plain JavaScript over the query API's JSON; nothing loaded from elsewhere.
// The API key lives in sessionStorage only (gone when the tab closes) and is sent as a bearer
// token; the page never writes it back into the document. The server checks every scope.
"use strict";

const KEY = "eventfold.apiKey";
const POLL_MS = 1500;
const HISTORY = 60; // lag samples kept per partition for the chart
const COLORS = ["#1d4ed8", "#b91c1c", "#166534", "#7c3aed", "#c2410c", "#0f766e", "#be185d", "#4d7c0f"];

const state = {
  scopes: [],
  lag: new Map(), // name -> Map(partition -> [lag...])
  rebuilds: new Map(), // name -> {target, samples: [[t, progress]]}
  cards: new Map(), // name -> {root, fields}
  tail: null,
  types: [],
  polling: null,
};

const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) node.append(c);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function notice(message, error = false) {
  const n = $("#notice");
  n.textContent = message;
  n.classList.toggle("error", error);
}

const pretty = (v) => JSON.stringify(v, null, 2);
const num = (v) => (v === null || v === undefined ? "unknown" : Number(v).toLocaleString("en"));

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const token = options.token ?? sessionStorage.getItem(KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const problem = await response.json();
      detail = `${problem.title || response.status}: ${problem.detail || problem.code}`;
    } catch (_) { /* not a problem document */ }
    const err = new Error(detail);
    err.status = response.status;
    throw err;
  }
  return response.json();
}

// --- sign-in -----------------------------------------------------------------------------

async function signIn(event) {
  event.preventDefault();
  const input = $("#api-key");
  const token = input.value.trim();
  input.value = "";
  try {
    const session = await api("/console/api/session", { token });
    sessionStorage.setItem(KEY, token);
    await signedIn(session);
    notice(`Signed in as ${session.key_id}.`);
  } catch (err) {
    notice(`Sign-in refused (${err.message}).`, true);
    input.focus();
  }
}

function signOut() {
  sessionStorage.removeItem(KEY);
  stopTail();
  clearInterval(state.polling);
  state.polling = null;
  state.scopes = [];
  $("#signed-in").hidden = true;
  $("#sign-in").hidden = false;
  notice("Signed out; the key is forgotten.");
  $("#api-key").focus();
}

async function signedIn(session) {
  state.scopes = session.scopes;
  $("#who").textContent = `${session.key_id} (${session.scopes.join(", ")})`;
  $("#sign-in").hidden = true;
  $("#signed-in").hidden = false;
  const admin = state.scopes.includes("admin");
  for (const b of document.querySelectorAll("[data-needs=admin]")) {
    b.disabled = !admin;
    b.title = admin ? "" : "needs an admin key";
  }
  await loadStreamTypes();
  await Promise.all([refreshStatus(), refreshDeadLetters()]);
  if (!state.polling) state.polling = setInterval(refreshStatus, POLL_MS);
}

async function start() {
  $("#sign-in").addEventListener("submit", signIn);
  $("#sign-out").addEventListener("click", signOut);
  $("#dl-refresh").addEventListener("click", refreshDeadLetters);
  $("#dl-redrive-all").addEventListener("click", () => redrive(null));
  $("#stream-form").addEventListener("submit", exploreStream);
  $("#tail-form").addEventListener("submit", startTail);
  $("#tail-stop").addEventListener("click", stopTail);
  $("#tail-type").addEventListener("change", fillEventTypes);
  try {
    // With a key from this tab's session, or with authentication off, no sign-in is needed.
    await signedIn(await api("/console/api/session"));
  } catch (err) {
    sessionStorage.removeItem(KEY);
    $("#sign-in").hidden = false;
    if (err.status !== 401) notice(err.message, true);
  }
}

// --- status ------------------------------------------------------------------------------

async function refreshStatus() {
  let body;
  try {
    body = await api("/projections");
  } catch (err) {
    notice(`Status: ${err.message}`, true);
    return;
  }
  $("#status-server").hidden = true;
  const rows = [
    ...body.projections.map((p) => ({ ...p, kind: "projection" })),
    ...body.reactors,
    ...body.process_managers,
  ];
  for (const row of rows) renderCard(row);
}

function card(row) {
  let c = state.cards.get(row.name);
  if (c) return c;
  const f = {};
  const field = (label, key) => {
    f[key] = el("dd");
    return [el("dt", { text: label }), f[key]];
  };
  const dl = el("dl", {}, ...field("State", "state"), ...field("Events applied", "applied"),
    ...field("Lag", "lag"), ...field("Generation", "generation"), ...field("Dead letters", "dead"));
  f.chart = svg("svg", { class: "chart", viewBox: "0 0 300 70", preserveAspectRatio: "none",
    role: "img", "aria-label": `lag per partition of ${row.name}` });
  f.legend = el("p", { class: "legend" });
  const root = el("article", { class: "card", "data-name": row.name },
    el("h3", {}, el("span", { text: row.name }), el("span", { class: "muted", text: row.kind })),
    dl, el("p", { class: "legend", text: "Lag per partition, last 90 s" }), f.chart, f.legend);
  if (row.kind === "projection") {
    f.progress = el("progress", { class: "progress", max: "1", value: "0", hidden: true,
      "aria-label": `rebuild progress of ${row.name}` });
    f.rebuild = el("p", { "data-role": "rebuild-state", "aria-live": "polite" });
    const button = el("button", { type: "button", "data-needs": "admin", text: "Rebuild",
      "aria-label": `Rebuild ${row.name}`, onclick: () => startRebuild(row.name) });
    button.disabled = !state.scopes.includes("admin");
    root.append(el("div", { class: "toolbar" }, button), f.progress, f.rebuild);
  }
  $("#status-cards").append(root);
  c = { root, f };
  state.cards.set(row.name, c);
  return c;
}

function renderCard(row) {
  const { f } = card(row);
  f.state.textContent = row.state + (row.detail ? ` — ${row.detail}` : "");
  f.state.className = `state-${row.state}`;
  f.applied.textContent = num(row.events_applied);
  f.lag.textContent = num(row.lag);
  f.generation.textContent = row.generation;
  const reasons = Object.entries(row.failures_by_reason || {}).map(([r, n]) => `${r}: ${n}`);
  f.dead.textContent = reasons.length ? reasons.join(", ") : num(row.dead_letters);
  drawLag(row, f);
  if (f.rebuild) showRebuild(row, f);
}

function drawLag(row, f) {
  let byPart = state.lag.get(row.name);
  if (!byPart) state.lag.set(row.name, (byPart = new Map()));
  for (const p of row.partitions) {
    const id = `${p.topic.split(".").slice(-2, -1)[0]}/${p.partition}`;
    const series = byPart.get(id) || [];
    series.push(p.lag ?? 0);
    if (series.length > HISTORY) series.shift();
    byPart.set(id, series);
  }
  const max = Math.max(1, ...[...byPart.values()].flat());
  f.chart.replaceChildren();
  let i = 0;
  const legend = [];
  for (const [id, series] of byPart) {
    const color = COLORS[i++ % COLORS.length];
    const points = series.map((v, x) => `${(x * 300) / (HISTORY - 1)},${68 - (v / max) * 64}`).join(" ");
    f.chart.append(svg("polyline", { points, fill: "none", stroke: color, "stroke-width": "2" }));
    legend.push(`${id}: ${series[series.length - 1]}`);
  }
  f.legend.textContent = `max ${max} · ` + legend.join(" · ");
}

async function startRebuild(name) {
  try {
    const started = await api(`/projections/${encodeURIComponent(name)}/rebuild`, { method: "POST" });
    state.rebuilds.set(name, { target: started.generation, samples: [] });
    notice(`Rebuild of ${name} started: generation ${started.generation}.`);
    refreshStatus();
  } catch (err) {
    notice(`Rebuild of ${name}: ${err.message}`, true);
  }
}

function showRebuild(row, f) {
  const watch = state.rebuilds.get(row.name);
  const running = row.rebuild_progress !== null && row.rebuild_progress !== undefined;
  f.progress.hidden = !running;
  if (running) {
    f.progress.value = row.rebuild_progress;
    let eta = "";
    if (watch) {
      watch.samples.push([Date.now(), row.rebuild_progress]);
      const [t0, p0] = watch.samples[0];
      const rate = (row.rebuild_progress - p0) / ((Date.now() - t0) / 1000);
      if (rate > 0) eta = `, ETA to the swap ${Math.ceil((1 - row.rebuild_progress) / rate)} s`;
    }
    f.rebuild.textContent = `Rebuilding: ${Math.round(row.rebuild_progress * 100)} %${eta} (${row.rebuild_detail || ""})`;
  } else if (watch && row.generation >= watch.target) {
    f.rebuild.textContent = `Swapped in generation ${row.generation}.`;
  } else if (watch) {
    f.rebuild.textContent = "Rebuild starting…";
  }
}

// --- dead letters ------------------------------------------------------------------------

async function refreshDeadLetters() {
  let body;
  try {
    body = await api("/console/api/dead-letters?limit=200");
  } catch (err) {
    notice(`Dead letters: ${err.message}`, true);
    return;
  }
  $("#dl-count").textContent = `${body.total} recorded`;
  const rows = body.dead_letters.map((d) => {
    const button = el("button", { type: "button", "data-needs": "admin", text: "Re-drive",
      "aria-label": `Re-drive dead letter ${d.id}`, onclick: () => redrive(d.id) });
    button.disabled = !state.scopes.includes("admin") || !d.redrivable;
    const shown = d.value ? d.value.json ?? d.value.text ?? `base64: ${d.value.base64}` : null;
    return el("tr", { "data-id": d.id },
      el("td", { text: d.id }),
      el("td", { text: `${d.name} (${d.kind || "not served"})` }),
      el("td", {}, el("strong", { text: d.reason })),
      el("td", { text: `${d.topic} [${d.partition}] @${d.offset}, key ${d.key ?? "none"}` }),
      el("td", {}, el("p", { text: d.detail }),
        el("details", {}, el("summary", { text: "Headers and value" }),
          el("h4", { text: "Headers" }), el("pre", { text: d.headers.map(([k, v]) => `${k}: ${v}`).join("\n") }),
          el("h4", { text: "Value" }), el("pre", { text: typeof shown === "string" ? shown : pretty(shown) }))),
      el("td", {}, button));
  });
  $("#dl-table tbody").replaceChildren(...rows);
  if (!rows.length) $("#dl-table tbody").append(el("tr", {}, el("td", { colspan: "6", text: "No dead letters." })));
}

async function redrive(id) {
  const path = id === null ? "/console/api/dead-letters/redrive" : `/console/api/dead-letters/${id}/redrive`;
  try {
    const body = await api(path, { method: "POST" });
    const results = id === null ? Object.entries(body.results) : [[body.name, body]];
    const text = results.map(([n, r]) =>
      `${n}: retried ${r.retried}, applied ${r.applied}, already applied ${r.duplicates}, still failing ${r.still_failing}`);
    notice(`Re-drive done. ${text.join("; ") || "Nothing to re-drive."}`);
  } catch (err) {
    notice(`Re-drive: ${err.message}`, true);
  }
  await Promise.all([refreshDeadLetters(), refreshStatus()]);
}

// --- stream explorer ---------------------------------------------------------------------

async function loadStreamTypes() {
  const body = await api("/console/api/stream-types");
  state.types = body.stream_types;
  for (const select of document.querySelectorAll(".stream-types")) {
    select.replaceChildren(...state.types.map((t) => el("option", { value: t.name, text: t.name })));
  }
  fillEventTypes();
}

function fillEventTypes() {
  const chosen = state.types.find((t) => t.name === $("#tail-type").value);
  $("#tail-event").replaceChildren(el("option", { value: "", text: "any" }),
    ...(chosen ? chosen.events : []).map((e) => el("option", { value: e, text: e })));
}

async function exploreStream(event) {
  event?.preventDefault();
  const type = $("#se-type").value;
  const id = $("#se-id").value.trim();
  let body;
  try {
    body = await api(`/console/api/streams/${encodeURIComponent(type)}/${encodeURIComponent(id)}`);
  } catch (err) {
    notice(`Stream explorer: ${err.message}`, true);
    return;
  }
  const t = body.topic;
  const events = t.events.map((e) => el("tr", { class: e.duplicate ? "dup" : null },
    el("td", { text: e.offset }), el("td", { text: e.version ?? "—" }),
    el("td", { text: e.type ?? `poison: ${e.poison}` }), el("td", { text: e.schema_version ?? "—" }),
    el("td", {}, el("pre", { text: e.data ? pretty(e.data) : e.detail }))));
  const where = t.partition === null ? `${t.name} does not exist yet` : `${t.name}, partition ${t.partition}`;
  $("#se-events").replaceChildren(
    el("p", { class: "muted", text: `${where}; ${t.events.length} events of ${t.scanned} records read${t.complete ? "" : " (partial: the partition is larger than one read)"}` }),
    el("table", { class: "grid", "data-role": "stream-events" },
      el("thead", {}, el("tr", {}, ...["Offset", "Version", "Type", "Schema", "Data"].map((h) => el("th", { scope: "col", text: h })))),
      el("tbody", {}, ...events)));
  const w = body.write_side;
  $("#se-write").replaceChildren(w
    ? el("div", { "data-role": "write-side" },
      el("p", { text: `Version ${w.version}, ${w.unpublished} unpublished` }), el("pre", { text: pretty(w.state) }))
    : el("p", { class: "muted", text: "No such stream in the write store." }));
  $("#se-docs").replaceChildren(...Object.entries(body.documents).map(([name, doc]) =>
    el("div", { "data-role": "document", "data-projection": name }, el("h4", { text: name }),
      doc ? el("pre", { text: pretty(doc) }) : el("p", { class: "muted", text: "No document." }))));
}

function openInExplorer(type, id) {
  $("#se-type").value = type;
  $("#se-id").value = id;
  location.hash = "#streams";
  exploreStream();
}

// --- live tail ---------------------------------------------------------------------------

async function startTail(event) {
  event.preventDefault();
  stopTail();
  const type = $("#tail-type").value;
  const params = new URLSearchParams();
  if ($("#tail-event").value) params.set("event_type", $("#tail-event").value);
  if ($("#tail-id").value.trim()) params.set("stream_id", $("#tail-id").value.trim());
  const controller = new AbortController();
  state.tail = controller;
  $("#tail-stop").disabled = false;
  $("#tail-state").textContent = "Connecting…";
  const headers = { Accept: "text/event-stream" };
  const token = sessionStorage.getItem(KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const response = await fetch(`/console/api/tail/${encodeURIComponent(type)}?${params}`,
      { headers, signal: controller.signal });
    if (!response.ok) {
      const problem = await response.json().catch(() => ({}));
      throw new Error(problem.detail || `${response.status}`);
    }
    await readEvents(response.body.getReader(), (kind, data) => onTailEvent(type, kind, data));
    if (state.tail === controller) $("#tail-state").textContent = "The server ended the tail.";
  } catch (err) {
    if (err.name !== "AbortError") $("#tail-state").textContent = `Tail failed: ${err.message}`;
  } finally {
    if (state.tail === controller) {
      state.tail = null;
      $("#tail-stop").disabled = true;
    }
  }
}

function stopTail() {
  if (!state.tail) return;
  state.tail.abort();
  state.tail = null;
  $("#tail-stop").disabled = true;
  $("#tail-state").textContent = "Stopped.";
}

async function readEvents(reader, onEvent) {
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let kind = "message";
      let data = null;
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) kind = line.slice(7);
        else if (line.startsWith("data: ")) data = JSON.parse(line.slice(6));
      }
      if (data !== null) onEvent(kind, data);
    }
  }
}

function onTailEvent(type, kind, data) {
  if (kind === "ready") {
    $("#tail-state").textContent = `Listening on ${data.topic} (${data.partitions} partitions).`;
  } else if (kind === "closed") {
    $("#tail-state").textContent = `Closed: ${data.detail}`;
  } else if (kind === "event") {
    const open = el("button", { type: "button", class: "link", text: data.stream_id ?? "none",
      "aria-label": `Open ${data.stream_id} in the stream explorer`,
      onclick: () => openInExplorer(type, data.stream_id) });
    const row = el("tr", { "data-stream": data.stream_id, "data-type": data.type ?? "poison" },
      el("td", { text: `${data.partition}:${data.offset}` }), el("td", {}, open),
      el("td", { text: data.version ?? "—" }), el("td", { text: data.type ?? `poison: ${data.poison}` }),
      el("td", { text: data.schema_version ?? "—" }),
      el("td", {}, el("pre", { text: data.data ? JSON.stringify(data.data) : data.detail })));
    const body = $("#tail-table tbody");
    body.prepend(row);
    while (body.children.length > 200) body.lastChild.remove();
  }
}

document.addEventListener("DOMContentLoaded", start);
