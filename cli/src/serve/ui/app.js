// The offsite dashboard: reads the JSON API of `offsite serve` (docs/api.md)
// with the token the user gives, kept in this tab's sessionStorage and sent
// as `Authorization: Bearer` on every request, and draws the page with DOM
// calls only. Never: parse a value from the API as HTML (text nodes and
// attributes only), or keep the token anywhere but sessionStorage.
"use strict";

const TOKEN_KEY = "offsite.token";
const REFRESH_MS = 60000;
const POLL_MS = 1000;
const SNAPSHOT_ROWS = 200;
const JOB_ROWS = 20;
const PRE_RESTORE = "pre-restore";

const state = { caller: null, data: null, timer: null, loading: false, again: false, polls: new Set() };
const $ = (id) => document.getElementById(id);

// ---- The API ----

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** A request with the token; the body of the answer, or an ApiError with the API's message. */
async function api(path, options = {}) {
  const headers = { Authorization: "Bearer " + sessionStorage.getItem(TOKEN_KEY) };
  if (options.body) headers["Content-Type"] = "application/json";
  let r;
  try {
    r = await fetch(path, { ...options, headers, cache: "no-store", credentials: "omit" });
  } catch (e) {
    throw new ApiError(0, "cannot reach offsite serve: " + e.message);
  }
  let body = null;
  try {
    body = await r.json();
  } catch (_) {
    // Not JSON: the status says enough.
  }
  if (!r.ok) throw new ApiError(r.status, (body && body.error) || "HTTP " + r.status);
  return body;
}

const canOperate = () => Boolean(state.caller && state.caller.scopes.includes("operate"));

// ---- DOM helpers: text only ----

/** An element with attributes and children (nodes, or strings as text nodes). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  setAttrs(e, attrs);
  e.append(...children.filter((c) => c !== null && c !== undefined).map(asNode));
  return e;
}

function svg(tag, attrs, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  setAttrs(e, attrs);
  e.append(...children.map(asNode));
  return e;
}

function setAttrs(e, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    e.setAttribute(k === "className" ? "class" : k, v === true ? "" : String(v));
  }
}

const asNode = (c) => (c instanceof Node ? c : document.createTextNode(String(c)));

function say(node, text) {
  node.textContent = text || "";
  node.hidden = !text;
}

// ---- Figures ----

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u += 1;
  }
  return u === 0 ? n + " B" : v.toFixed(1) + " " + units[u];
}

/** 93784 -> "1d 2h", 3720 -> "1h 2m", 75 -> "1m 15s". */
function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const [d, h, m, sec] = [Math.floor(s / 86400), Math.floor(s / 3600) % 24, Math.floor(s / 60) % 60, s % 60];
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + sec + "s";
  return sec + "s";
}

/** Local time as the command line prints it: "2026-11-23 10:00:00". */
function when(iso) {
  const d = new Date(iso);
  const p = (n) => String(n).padStart(2, "0");
  return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + " " + p(d.getHours()) + ":" + p(d.getMinutes()) + ":" + p(d.getSeconds());
}
const ms = (iso) => new Date(iso).getTime();
const ago = (iso) => duration((Date.now() - ms(iso)) / 1000) + " ago";
const seconds = (s) => (s < 10 ? s.toFixed(2) : s.toFixed(0)) + "s";

/** A source's snapshots on a target (or any), oldest first, pre-restore ones left out. */
function history(snapshots, source, target) {
  return snapshots
    .filter((s) => s.source === source && !(s.tags || []).includes(PRE_RESTORE))
    .filter((s) => !target || (s.targets || [s.target]).includes(target))
    .sort((a, b) => ms(a.time) - ms(b.time));
}

/** The largest time between consecutive snapshots, in seconds, or null. */
function largestGap(list) {
  let gap = null;
  for (let i = 1; i < list.length; i += 1) {
    const g = (ms(list[i].time) - ms(list[i - 1].time)) / 1000;
    gap = gap === null ? g : Math.max(gap, g);
  }
  return gap;
}

