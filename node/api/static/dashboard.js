// rakis node dashboard: plain JS, no build step, nothing loaded from outside.
// Data comes from the node's JSON API; /v1/events (server-sent events) triggers
// refreshes, and a slow timer catches anything an event did not announce.
// Everything from the network (prompts, answers, ids) is inserted as text, never HTML.
"use strict";

const STAGES = ["queued", "inferring", "committed", "revealing", "verifying", "done"];
const FINAL = new Set(["succeeded", "failed", "expired"]);
const SVG_NS = "http://www.w3.org/2000/svg";
let selectedId = null;
let knownModels = [];

// ---- helpers ------------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

const short = (s, n = 10) => (s ? String(s).slice(0, n) : "–");
const num = (x, d = 2) => (typeof x === "number" && isFinite(x) ? x.toFixed(d) : "–");
const secs = (ts) => (typeof ts === "number" ? (ts > 1e12 ? ts / 1000 : ts) : null);

function ago(ts) {
  const t = secs(ts);
  if (t === null) return "–";
  const d = Math.max(0, Date.now() / 1000 - t);
  if (d < 60) return `${d.toFixed(0)}s ago`;
  if (d < 3600) return `${(d / 60).toFixed(0)}m ago`;
  return `${(d / 3600).toFixed(1)}h ago`;
}

function duration(s) {
  if (typeof s !== "number") return "–";
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = Math.floor(s % 60);
  return h ? `${h}h ${m}m` : m ? `${m}m ${r}s` : `${r}s`;
}

async function getJSON(path) {
  const r = await fetch(path, { headers: { accept: "application/json" } });
  if (!r.ok) throw new Error(`${path}: HTTP ${r.status}`);
  return r.json();
}

function fillTable(id, rows, emptyId) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows);
  if (emptyId) document.getElementById(emptyId).hidden = rows.length > 0;
}

// ---- the cluster plot ---------------------------------------------------------------
// Points are the facade's embedding_plot: [{inference_id, node_id, x, y, in_cluster}].
function clusterPlot(points, size, labels) {
  const pad = size * 0.1;
  const plot = svg("svg", {
    class: "cluster-plot",
    width: size,
    height: size,
    viewBox: `0 0 ${size} ${size}`,
    role: "img",
    "data-points": points.length,
    "data-in-cluster": points.filter((p) => p.in_cluster).length,
  });
  plot.append(svg("title", {}, `${points.length} outputs, ${points.filter((p) => p.in_cluster).length} in the winning cluster`));
  if (!points.length) return plot;
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad + ((x - x0) / (x1 - x0 || 1)) * (size - 2 * pad);
  const sy = (y) => size - pad - ((y - y0) / (y1 - y0 || 1)) * (size - 2 * pad);
  const r = Math.max(3, size / 40);
  // Identical outputs project to one spot: spread each such group on a small ring so
  // every node stays visible (and clickable for its tooltip).
  const groups = new Map();
  const placed = points.map((p) => {
    const cx = x1 === x0 ? size / 2 : sx(p.x), cy = y1 === y0 ? size / 2 : sy(p.y);
    const key = `${Math.round(cx / r)},${Math.round(cy / r)}`;
    if (!groups.has(key)) groups.set(key, []);
    const item = { p, cx, cy };
    groups.get(key).push(item);
    return item;
  });
  for (const group of groups.values()) {
    if (group.length < 2) continue;
    const ring = r * (1.2 + group.length * 0.25);
    group.forEach((item, i) => {
      const a = (2 * Math.PI * i) / group.length - Math.PI / 2;
      item.cx += ring * Math.cos(a);
      item.cy += ring * Math.sin(a);
    });
  }
  for (const { p, cx, cy } of placed) {
    const dot = svg("circle", { cx, cy, r, class: p.in_cluster ? "point in" : "point out" });
    dot.append(svg("title", {}, `${p.in_cluster ? "in cluster" : "outlier"} · node ${short(p.node_id, 12)} · inference ${short(p.inference_id, 12)}`));
    plot.append(dot);
    if (labels) {
      const right = cx > size * 0.7;  // keep labels inside the plot
      plot.append(svg("text", { x: right ? cx - r - 3 : cx + r + 3, y: cy + 4, fill: "#8a99ad", "font-size": 10, "text-anchor": right ? "end" : "start" }, short(p.node_id, 6)));
    }
  }
  return plot;
}

