// kelm's page: calls the server's own API (same origin, bearer token) and draws the graph as SVG.
// Every piece of data goes into the document through textContent, never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const state = { token: null, models: [], store: null, graph: null, answers: [], kind: null };

// -- the API -----------------------------------------------------------------------------------
function readToken() {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("kelm-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search); // keep it out of the address bar
  }
  return sessionStorage.getItem("kelm-token");
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token || ""}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await resp.json().catch(() => ({}));
  if (resp.status === 401 || (resp.status === 403 && data.detail === "wrong token")) askForToken(data.detail || "the token was refused");
  if (!resp.ok) {
    const err = new Error(describeError(data, resp.status));
    err.status = resp.status;
    err.suggestions = data.suggestions || [];
    throw err;
  }
  return data;
}

function describeError(data, status) {
  if (Array.isArray(data.detail)) return data.detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return data.detail ? String(data.detail) : `HTTP ${status}`;
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function askForToken(reason) {
  sessionStorage.removeItem("kelm-token");
  $("token-form").hidden = false;
  setStatus(reason, true);
}

// -- start -------------------------------------------------------------------------------------
async function connect() {
  state.token = readToken();
  if (!state.token) {
    askForToken("give the server's bearer token");
    return;
  }
  const info = await api("GET", "/v1/models");
  $("token-form").hidden = true;
  state.models = info.models;
  state.store = info.store;
  const names = info.models.filter((m) => m.kind !== "linker").map((m) => `${m.name} (${m.kind})`);
  const models = names.length > 3 ? `${names.length} models` : names.join(", ") || "no models";
  setStatus(`${models}${info.store ? ` · store: ${info.store.backend}` : ""}`);
  $("status").title = names.join("\n");
  $("search-section").hidden = !info.store;
  fillModels("ask", "ask-model", "ask-section");
  fillModels("link-prediction", "lp-model", "predict-section");
  fillRelations();
}

function fillModels(capability, selectId, sectionId) {
  const fits = state.models.filter((m) => m.capabilities.includes(capability));
  $(sectionId).hidden = fits.length === 0;
  const select = $(selectId);
  select.replaceChildren(...fits.map((m) => option(m.name, m.name)));
  select.hidden = fits.length < 2;
}

function fillRelations() {
  const model = state.models.find((m) => m.name === $("lp-model").value);
  const rels = (model && model.relations) || [];
  $("lp-relation").replaceChildren(...rels.map((r) => option(r.id, r.label && r.label !== r.id ? `${r.label} (${r.id})` : r.id)));
}

function option(value, text) {
  const o = document.createElement("option");
  o.value = value;
  o.textContent = text;
  return o;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// -- entity search and neighbourhoods ------------------------------------------------------------
async function search(q) {
  const list = $("search-results");
  const found = await api("GET", `/v1/entities?q=${encodeURIComponent(q)}&limit=15`);
  list.replaceChildren();
  if (!found.entities.length) list.append(el("li", "message", `no entity matches "${q}"`));
  for (const e of found.entities) {
    const li = el("li");
    li.dataset.id = e.id;
    li.append(el("span", "", e.label), el("span", "sub", `${e.id} · ${e.degree} facts`));
    li.addEventListener("click", () => neighbourhood(e.id));
    list.append(li);
  }
  if (found.entities.length === 1) await neighbourhood(found.entities[0].id);
}

async function neighbourhood(id) {
  const sg = await api("POST", "/v1/subgraph", { seeds: [id], hops: 1, max_entities: 31 });
  const facts = sg.facts.filter((f) => f.head === id || f.tail === id);
  const seed = sg.entities.find((e) => e.id === id);
  draw(sg.entities, facts, { seeds: [id] });
  $("graph-caption").textContent = `Neighbourhood of ${seed ? seed.label || id : id}: ${sg.entities.length - 1} entities, ${facts.length} facts${sg.truncated ? " (first 30 neighbours)" : ""}. Click a fact to see where it comes from, an entity to move there.`;
  if (!$("predict-section").hidden) $("lp-head").value = id;
}

// -- answers with evidence -----------------------------------------------------------------------
async function ask(question, model) {
  const body = { question, top: 10, paths: 3 };
  if (model) body.model = model;
  const res = await api("POST", "/v1/ask", body);
  const answers = res.answers.map((a) => ({
    id: a.id, label: a.name, score: a.score, known: null, paths: a.paths, names: a.evidence,
  }));
  showAnswers(`Answers to “${res.question}”`, answers, res.message, res.topic_id, res.topic);
}

async function predict(head, relation, model) {
  const body = { head, relation, k: 10 };
  if (model) body.model = model;
  const res = await api("POST", "/v1/link-prediction", body);
  const answers = res.answers.map((a) => ({ ...a, predicted: { head, relation, tail: a.id } }));
  showAnswers(`(${head}, ${relation}, ?)`, answers, answers.length ? null : "no answers", head, head);
}

function showAnswers(title, answers, message, topicId, topicLabel) {
  state.answers = answers;
  state.topic = { id: topicId, label: topicLabel };
  $("answers-section").hidden = false;
  $("answers-title").textContent = title;
  $("answers-message").textContent = message || "";
  $("paths").replaceChildren();
  const list = $("answers");
  list.replaceChildren();
  answers.forEach((a, i) => {
    const li = el("li");
    li.dataset.id = a.id;
    const name = el("span", "", `${i + 1}. ${a.label || a.id}`);
    const sub = el("span", "sub", `${a.score.toFixed(3)} · ${a.paths.length} path${a.paths.length === 1 ? "" : "s"}`);
    if (a.known) sub.prepend(el("span", "badge known", "known fact"), " ");
    li.append(name, sub);
    li.addEventListener("click", () => selectAnswer(i));
    list.append(li);
  });
  if (answers.length) return selectAnswer(0);
  draw(topicId ? [{ id: topicId, label: topicLabel }] : [], [], { seeds: topicId ? [topicId] : [] });
  $("graph-caption").textContent = message || "No answers.";
}

async function selectAnswer(i) {
  const a = state.answers[i];
  [...$("answers").children].forEach((li, j) => li.classList.toggle("selected", i === j));
  const paths = a.paths || [];
  const facts = paths.flat();
  const ids = new Set([state.topic.id, a.id, ...facts.flatMap((f) => [f.head, f.tail])].filter(Boolean));
  const labels = new Map([[a.id, a.label], [state.topic.id, state.topic.label]]);
  (a.names || []).flat().forEach((t, k) => {
    const f = facts[k];
    if (f) { labels.set(f.head, t[0]); labels.set(f.tail, t[2]); }
  });
  let entities = [...ids].map((id) => ({ id, label: labels.get(id) || id }));
  let drawn = facts;
  if (state.store) {
    try { // the store gives labels and provenance of the facts among these entities
      const sg = await api("POST", "/v1/subgraph", { seeds: [...ids], hops: 0, max_entities: ids.size });
      entities = sg.entities;
      const onPath = new Set(facts.map(key));
      drawn = sg.facts.filter((f) => onPath.has(key(f)));
    } catch (err) {
      if (err.status !== 404) throw err; // entities of a model's own graph that the store lacks
    }
  }
  const extra = a.predicted && !drawn.some((f) => key(f) === key(a.predicted)) ? [{ ...a.predicted, predicted: true }] : [];
  draw(entities, [...drawn, ...extra], { seeds: [state.topic.id], answers: [a.id], evidence: facts });
  showPaths(a, paths, entities);
  const n = paths.length;
  $("graph-caption").textContent = n
    ? `${a.label || a.id}: ${n} evidence path${n === 1 ? "" : "s"} from ${labelOf(entities, state.topic.id)}, drawn in red.`
    : `${a.label || a.id}: no fact path of at most 3 hops links it to ${labelOf(entities, state.topic.id)}.`;
}

function showPaths(a, paths, entities) {
  // each evidence path as text, walked from the query entity: —relation→ along a fact, ←relation— against it
  const box = $("paths");
  box.replaceChildren(el("p", "", paths.length ? `Why ${a.label || a.id}:` : `No evidence path for ${a.label || a.id}.`));
  for (const path of paths) {
    let at = state.topic.id;
    const line = el("div", "path", labelOf(entities, at));
    for (const f of path) {
      const forward = f.head === at;
      at = forward ? f.tail : f.head;
      line.append(" ", el("span", "rel", forward ? `—${f.relation}→` : `←${f.relation}—`), " ", labelOf(entities, at));
    }
    box.append(line);
  }
}

const key = (f) => `${f.head}\u0000${f.relation}\u0000${f.tail}`;
const labelOf = (entities, id) => (entities.find((e) => e.id === id) || {}).label || id;

// -- a fact and its source sentences ---------------------------------------------------------------
async function showFact(f, entities) {
  const box = $("details");
  $("details-section").hidden = false;
  const dl = el("dl");
  const rows = [["head", labelOf(entities, f.head)], ["relation", f.relation], ["tail", labelOf(entities, f.tail)]];
  if (f.predicted) rows.push(["status", "predicted, not in the store"]);
  if (f.source) rows.push(["source", f.source]);
  if (f.confidence !== null && f.confidence !== undefined) rows.push(["confidence", Number(f.confidence).toFixed(3)]);
  if (f.split) rows.push(["split", f.split]);
  for (const [k, v] of rows) dl.append(el("dt", "", k), el("dd", "", v));
  box.replaceChildren(dl);
  if (!state.store || f.predicted) return;
  const found = await api("POST", "/v1/evidence", { facts: [{ head: f.head, relation: f.relation, tail: f.tail }] });
  if (!found.evidence.length) {
    box.append(el("p", "message", f.source === "extracted" ? "no evidence left" : "imported, not extracted from text"));
    return;
  }
  for (const ev of found.evidence) box.append(sentence(ev));
}

function sentence(ev) {
  // the sentence with the head and tail mentions marked (spans are offsets in the document)
  const q = el("blockquote", "sentence");
  q.dataset.document = ev.document;
  const start = ev.span[0];
  const marks = [ev.head_span, ev.tail_span].map(([s, e]) => [s - start, e - start]).sort((x, y) => x[0] - y[0]);
  let at = 0;
  for (const [s, e] of marks) {
    if (s < at || e > ev.sentence.length) continue;
    q.append(ev.sentence.slice(at, s), el("mark", "", ev.sentence.slice(s, e)));
    at = e;
  }
  q.append(ev.sentence.slice(at));
  q.append(el("span", "source", `${ev.document} · ${ev.extractor} · score ${Number(ev.score).toFixed(3)}`));
  return q;
}

// -- drawing ---------------------------------------------------------------------------------------
function draw(entities, facts, { seeds = [], answers = [], evidence = [] } = {}) {
  const svg = $("graph");
  svg.replaceChildren(defs());
  $("details-section").hidden = true;
  const nodes = new Map(entities.map((e) => [e.id, { id: e.id, label: e.label || e.id }]));
  for (const f of facts) for (const id of [f.head, f.tail]) if (!nodes.has(id)) nodes.set(id, { id, label: id });
  const onPath = new Set(evidence.map(key));
  const pathNodes = new Set(evidence.flatMap((f) => [f.head, f.tail]));
  layout([...nodes.values()], facts, new Set(seeds));
  const pairs = new Map(); // parallel facts between one pair bend apart
  const edgeLayer = node("g", { class: "edges" });
  for (const f of facts) {
    const pair = [f.head, f.tail].sort().join("\u0000");
    const n = pairs.get(pair) || 0;
    pairs.set(pair, n + 1);
    const classes = ["edge"];
    if (onPath.has(key(f))) classes.push("evidence");
    if (f.source === "extracted") classes.push("extracted");
    if (f.predicted) classes.push("predicted");
    edgeLayer.append(edge(f, nodes.get(f.head), nodes.get(f.tail), n, classes, facts.length <= 40 || onPath.has(key(f)), entities));
  }
  const nodeLayer = node("g", { class: "nodes" });
  for (const v of nodes.values()) {
    const classes = ["node"];
    if (seeds.includes(v.id)) classes.push("seed");
    else if (answers.includes(v.id)) classes.push("answer");
    if (pathNodes.has(v.id)) classes.push("on-path");
    const g = node("g", { class: classes.join(" "), "data-id": v.id, transform: `translate(${v.x.toFixed(1)},${v.y.toFixed(1)})` });
    const title = node("title");
    title.textContent = `${v.label} (${v.id})`;
    const text = node("text", { x: 11, y: 4 });
    text.textContent = v.label.length > 28 ? `${v.label.slice(0, 27)}…` : v.label;
    g.append(title, node("circle", { r: seeds.includes(v.id) ? 9 : 7 }), text);
    if (state.store) g.addEventListener("click", () => neighbourhood(v.id).catch(report));
    nodeLayer.append(g);
  }
  svg.append(edgeLayer, nodeLayer);
  svg.dataset.answer = answers[0] || "";  // what is drawn, for whoever waits on it
  svg.dataset.seed = seeds[0] || "";
  state.graph = { nodes, facts };
}

function edge(f, a, b, n, classes, labelled, entities) {
  const g = node("g", { class: classes.join(" "), "data-head": f.head, "data-relation": f.relation, "data-tail": f.tail });
  // bend the n-th fact between a pair to alternate sides (0, +40, -40, +80, …), sides taken in the
  // pair's id order so that facts in opposite directions do not overlap
  const [p, q] = a.id < b.id ? [a, b] : [b, a];
  const dx = q.x - p.x, dy = q.y - p.y, len = Math.hypot(dx, dy) || 1;
  const bend = (n % 2 ? 1 : -1) * Math.ceil(n / 2) * Math.max(40, 0.15 * len);
  const cx = (a.x + b.x) / 2 - (dy / len) * bend, cy = (a.y + b.y) / 2 + (dx / len) * bend;
  const end = shorten(cx, cy, b.x, b.y, 10);
  const d = `M${a.x.toFixed(1)},${a.y.toFixed(1)} Q${cx.toFixed(1)},${cy.toFixed(1)} ${end[0].toFixed(1)},${end[1].toFixed(1)}`;
  const marker = classes.includes("evidence") ? "url(#arrow-evidence)" : "url(#arrow)";
  const title = node("title");
  title.textContent = `${labelOf(entities, f.head)} —${f.relation}→ ${labelOf(entities, f.tail)}`;
  g.append(title, node("path", { class: "hit", d }), node("path", { class: "line", d, "marker-end": marker }));
  if (labelled) {
    // labels of parallel facts sit at staggered points of their curves, so they do not overlap
    const s = [0.5, 0.35, 0.65, 0.25, 0.75][n % 5], u = 1 - s;
    const x = u * u * a.x + 2 * s * u * cx + s * s * b.x, y = u * u * a.y + 2 * s * u * cy + s * s * b.y;
    const t = node("text", { x: x.toFixed(1), y: y.toFixed(1), "text-anchor": "middle" });
    t.textContent = f.relation.length > 24 ? `${f.relation.slice(0, 23)}…` : f.relation;
    g.append(t);
  }
  g.addEventListener("click", () => {
    document.querySelectorAll(".edge.selected").forEach((e) => e.classList.remove("selected"));
    g.classList.add("selected");
    showFact(f, entities).catch(report);
  });
  return g;
}

function shorten(x1, y1, x2, y2, by) {
  const dx = x2 - x1, dy = y2 - y1, len = Math.hypot(dx, dy) || 1;
  return [x2 - (dx / len) * by, y2 - (dy / len) * by];
}

function defs() {
  const d = node("defs");
  for (const id of ["arrow", "arrow-evidence"]) {
    const m = node("marker", {
      id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 9, markerHeight: 9,
      markerUnits: "userSpaceOnUse", orient: "auto-start-reverse",
    });
    m.append(node("path", { d: "M0,0 L10,5 L0,10 z" }));
    d.append(m);
  }
  return d;
}

function node(tag, attrs = {}) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

// A force-directed layout (repulsion between all nodes, springs along facts), deterministic:
// nodes start on a circle in id order, seeds in the middle, then it is fitted to the view box.
function layout(nodes, facts, seeds) {
  const W = 1000, H = 700, n = nodes.length;
  if (!n) return;
  const order = [...nodes].sort((a, b) => (a.id < b.id ? -1 : 1));
  order.forEach((v, i) => {
    const angle = (2 * Math.PI * i) / n;
    v.x = seeds.has(v.id) ? W / 2 + i : W / 2 + 250 * Math.cos(angle);
    v.y = seeds.has(v.id) ? H / 2 : H / 2 + 250 * Math.sin(angle);
  });
  const byId = new Map(nodes.map((v) => [v.id, v]));
  const springs = facts.map((f) => [byId.get(f.head), byId.get(f.tail)]).filter(([a, b]) => a && b && a !== b);
  const k = Math.sqrt((W * H) / Math.max(n, 1)) * 0.5;
  let heat = W / 10;
  for (let step = 0; step < 300; step++) {
    for (const v of nodes) { v.dx = 0; v.dy = 0; }
    for (let i = 0; i < n; i++) {
      for (let j = i + 1; j < n; j++) {
        const a = nodes[i], b = nodes[j];
        let dx = a.x - b.x, dy = a.y - b.y;
        const d2 = Math.max(dx * dx + dy * dy, 1);
        const f = (k * k) / d2;
        a.dx += dx * f; a.dy += dy * f; b.dx -= dx * f; b.dy -= dy * f;
      }
    }
    for (const [a, b] of springs) {
      const dx = a.x - b.x, dy = a.y - b.y, d = Math.max(Math.hypot(dx, dy), 1);
      const f = d / k;
      a.dx -= dx * f; a.dy -= dy * f; b.dx += dx * f; b.dy += dy * f;
    }
    for (const v of nodes) {
      v.dx += (W / 2 - v.x) * 0.02; v.dy += (H / 2 - v.y) * 0.02; // gravity keeps parts together
      const d = Math.max(Math.hypot(v.dx, v.dy), 1e-9), move = Math.min(d, heat);
      v.x += (v.dx / d) * move; v.y += (v.dy / d) * move;
    }
    heat *= 0.985;
  }
  const xs = nodes.map((v) => v.x), ys = nodes.map((v) => v.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const pad = 70, sx = (W - 2 * pad - 120) / Math.max(x1 - x0, 1), sy = (H - 2 * pad) / Math.max(y1 - y0, 1);
  const s = Math.min(sx, sy, 4);
  const ox = (W - 120 - s * (x1 - x0)) / 2, oy = (H - s * (y1 - y0)) / 2;
  for (const v of nodes) { v.x = ox + (v.x - x0) * s; v.y = oy + (v.y - y0) * s; }
}

// -- wiring -----------------------------------------------------------------------------------------
function report(err) {
  const hint = err.suggestions && err.suggestions.length ? ` (did you mean ${err.suggestions.join(", ")}?)` : "";
  $("answers-section").hidden = false;
  $("answers-message").textContent = `${err.message}${hint}`;
}

function on(formId, handler) {
  $(formId).addEventListener("submit", (ev) => {
    ev.preventDefault();
    Promise.resolve(handler()).catch(report);
  });
}

on("token-form", () => {
  sessionStorage.setItem("kelm-token", $("token").value.trim());
  return connect();
});
on("search-form", () => search($("search").value.trim()));
on("ask-form", () => ask($("question").value.trim(), $("ask-model").value));
on("predict-form", () => predict($("lp-head").value.trim(), $("lp-relation").value, $("lp-model").value));
$("lp-model").addEventListener("change", fillRelations);
connect().catch((err) => setStatus(err.message, true));