// ---- Login ----

function showLogin(message) {
  stopRefresh();
  state.caller = null;
  state.data = null;
  $("dashboard").hidden = true;
  $("who").hidden = true;
  $("login").hidden = false;
  say($("login-error"), message);
  $("token").focus();
}

async function logIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  await start();
}

function logOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  for (const id of ["problems", "sources"]) $(id).replaceChildren();
  for (const id of ["snapshots", "jobs"]) $(id).tBodies[0].replaceChildren();
  showLogin("");
}

/** Asks the API who the token is; the dashboard when it is valid, else the login form and why. */
async function start() {
  if (!sessionStorage.getItem(TOKEN_KEY)) return showLogin("");
  try {
    state.caller = await api("/api/v1/token");
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    return showLogin(e.message);
  }
  $("login").hidden = true;
  $("who").hidden = false;
  $("dashboard").hidden = false;
  $("token-name").textContent = "token " + state.caller.name + " (" + state.caller.scopes.join(", ") + ")";
  stopRefresh();
  state.timer = setInterval(refresh, REFRESH_MS);
  await refresh();
}

function stopRefresh() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

// ---- Loading ----

/** Loads and draws everything; one load at a time (repositories may be slow), again if asked meanwhile. */
async function refresh() {
  if (state.loading) {
    state.again = true;
    return;
  }
  state.loading = true;
  try {
    do {
      state.again = false;
      $("updated").textContent = "Loading…";
      await load();
    } while (state.again && state.caller);
  } finally {
    state.loading = false;
  }
}

async function load() {
  try {
    const paths = ["/api/v1/sources", "/api/v1/status", "/api/v1/snapshots", "/api/v1/jobs"];
    const [sources, status, snapshots, jobs] = await Promise.all(paths.map((p) => api(p)));
    if (!state.caller) return; // logged out meanwhile
    state.data = { sources, status, snapshots, jobs };
  } catch (e) {
    if (e.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      return showLogin(e.message);
    }
    $("updated").textContent = "";
    return say($("load-error"), "Could not load the dashboard: " + e.message);
  }
  say($("load-error"), "");
  $("updated").textContent = "Checked " + when(state.data.status.time) + " (refreshes every minute)";
  render();
  state.data.jobs.filter((j) => j.state === "running").forEach((j) => poll(j.id));
}

function render() {
  renderProblems();
  renderSources();
  renderSnapshots();
  renderJobs();
}

// ---- Problems: breaches, unreadable targets, failed drills and jobs ----

function problems() {
  const { status, jobs } = state.data;
  const out = [...status.breaches];
  for (const row of status.sources) {
    const d = row.last_drill;
    if (d && !d.passed) {
      out.push("last drill of " + d.source + " @ " + d.target + " failed " + ago(d.time) + ": " + (d.failed || ""));
    }
  }
  const seen = new Set();
  for (const j of jobs) {
    const key = [j.kind, j.source, j.snapshot].join("\u0000");
    // A failed job counts until a later one of the same kind (and source, snapshot) runs.
    if (j.state === "failed" && !seen.has(key)) {
      out.push(j.kind + " job " + j.id + (j.source ? " (" + j.source + ")" : "") + " failed: " + (j.error || ""));
    }
    seen.add(key);
  }
  return out;
}

function renderProblems() {
  const list = problems();
  const box = $("problems");
  box.className = list.length ? "problems bad" : "problems ok";
  if (!list.length) {
    box.replaceChildren(el("p", {}, "All checks pass: no threshold breached, every target readable, no failed drill or job."));
    return;
  }
  const title = list.length === 1 ? "1 problem" : list.length + " problems";
  box.replaceChildren(el("h2", {}, title), el("ul", {}, ...list.map((p) => el("li", {}, p))));
}

// ---- Sources ----