// ---- sections -----------------------------------------------------------------------
function stageChips(req) {
  const at = STAGES.indexOf(req.stage);
  return el("div", { class: "stages" }, STAGES.map((s, i) =>
    el("span", { class: `stage ${i < at || req.stage === "done" ? "done" : ""} ${i === at && req.stage !== "done" ? "current" : ""}`, text: s })));
}

function requestRow(req) {
  const plot = Array.isArray(req.embedding_plot) && req.embedding_plot.length && FINAL.has(req.state)
    ? clusterPlot(req.embedding_plot, 64, false) : "–";
  const outcome = el("span", { class: `badge ${req.state}`, text: req.state });
  return el("tr", {
    class: `request-row ${req.request_id === selectedId ? "selected" : ""}`,
    "data-request-id": req.request_id,
    "data-state": req.state,
    onclick: () => selectRequest(req.request_id),
  },
  el("td", {}, el("code", { text: short(req.request_id, 12), title: req.request_id })),
  el("td", { text: short(req.prompt, 60) }),
  el("td", {}, stageChips(req)),
  el("td", {}, outcome, req.reason ? el("div", { class: "err", text: req.reason }) : null),
  el("td", { text: `${(req.commits || []).length} / ${(req.reveals || []).length}` }),
  el("td", {}, plot));
}

async function refreshRequests() {
  const { requests } = await getJSON("/v1/requests?limit=50");
  fillTable("requests", requests.map(requestRow), "requests-empty");
  if (!selectedId && requests.length) selectedId = requests[0].request_id;
  if (selectedId) await showDetail(selectedId);
}

async function selectRequest(id) {
  selectedId = id;
  document.querySelectorAll("tr.request-row").forEach((tr) => tr.classList.toggle("selected", tr.dataset.requestId === id));
  await showDetail(id);
}

async function showDetail(id) {
  let req;
  try { req = await getJSON(`/v1/requests/${id}`); } catch { return; }
  const section = document.getElementById("request-detail");
  section.hidden = false;
  section.dataset.requestId = id;
  document.getElementById("detail-id").textContent = id;
  const fields = [
    ["state", el("span", { class: `badge ${req.state}`, text: req.state })],
    ["stage", req.stage],
    ["reason", req.reason || "–"],
    ["prompt", req.prompt || "–"],
    ["answer", req.answer || "–"],
    ["models", (req.accepted_models || []).join(", ")],
    ["frame", req.security_frame ? `quorum ${req.security_frame.quorum}, distance ${req.security_frame.sec_distance}, ${Math.round(req.security_frame.sec_percentage * 100)}%` : "–"],
    ["members", (req.members || []).map((m) => short(m.node_id, 10)).join(", ") || "–"],
    ["commits", (req.commits || []).map((c) => short(c.node_id, 10)).join(", ") || "–"],
    ["reveals", (req.reveals || []).map((r) => `${short(r.node_id, 10)}${r.accepted ? "" : ` (rejected: ${r.reason})`}${r.recheck ? ` [re-check: ${r.recheck.status}]` : ""}`).join(", ") || "–"],
    ["re-check", req.recheck ? `${req.recheck}${req.answer_rule ? `, answer rule: ${req.answer_rule}` : ""}` : "–"],
    ["created", req.created_at ? new Date(secs(req.created_at) * 1000).toLocaleTimeString() : "–"],
    ["finished", req.finished_at ? new Date(secs(req.finished_at) * 1000).toLocaleTimeString() : "–"],
  ];
  document.getElementById("detail-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", {}, v)]));
  const points = req.embedding_plot || [];
  const holder = document.getElementById("detail-plot");
  holder.replaceChildren(points.length ? clusterPlot(points, 320, true) : el("p", { class: "empty", text: "The plot appears when the request is finished." }));
}

