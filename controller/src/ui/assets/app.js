// weft's mesh page: polls ./api/mesh and draws it. No framework, no library, and
// nothing fetched from anywhere but the controller. Data goes into the page as
// text nodes only (never as HTML), so a service or pod name cannot inject markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const TOKEN_KEY = "weft-token";
let pollTimer = null;

// --- the token: from the URL's fragment (never sent to the server), kept per tab.
function takeToken() {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

// --- small DOM helpers.
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(typeof c === "string" || typeof c === "number" ? String(c) : c);
  }
  return e;
}
function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(typeof c === "string" ? document.createTextNode(c) : c);
  return e;
}

// --- number formats.
const fmtRate = (r) => (r >= 100 ? r.toFixed(0) : r >= 10 ? r.toFixed(1) : r.toFixed(2)) + "/s";
const fmtPct = (s) => (s === null || s === undefined ? "–" : (s * 100).toFixed(s >= 0.999 || s === 0 ? 0 : 1) + "%");
const fmtMs = (ms) => (ms === null || ms === undefined ? "–" : ms >= 100 ? ms.toFixed(0) + " ms" : ms.toFixed(1) + " ms");
const fmtCount = (n) => Math.round(n).toLocaleString("en-US");
function fmtBytes(b) {
  if (b < 1024) return b + " B";
  if (b < 1048576) return (b / 1024).toFixed(1) + " KiB";
  return (b / 1048576).toFixed(1) + " MiB";
}
function fmtAge(ms) {
  const s = Math.round(ms / 1000);
  return s < 60 ? s + " s" : s < 3600 ? Math.floor(s / 60) + " min " + (s % 60) + " s" : Math.floor(s / 3600) + " h";
}

// --- the topology: services in columns by how far down the call chain they are.
function layout(names, edges) {
  const rank = new Map(names.map((n) => [n, 0]));
  // Longest path from a caller; bounded passes, so a cycle cannot loop forever.
  for (let pass = 0; pass < names.length; pass++) {
    let changed = false;
    for (const e of edges) {
      if (e.source === e.destination) continue;
      const r = rank.get(e.source) + 1;
      if (r > rank.get(e.destination)) { rank.set(e.destination, r); changed = true; }
    }
    if (!changed) break;
  }
  const columns = [];
  for (const n of names) {
    const r = Math.min(rank.get(n), names.length);
    (columns[r] = columns[r] || []).push(n);
  }
  return columns.filter(Boolean);
}

function edgeClass(e) {
  // No request lately (or an edge without HTTP): nothing to judge.
  if (e.success === null || e.success === undefined) return "idle";
  if (e.success >= 0.99) return "ok";
  if (e.success >= 0.95) return "degraded";
  return "failing";
}