function renderSources() {
  const { sources, status, snapshots } = state.data;
  const unreadable = status.targets.filter((t) => t.error);
  const cards = sources.map((s) => {
    const rows = status.sources.filter((r) => r.source === s.name);
    return sourceCard(s, rows, unreadable, snapshots);
  });
  $("sources").replaceChildren(...cards);
}

function sourceCard(source, rows, unreadable, snapshots) {
  const drillsOk = rows.every((r) => !r.last_drill || r.last_drill.passed);
  const ok = rows.length > 0 && !unreadable.length && drillsOk && rows.every((r) => r.ok);
  const head = el(
    "h3",
    {},
    source.name + " ",
    el("span", { className: "badge " + (ok ? "ok" : "bad") }, ok ? "OK" : "ALERT"),
    el("span", { className: "muted" }, " " + source.kind + " · " + source.path),
  );
  const maxAge = rows.length ? rows[0].max_age_seconds : null;
  const list = history(snapshots, source.name, null);
  const table = targetTable(rows, unreadable, snapshots);
  return el("article", { className: "source", "data-source": source.name }, head, table, chart(list, maxAge));
}

function targetTable(rows, unreadable, snapshots) {
  const head = ["Target", "Snapshots", "Last backup", "Size", "RPO: age / max_age", "Largest gap", "Last drill", "RTO"];
  const broken = unreadable.map((t) =>
    el("tr", { className: "bad", "data-target": t.target }, el("td", {}, t.target), el("td", { colspan: head.length - 1, className: "bad" }, "cannot be read: " + t.error)),
  );
  return el(
    "table",
    { className: "targets" },
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map((r) => targetRow(r, history(snapshots, r.source, r.target))), ...broken),
  );
}

function targetRow(r, list) {
  const n = r.newest;
  const max = r.max_age_seconds;
  const late = n && max !== null && n.age_seconds > max;
  const gap = largestGap(list);
  const cells = [
    el("td", {}, r.target),
    el("td", { className: "num" }, r.snapshots),
    el("td", { className: "time" }, n ? when(n.time) : "none"),
    el("td", { className: "num size" }, n ? bytes(n.size) : "–"),
    el("td", { className: "age " + (!n || late ? "bad" : "ok") }, n ? duration(n.age_seconds) + " / " + (max === null ? "–" : duration(max)) : "no snapshot"),
    el("td", { className: gap !== null && max !== null && gap > max ? "warn" : "" }, gap === null ? "–" : duration(gap)),
    drillCell(r.last_drill),
    rtoCell(r.last_drill),
  ];
  const tr = el("tr", { className: r.ok ? "" : "bad", "data-target": r.target }, ...cells);
  if (r.breaches.length) tr.title = r.breaches.join("\n");
  return tr;
}

function drillCell(d) {
  if (!d) return el("td", { className: "muted" }, "none recorded");
  const td = el("td", { className: d.passed ? "ok" : "bad" }, (d.passed ? "passed " : "FAILED ") + ago(d.time));
  td.title = when(d.time) + (d.failed ? "\n" + d.failed : "");
  return td;
}

function rtoCell(d) {
  if (!d || d.rto_seconds === null) return el("td", { className: "muted" }, "–");
  const target = d.rto_target_seconds;
  const slow = target !== null && d.rto_seconds > target;
  const text = seconds(d.rto_seconds) + (target === null ? "" : " (target " + duration(target) + ")");
  return el("td", { className: slow ? "bad" : "" }, text);
}

// ---- The history chart: size of each snapshot, and the age of the newest one over time ----

const CHART = { w: 720, h: 210, left: 70, right: 16, sizeTop: 22, sizeH: 70, ageTop: 122, ageH: 60 };