// A number, or the daemon's {accepted, rejected, missing, score?} counts.
function reputationScore(r) {
  if (typeof r === "number") return r;
  if (!r || typeof r !== "object") return null;
  if (typeof r.score === "number") return r.score;
  const a = r.accepted || 0, bad = (r.rejected || 0) + (r.missing || 0);
  return a + bad ? (a + 1) / (a + bad + 2) : null;
}

async function refreshPeers() {
  const { peers } = await getJSON("/v1/peers");
  document.getElementById("peer-count").textContent = peers.length;
  fillTable("peers", peers.map((p) => {
    const workers = typeof p.workers === "object" && p.workers !== null
      ? (Array.isArray(p.workers) ? p.workers.length : Object.entries(p.workers).map(([m, n]) => `${m}: ${n}`).join(", "))
      : p.workers;
    const rep = reputationScore(p.reputation);
    return el("tr", { class: "peer-row", "data-peer-id": p.peer_id },
      el("td", {}, el("code", { text: short(p.peer_id, 16), title: `${p.peer_id}\nnode ${p.node_id}\n${(p.addrs || []).join("\n")}` })),
      el("td", { text: (p.models || []).join(", ") || "–" }),
      el("td", { text: workers ?? "–" }),
      el("td", { text: num(p.load) }),
      el("td", { text: p.queue_depth ?? "–" }),
      el("td", {}, rep === null ? "–" : [el("span", { class: "bar", style: `width:${Math.round(Math.max(0, Math.min(1, rep)) * 60)}px` }), ` ${num(rep)}`]),
      el("td", { text: ago(p.last_seen) }));
  }), "peers-empty");
}

async function refreshWorkers() {
  const { workers } = await getJSON("/v1/workers");
  fillTable("workers", workers.map((w) => el("tr", { class: "worker-row" },
    el("td", {}, el("code", { text: w.worker_id || "–" })),
    el("td", { text: w.model || "–" }),
    el("td", { text: w.kind || "–" }),
    el("td", {}, el("span", { class: `badge ${w.state === "failed" ? "bad" : w.state === "ready" || w.state === "busy" ? "ok" : ""}`, text: w.state || "–" })),
    el("td", { text: w.active_requests !== undefined ? `${w.active_requests}/${w.capacity ?? "?"}` : "–" }),
    el("td", { text: num(w.tokens_per_s ?? w.texts_per_s, 1) }))));
  const models = [...new Set(workers.filter((w) => w.kind !== "embedding").map((w) => w.model).filter(Boolean))];
  if (models.join() !== knownModels.join()) {
    knownModels = models;
    document.getElementById("scale-model").replaceChildren(...models.map((m) => el("option", { value: m, text: m })));
  }
}

async function refreshNode() {
  const info = await getJSON("/v1/node");
  document.getElementById("node-id").textContent = short(info.node_id, 16);
  document.getElementById("node-id").title = info.node_id || "";
  const ready = document.getElementById("node-ready");
  ready.textContent = info.ready ? "ready" : "not ready";
  ready.className = `badge ${info.ready ? "ok" : "bad"}`;
  document.getElementById("node-uptime").textContent = duration(info.uptime_s);
  const kv = (obj) => Object.entries(obj || {}).map(([k, v]) => el("div", {}, el("b", { text: Math.round(v) }), k));
  const queues = kv(info.queue_depths);
  document.getElementById("queues").replaceChildren(...(queues.length ? queues : [el("div", {}, el("b", { text: 0 }), "queued")]));
  document.getElementById("outcomes").replaceChildren(...kv(info.outcomes));
  document.getElementById("scale-form").hidden = !info.admin_enabled;
  const committee = info.committee;
  const share = document.getElementById("committee-share");
  share.hidden = !(committee && committee.enabled);
  if (committee && committee.enabled) {
    const pct = committee.share == null ? "–" : `${Math.round(committee.share * 100)}%`;
    document.getElementById("committee-share-value").textContent = pct;
    share.title = `committee sortition: ran ${committee.ran} (widened ${committee.widened}), ` +
      `not selected ${committee.not_selected}, commits ignored ${committee.ignored_commits}`;
  }
}