function drawTopology(data) {
  const box = document.getElementById("topology");
  const services = new Map(data.services.map((s) => [s.name, s]));
  const names = [...services.keys()];
  const W = 270, H = 64, GAPX = 200, GAPY = 40, PAD = 20;
  const columns = layout(names, data.edges);
  const pos = new Map();
  const rows = Math.max(1, ...columns.map((c) => c.length));
  columns.forEach((col, i) => col.forEach((n, j) => {
    const offset = ((rows - col.length) * (H + GAPY)) / 2;
    pos.set(n, { x: PAD + i * (W + GAPX), y: PAD + offset + j * (H + GAPY) });
  }));
  const width = PAD * 2 + columns.length * W + Math.max(0, columns.length - 1) * GAPX;
  const height = PAD * 2 + rows * H + (rows - 1) * GAPY;
  // Drawn at its natural size (text stays the size of the page's), shrunk only
  // when wider than the window.
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img", "aria-label": "service topology" });
  root.append(svg("defs", {},
    ...["ok", "degraded", "failing", "idle"].map((k) => svg("marker", {
      id: "arrow-" + k, viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse",
    }, svg("path", { d: "M0,0 L10,5 L0,10 z", fill: { ok: "#0072B2", degraded: "#E69F00", failing: "#D55E00", idle: "#555" }[k] })))));
  for (const e of data.edges) {
    const a = pos.get(e.source), b = pos.get(e.destination);
    if (!a || !b) continue;
    const cls = edgeClass(e);
    const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x - 4, y2 = b.y + H / 2;
    const d = e.source === e.destination
      ? `M${a.x + W - 30},${a.y} C${a.x + W},${a.y - 60} ${a.x + W + 60},${a.y} ${a.x + W},${a.y + 20}`
      : `M${x1},${y1} C${(x1 + x2) / 2},${y1} ${(x1 + x2) / 2},${y2} ${x2},${y2}`;
    const g = svg("g", {
      class: "edge " + cls, "data-edge": e.source + "->" + e.destination,
      "data-requests": String(Math.round(e.requests)), "data-connections": String(Math.round(e.connections)),
    });
    g.append(svg("path", { d, "marker-end": `url(#arrow-${cls})` }));
    const lines = e.requests > 0
      ? [`${fmtCount(e.requests)} req · ${fmtRate(e.rate_per_s)}`, `${fmtPct(e.success)} ok · p99 ${fmtMs(e.p99_ms)}`]
      : [`${fmtCount(e.connections)} conn · ${fmtRate(e.connections_per_s)}`];
    const lx = (x1 + x2) / 2, ly = (y1 + y2) / 2 - 8 * lines.length;
    g.append(svg("rect", { class: "label-bg", x: lx - 88, y: ly - 13, width: 176, height: 17 * lines.length + 4, rx: 3 }));
    lines.forEach((t, i) => g.append(svg("text", { class: "label", x: lx, y: ly + i * 17, "text-anchor": "middle" }, t)));
    g.append(svg("title", {}, `${e.source} → ${e.destination}: ${lines.join(", ")}`));
    root.append(g);
  }
  for (const [name, p] of pos) {
    const s = services.get(name);
    const served = s.endpoints.filter((x) => x.served).length;
    const sub = s.defined
      ? `${s.vip} · ${served} of ${s.endpoints.length} endpoint${s.endpoints.length === 1 ? "" : "s"} served`
      : name === "unknown" ? "callers without a sidecar" : "no service's address";
    const g = svg("g", { class: "node" + (s.defined ? "" : " undefined"), "data-service": name, "data-endpoints": String(s.endpoints.length) });
    g.append(svg("rect", { x: p.x, y: p.y, width: W, height: H, rx: 6 }));
    g.append(svg("text", { class: "name", x: p.x + 10, y: p.y + 24 }, name));
    g.append(svg("text", { class: "sub", x: p.x + 10, y: p.y + 46 }, sub));
    root.append(g);
  }
  if (data.services.length === 0) root.append(svg("text", { x: PAD, y: PAD + 20 }, "no services yet"));
  box.replaceChildren(root);
}

// --- a service's golden signals as sparklines.
function sparkline(kind, label, values, t, fmt, fixedMax) {
  const W = 200, H = 34;
  const pts = [];
  const t0 = t[0], t1 = t[t.length - 1];
  const nums = values.filter((v) => v !== null && v !== undefined);
  const max = fixedMax !== undefined ? fixedMax : Math.max(1e-9, ...nums);
  values.forEach((v, i) => {
    if (v === null || v === undefined) return;
    const x = t1 > t0 ? ((t[i] - t0) / (t1 - t0)) * W : W;
    pts.push(`${x.toFixed(1)},${(H - 2 - (v / max) * (H - 4)).toFixed(1)}`);
  });
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": label + " over time" },
    svg("polyline", { points: pts.join(" ") }));
  if (pts.length === 0) chart.append(svg("text", { x: 6, y: 22, class: "sub" }, "no requests yet"));
  const last = nums.length ? nums[nums.length - 1] : null;
  return el("div", { class: "spark " + kind, "data-signal": kind },
    el("span", {}, label), chart, el("span", { class: "value" }, last === null ? "–" : fmt(last)));
}

function drawServices(data) {
  const mins = Math.round(data.window_s / 60);
  document.getElementById("window-hint").textContent =
    `Golden signals per service over the last ${mins} minutes, one point per ${data.interval_ms / 1000} s refresh (latest value on the right).`;
  const cards = data.services.map((s) => {
    const sig = s.signals || { t_ms: [], rate_per_s: [], success: [], p99_ms: [] };
    const pods = s.endpoints.map((e) => e.pod || e.address);
    return el("div", { class: "card", "data-service": s.name },
      el("h3", {}, s.name),
      el("div", { class: "meta" }, s.defined
        ? `${s.vip} ports ${s.ports.map((p) => p.port + "→" + p.target_port).join(", ")} · endpoints: ${pods.join(", ") || "none"}`
        : "seen in the proxies' metrics, defined by no source"),
      sparkline("rate", "requests", sig.rate_per_s, sig.t_ms, fmtRate),
      sparkline("success", "success", sig.success, sig.t_ms, fmtPct, 1),
      sparkline("p99", "p99 latency", sig.p99_ms, sig.t_ms, fmtMs));
  });
  document.getElementById("services").replaceChildren(...cards);
}