function chart(list, maxAge) {
  if (!list.length) return el("p", { className: "muted" }, "No snapshots yet: nothing to chart.");
  const c = CHART;
  const t0 = ms(list[0].time);
  const now = Math.max(Date.now(), ms(list[list.length - 1].time));
  const x = (t) => c.left + ((t - t0) / Math.max(now - t0, 1)) * (c.w - c.left - c.right);
  const root = svg("svg", { class: "chart", viewBox: "0 0 " + c.w + " " + c.h, role: "img" });
  root.append(svg("title", {}, "Snapshot sizes and the age of the newest snapshot, " + when(list[0].time) + " to now"));
  sizePanel(root, list, x);
  agePanel(root, list, x, now, maxAge);
  root.append(svg("text", { x: c.left, y: c.h - 4, class: "axis" }, when(list[0].time)));
  root.append(svg("text", { x: c.w - c.right, y: c.h - 4, class: "axis end" }, "now"));
  return el("figure", {}, root);
}

function sizePanel(root, list, x) {
  const c = CHART;
  const top = Math.max(...list.map((s) => s.size), 1);
  const y = (v) => c.sizeTop + c.sizeH - (v / top) * c.sizeH;
  frame(root, c.sizeTop, c.sizeH, "size", bytes(top));
  const points = list.map((s) => x(ms(s.time)).toFixed(1) + "," + y(s.size).toFixed(1));
  root.append(svg("polyline", { points: points.join(" "), class: "size-line" }));
  for (const s of list) {
    const dot = svg("circle", { cx: x(ms(s.time)).toFixed(1), cy: y(s.size).toFixed(1), r: 3.5, class: "size-dot" });
    dot.append(svg("title", {}, s.id + ": " + bytes(s.size) + ", " + when(s.time)));
    root.append(dot);
  }
}

/** A sawtooth: the newest snapshot's age grows until the next snapshot resets it. */
function agePanel(root, list, x, now, maxAge) {
  const c = CHART;
  const points = [];
  let peak = 0;
  list.forEach((s, i) => {
    const start = ms(s.time);
    const end = i + 1 < list.length ? ms(list[i + 1].time) : now;
    points.push([start, 0], [end, (end - start) / 1000]);
    peak = Math.max(peak, (end - start) / 1000);
  });
  const top = Math.max(peak, maxAge || 0, 1);
  const y = (v) => c.ageTop + c.ageH - (v / top) * c.ageH;
  frame(root, c.ageTop, c.ageH, "age", duration(top));
  const line = points.map(([t, a]) => x(t).toFixed(1) + "," + y(a).toFixed(1)).join(" ");
  root.append(svg("polyline", { points: line, class: "age-line" }));
  if (maxAge) {
    const yl = y(maxAge).toFixed(1);
    root.append(svg("line", { x1: c.left, x2: c.w - c.right, y1: yl, y2: yl, class: "limit" }));
    root.append(svg("text", { x: c.w - c.right, y: yl - 3, class: "axis end limit-label" }, "max_age " + duration(maxAge)));
  }
}

/** A panel's baseline, left edge and labels. */
function frame(root, top, height, name, max) {
  const c = CHART;
  root.append(svg("line", { x1: c.left, x2: c.w - c.right, y1: top + height, y2: top + height, class: "axis-line" }));
  root.append(svg("line", { x1: c.left, x2: c.left, y1: top, y2: top + height, class: "axis-line" }));
  root.append(svg("text", { x: c.left - 6, y: top + 9, class: "axis end" }, max));
  root.append(svg("text", { x: c.left - 6, y: top + height, class: "axis end" }, "0"));
  root.append(svg("text", { x: 4, y: top + height / 2 + 4, class: "axis name" }, name));
}

// ---- Snapshots and their test restores ----

function renderSnapshots() {
  const { snapshots, jobs } = state.data;
  const operate = canOperate();
  say(
    $("operate-note"),
    operate ? "" : "Token " + state.caller.name + " has no operate scope: test restores need a token with scopes = [\"read\", \"operate\"].",
  );
  const rows = snapshots.slice(0, SNAPSHOT_ROWS).map((s) => snapshotRow(s, jobs, operate));
  $("snapshots").tBodies[0].replaceChildren(...rows);
  const more = snapshots.length - SNAPSHOT_ROWS;
  say($("snapshots-more"), more > 0 ? "and " + more + " older snapshots (offsite snapshots lists them all)" : "");
}