function verdictClass(v) {
  const s = String(v || "");
  if (s.startsWith("reject") || s.startsWith("drop") || s.startsWith("invalid")) return "bad";
  if (s.startsWith("accept")) return "ok";
  return "sent";
}

async function refreshPackets() {
  const { packets } = await getJSON("/v1/packets?limit=30");
  fillTable("packets", packets.map((p) => el("tr", { class: "packet-row" },
    el("td", { text: secs(p.ts) ? new Date(secs(p.ts) * 1000).toLocaleTimeString() : "–" }),
    el("td", { text: p.type }),
    el("td", {}, el("code", { text: short(p.from, 10), title: p.from || "" })),
    el("td", { text: p.size ?? "–" }),
    el("td", {}, el("span", { class: `badge ${verdictClass(p.verdict)}`, text: p.verdict || "–" })))));
}

async function refreshLogs() {
  const search = document.getElementById("log-search").value.trim();
  const q = new URLSearchParams({ last_n: "200" });
  if (search) q.set("search", search);
  const { logs } = await getJSON(`/v1/logs?${q}`);
  const lines = logs.map((r) => {
    const ts = secs(r.ts ?? r.timestamp);
    const when = ts ? new Date(ts * 1000).toLocaleTimeString() : "";
    const skip = new Set(["ts", "timestamp", "seq", "source", "event", "level", "message"]);
    const rest = Object.entries(r)
      .filter(([k, v]) => !skip.has(k) && v !== null && v !== undefined && !(typeof v === "object" && !Object.keys(v).length))
      .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`);
    const head = [when, r.source ? `[${r.source}]` : "", r.event || "", r.message || ""].filter(Boolean).join(" ");
    return `${head}${rest.length ? "  " + rest.join(" ") : ""}`;
  });
  document.getElementById("logs").textContent = lines.length ? lines.join("\n") : "(no matching log entries)";
}

// ---- refresh scheduling and live updates -------------------------------------------
const refreshers = { node: refreshNode, peers: refreshPeers, workers: refreshWorkers, requests: refreshRequests, packets: refreshPackets, logs: refreshLogs };
const pending = new Set();
let timer = null;

function schedule(...names) {
  names.forEach((n) => pending.add(n));
  if (timer) return;
  timer = setTimeout(async () => {
    const todo = [...pending];
    pending.clear();
    timer = null;
    await Promise.all(todo.map((n) => refreshers[n]().catch((e) => console.warn(n, e))));
  }, 200);
}

function connect() {
  const live = document.getElementById("live");
  const source = new EventSource("/v1/events");
  source.onopen = () => { live.textContent = "live"; live.className = "badge ok"; };
  source.onerror = () => { live.textContent = "reconnecting"; live.className = "badge off"; };
  source.onmessage = (msg) => {
    let ev;
    try { ev = JSON.parse(msg.data); } catch { return; }
    const type = String(ev.type || "");
    if (type.startsWith("peer")) schedule("peers", "node");
    else if (type.startsWith("worker")) schedule("workers", "node");
    else schedule("requests", "packets", "node");
  };
}

document.getElementById("log-form").addEventListener("submit", (e) => { e.preventDefault(); schedule("logs"); });

const tokenInput = document.getElementById("admin-token");
tokenInput.value = sessionStorage.getItem("rakis-admin-token") || "";
document.getElementById("scale-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const out = document.getElementById("scale-result");
  const token = tokenInput.value.trim();
  sessionStorage.setItem("rakis-admin-token", token);
  const body = { model: document.getElementById("scale-model").value, n: Number(document.getElementById("scale-n").value) };
  out.className = "";
  out.textContent = "scaling…";
  try {
    const r = await fetch("/v1/workers", {
      method: "POST",
      headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
      body: JSON.stringify(body),
    });
    const data = await r.json();
    if (!r.ok) throw new Error(data.error ? data.error.message : `HTTP ${r.status}`);
    out.className = "okmsg";
    out.textContent = `${body.model}: ${body.n} worker(s)`;
    schedule("workers", "node");
  } catch (err) {
    out.className = "err";
    out.textContent = err.message;
  }
});

connect();
schedule(...Object.keys(refreshers));
setInterval(() => schedule(...Object.keys(refreshers)), 5000);