// --- pods: the sidecar's readiness and its connections.
function drawPods(data) {
  const nodes = data.pods.map((p) => {
    const state = p.ready === true ? "ready" : p.ready === false ? "not-ready" : "unknown";
    const text = { ready: "✓ ready", "not-ready": "✗ not ready", unknown: "? unreachable" }[state];
    const head = el("h3", {},
      el("span", {}, p.pod),
      el("span", { class: "badge " + state, title: p.ready_detail }, text),
      el("span", { class: "meta" }, `service ${p.service} · ${p.address}` + (p.ready === true ? "" : ` · ${p.ready_detail}`)));
    const box = el("div", { class: "pod", "data-pod": p.pod, "data-service": p.service, "data-ready": String(p.ready) }, head);
    if (p.metrics_error) box.append(el("div", { class: "problem" }, "metrics: " + p.metrics_error));
    if (!p.connections) {
      box.append(el("div", { class: "problem" }, "connections: " + (p.connections_error || "not read")));
      return box;
    }
    const live = p.connections.filter((c) => c.state === "open");
    const closed = p.connections.length - live.length;
    box.append(el("div", { class: "meta" }, `${live.length} live connection${live.length === 1 ? "" : "s"}, ${closed} recently closed`));
    if (live.length) {
      const rows = live.map((c) => el("tr", { "data-conn": String(c.id), "data-direction": c.direction },
        el("td", {}, String(c.id)), el("td", {}, c.direction), el("td", {}, c.source),
        el("td", {}, c.original_destination), el("td", {}, c.service), el("td", {}, c.endpoint || "–"),
        el("td", {}, c.protocol + (c.tls ? " (mTLS)" : "")), el("td", {}, String(c.requests)),
        el("td", {}, fmtBytes(c.bytes_from_client) + " / " + fmtBytes(c.bytes_to_client)), el("td", {}, fmtAge(c.age_ms))));
      box.append(el("table", {},
        el("thead", {}, el("tr", {}, ...["id", "direction", "source", "original destination", "service", "endpoint", "protocol", "requests", "bytes in / out", "age"].map((h) => el("th", {}, h)))),
        el("tbody", {}, ...rows)));
    }
    return box;
  });
  document.getElementById("pods").replaceChildren(...(nodes.length ? nodes : [el("p", { class: "empty" }, "no proxy has subscribed yet")]));
}

function drawBadEdits(data) {
  const items = data.bad_edits.map((e) => el("li", { "data-line": e.line === null ? "" : String(e.line) },
    el("span", { class: "when" }, new Date(e.at).toLocaleTimeString()),
    el("span", { class: "where" }, e.line === null ? e.origin : `${e.origin} line ${e.line}` + (e.column ? `, column ${e.column}` : "")),
    ": ", e.message));
  document.getElementById("bad-edits").replaceChildren(...(items.length ? items : [el("li", { class: "empty" }, "none since the controller started")]));
}

// --- polling.
function setStatus(text, error) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.classList.toggle("error", !!error);
}

async function refresh() {
  let interval = 2000;
  try {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = token ? { Authorization: "Bearer " + token } : {};
    const r = await fetch("api/mesh", { headers, cache: "no-store" });
    if (r.status === 401 || r.status === 403) {
      document.getElementById("login").hidden = false;
      setStatus("the controller refused the token", true);
      return; // no more polls until a token is given
    }
    if (!r.ok) throw new Error("api/mesh answered " + r.status);
    const data = await r.json();
    interval = data.interval_ms || interval;
    document.getElementById("login").hidden = true;
    drawTopology(data);
    drawServices(data);
    drawPods(data);
    drawBadEdits(data);
    document.body.dataset.version = String(data.version);
    document.body.dataset.refreshedAt = String(data.gathered_at_ms || "");
    setStatus(`mesh version ${data.version} · ${data.pods.length} pods · refreshed ${new Date().toLocaleTimeString()}`);
  } catch (err) {
    setStatus("cannot reach the controller: " + err.message, true);
  }
  pollTimer = setTimeout(refresh, interval);
}

document.getElementById("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
  clearTimeout(pollTimer);
  refresh();
});

takeToken();
refresh();