function snapshotRow(s, jobs, operate) {
  const button = el("button", { type: "button", className: "test-restore", disabled: !operate }, "Test restore");
  button.title = operate
    ? "Restore this snapshot into a temporary directory, check it, delete it (offsite restore --test)"
    : "Needs a token with the operate scope";
  const result = el("span", { className: "job-result" });
  const job = jobs.find((j) => j.kind === "restore-test" && j.snapshot === s.id);
  if (job) showJob(result, job);
  button.addEventListener("click", () => testRestore(s, button, result));
  return el(
    "tr",
    { "data-snapshot": s.id },
    el("td", { className: "time" }, when(s.time)),
    el("td", {}, s.source),
    el("td", { className: "mono" }, s.id),
    el("td", { className: "num" }, bytes(s.size)),
    el("td", {}, (s.targets || [s.target]).join(", ")),
    el("td", {}, (s.tags || []).join(", ") + (s.pinned ? " (pinned)" : "")),
    el("td", {}, button, " ", result),
  );
}

async function testRestore(s, button, result) {
  button.disabled = true;
  result.className = "job-result running";
  result.textContent = "starting…";
  try {
    const body = JSON.stringify({ kind: "restore-test", source: s.source, snapshot: s.id });
    const started = await api("/api/v1/jobs", { method: "POST", body });
    poll(started.id);
  } catch (e) {
    result.className = "job-result bad";
    result.textContent = e.status === 403 ? "not allowed: " + e.message + " (test restores need the operate scope)" : "could not start: " + e.message;
    button.disabled = !canOperate();
  }
}

/** Follows a job until it is over, redrawing what shows it. */
async function poll(id) {
  if (state.polls.has(id)) return;
  state.polls.add(id);
  try {
    for (;;) {
      const job = await api("/api/v1/jobs/" + encodeURIComponent(id));
      if (!state.data) return;
      state.data.jobs = [job, ...state.data.jobs.filter((j) => j.id !== id)];
      renderProblems();
      renderSnapshots();
      renderJobs();
      if (job.state !== "running") return;
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  } catch (e) {
    if (state.data) say($("load-error"), "Lost track of job " + id + ": " + e.message);
  } finally {
    state.polls.delete(id);
  }
}

/** "running…", "passed: 24.0 KiB restored and checked in 0.05s", or "failed: why". */
function showJob(node, job) {
  if (job.state === "running") {
    node.className = "job-result running";
    node.textContent = "running… (started " + ago(job.started) + ")";
  } else if (job.state === "succeeded") {
    const r = job.result || {};
    node.className = "job-result ok";
    node.textContent = "passed: " + bytes(r.bytes || 0) + " restored and checked in " + seconds(r.seconds || 0);
  } else {
    node.className = "job-result bad";
    node.textContent = "failed: " + (job.error || "no reason given");
  }
  node.title = job.id + ", " + when(job.started);
}

// ---- Jobs ----

function renderJobs() {
  const rows = state.data.jobs.slice(0, JOB_ROWS).map((j) => {
    const took = j.finished ? seconds((ms(j.finished) - ms(j.started)) / 1000) : "…";
    const outcome = j.state === "failed" ? j.error || "" : j.state === "running" ? "" : "ok";
    return el(
      "tr",
      { className: j.state === "failed" ? "bad" : "", "data-job": j.id },
      el("td", { className: "time" }, when(j.started)),
      el("td", {}, j.kind + (j.dry_run ? " (dry run)" : "")),
      el("td", {}, j.source || "every source"),
      el("td", { className: "state " + j.state }, j.state),
      el("td", { className: "num" }, took),
      el("td", {}, outcome),
    );
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 6, className: "muted" }, "No job since offsite serve started.")));
  $("jobs").tBodies[0].replaceChildren(...rows);
}

// ---- Start ----

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", logIn);
  $("logout").addEventListener("click", logOut);
  $("refresh").addEventListener("click", refresh);
  start();
});
