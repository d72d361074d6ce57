// ferry's console: plain JavaScript over the REST API, no build step.
"use strict";

const $ = (sel) => document.querySelector(sel);
const $$ = (sel) => Array.from(document.querySelectorAll(sel));
let pollTimer = null;

function token() { return sessionStorage.getItem("ferry-token"); }

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  const resp = await fetch("/api/v1" + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (resp.status === 401) { showToken(); throw new Error("a token is needed"); }
  let data = null;
  try { data = await resp.json(); } catch (_) { data = null; }
  if (!resp.ok) {
    const err = new Error((data && data.error) || resp.statusText);
    err.data = data; err.status = resp.status;
    throw err;
  }
  return data;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c ?? ""));
  return e;
}

function fmt(n, digits) {
  if (n === null || n === undefined) return "–";
  return Number(n).toLocaleString("en-US", { maximumFractionDigits: digits ?? 0 });
}

// The lag is absent while the source link is down: "unknown", never a reassuring 0.
function lag(v) {
  if (v.lag_bytes === undefined || v.lag_bytes === null) {
    return v.seconds_since_contact === undefined || v.seconds_since_contact === null
      ? "unknown"
      : `unknown (source unreachable for ${fmt(v.seconds_since_contact)} s)`;
  }
  return `${fmt(v.lag_bytes)} bytes · ${fmt(v.lag_seconds, 2)} s`;
}

function showOnly(id) {
  for (const s of $$("main > section")) s.hidden = s.id !== id;
}

function showToken() {
  showOnly("token-panel");
  $("#token").focus();
}

$("#token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("ferry-token", $("#token").value);
  route();
});

// ---- job list ----

async function showJobs() {
  showOnly("view-jobs");
  const render = async () => {
    const data = await api("GET", "/jobs");
    const body = $("#jobs-body");
    body.replaceChildren();
    $("#jobs-empty").hidden = data.jobs.length > 0;
    $("#jobs-table").hidden = data.jobs.length === 0;
    for (const j of data.jobs) {
      const bar = el("span", { class: "progress", "aria-hidden": "true" }, el("span", { style: `width:${j.progress_percent}%` }));
      body.append(el("tr", {},
        el("td", {}, el("a", { href: "#/jobs/" + encodeURIComponent(j.name) }, j.name)),
        el("td", {}, el("span", { class: "state " + j.state }, j.state)),
        el("td", {}, bar, fmt(j.progress_percent, 1) + "%"),
        el("td", {}, j.mode),
        el("td", {}, j.source_nodes.join(", ")),
        el("td", {}, j.target_nodes.join(", ")),
        el("td", { class: "num" }, fmt(j.source_transactions)),
        el("td", { class: "num" }, fmt(j.target_transactions)),
        el("td", { class: "num" }, j.lag_seconds === undefined ? "unknown" : fmt(j.lag_seconds, 1) + " s"),
        el("td", { class: "error-cell", title: j.last_error || "" }, j.last_error ? j.last_error.slice(0, 80) : "–"),
      ));
    }
  };
  await render();
  pollTimer = setInterval(() => render().catch(() => {}), 1000);
}

// ---- wizard ----

let step = 0;
let connectivityOk = false;
let lastChecks = null;

function endpoint(role) {
  const e = {
    topology: $(`#${role}-topology`).value,
    addresses: $(`#${role}-addresses`).value.split(",").map((s) => s.trim()).filter(Boolean),
    tls: $(`#${role}-tls`).checked,
  };
  const user = $(`#${role}-username`).value.trim();
  const pass = $(`#${role}-password`).value;
  if (user) e.username = user;
  if (pass) e.password = pass;
  return e;
}

function spec() {
  const s = {
    name: $("#f-name").value.trim(),
    description: $("#f-description").value,
    source: endpoint("source"),
    target: endpoint("target"),
    mode: $("#f-mode").value,
    overwrite: $("#f-overwrite").checked,
    allow_nonempty_target: $("#f-allow-nonempty").checked,
    allow_flush: $("#f-allow-flush").checked,
    use_replica: $("#f-replica").checked,
    retry: {},
  };
  if ($("#f-rate-on").checked) s.rate_limit_mb = Number($("#f-rate").value);
  const list = (id) => $(id).value.split(",").map((v) => v.trim()).filter(Boolean);
  const include = list("#f-include-prefixes");
  const exclude = list("#f-exclude-prefixes");
  if (include.length || exclude.length) {
    s.filter = {};
    if (include.length) s.filter.include_key_prefixes = include;
    if (exclude.length) s.filter.exclude_key_prefixes = exclude;
  }
  const dbMap = list("#f-db-map").join(",");
  if (dbMap) s.db_map = dbMap;
  const policy = $("input[name=policy]:checked").value;
  s.retry.policy = policy;
  if (policy === "immediately") {
    if ($("#f-conn-limit-on").checked) s.retry.connection_limit = $("#f-conn-limit").value + "m";
    if ($("#f-other-limit-on").checked) s.retry.other_limit = $("#f-other-limit").value + "m";
  } else {
    s.retry.connection_window = $("#f-conn-start").value + "-" + $("#f-conn-end").value;
    s.retry.other_window = $("#f-other-start").value + "-" + $("#f-other-end").value;
    if ($("#f-tz").value.trim()) s.retry.time_zone = $("#f-tz").value.trim();
  }
  return s;
}

function showStep(n) {
  step = n;
  for (const f of $$("fieldset.step")) f.hidden = Number(f.dataset.step) !== n;
  for (const li of $$("#steps li")) {
    const i = Number(li.dataset.step);
    li.classList.toggle("current", i === n);
    li.classList.toggle("done", i < n);
    if (i === n) li.setAttribute("aria-current", "step"); else li.removeAttribute("aria-current");
  }
  $("#prev").hidden = n === 0;
  $("#next").hidden = n === 3;
  $("#finish").hidden = n !== 3;
  $("#wizard-error").textContent = "";
  const first = $(`fieldset.step[data-step="${n}"]`).querySelector("input, select, button, textarea");
  if (first) first.focus();
  if (n === 3) runPrecheck();
}

function checksTable(checks) {
  const rows = checks.map((c) => el("tr", {},
    el("td", {}, el("span", { class: "level " + c.level }, c.level)),
    el("td", {}, c.name),
    el("td", {}, c.message, c.fix ? el("div", { class: "help" }, "Fix: " + c.fix) : ""),
  ));
  return el("table", { class: "checks" },
    el("caption", { class: "visually-hidden" }, "Pre-check results"),
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Result"), el("th", { scope: "col" }, "Check"), el("th", { scope: "col" }, "Details"))),
    el("tbody", {}, ...rows));
}

async function runPrecheck() {
  const out = $("#precheck-result");
  out.replaceChildren("Running the pre-check…");
  $("#finish").disabled = true;
  try {
    const r = await api("POST", "/precheck", spec());
    lastChecks = r;
    const summary = { pass: "All checks passed.", warn: "Passed with warnings: read them before you finish.", fail: "A check failed: fix it before the job can start." }[r.result];
    out.replaceChildren(el("p", { class: "level " + r.result, id: "precheck-summary" }, summary), checksTable(r.checks));
    $("#finish").disabled = r.result === "fail";
  } catch (e) {
    out.replaceChildren(el("p", { class: "error" }, e.message));
  }
}

async function testConnectivity() {
  const out = $("#connectivity-result");
  out.replaceChildren("Testing…");
  connectivityOk = false;
  try {
    const r = await api("POST", "/connectivity", { source: endpoint("source"), target: endpoint("target") });
    connectivityOk = r.ok;
    if (r.ok) $("#wizard-error").textContent = "";
    out.replaceChildren(...r.results.map((x) => el("div", { class: "conn" },
      el("span", { class: "level " + (x.ok ? "pass" : "fail") }, x.ok ? "ok" : "failed"), " ",
      `${x.role} ${x.address}: `, x.ok ? (x.version || "reachable") : x.error)));
  } catch (e) {
    out.replaceChildren(el("p", { class: "error" }, e.message));
  }
}

function validateStep(n) {
  if (n === 0) {
    const name = $("#f-name");
    if (!name.checkValidity()) return "Give the job a name: letters, digits, - _ . only.";
  }
  if (n === 1) {
    if (!endpoint("source").addresses.length || !endpoint("target").addresses.length) return "Give the source and target addresses.";
    if (!connectivityOk) return "Test connectivity first: both source and target must be reachable.";
  }
  if (n === 2) {
    if ($("#f-rate-on").checked && !(Number($("#f-rate").value) > 0)) return "The sync rate must be a positive number of MB/s.";
  }
  return "";
}

function showNew() {
  showOnly("view-new");
  $("#wizard").reset();
  connectivityOk = false;
  $("#connectivity-result").replaceChildren();
  $("#precheck-result").replaceChildren();
  syncAdvanced();
  showStep(0);
}

function syncAdvanced() {
  $("#rate-fields").hidden = !$("#f-rate-on").checked;
  const scheduled = $("input[name=policy]:checked").value === "scheduled";
  $("#retry-immediately").hidden = scheduled;
  $("#retry-scheduled").hidden = !scheduled;
  $("#conn-limit-fields").hidden = !$("#f-conn-limit-on").checked;
  $("#other-limit-fields").hidden = !$("#f-other-limit-on").checked;
  const replicas = $("#source-topology").value !== "standalone";
  $("#f-replica").disabled = !replicas;
  if (!replicas) $("#f-replica").checked = false;
}

$("#wizard").addEventListener("change", syncAdvanced);
for (const id of ["#source-addresses", "#target-addresses", "#source-password", "#target-password", "#source-username", "#target-username"]) {
  $(id).addEventListener("input", () => { connectivityOk = false; });
}
$("#test-connectivity").addEventListener("click", testConnectivity);
$("#run-precheck").addEventListener("click", runPrecheck);
$("#prev").addEventListener("click", () => showStep(Math.max(0, step - 1)));
$("#next").addEventListener("click", () => {
  const problem = validateStep(step);
  if (problem) { $("#wizard-error").textContent = problem; return; }
  showStep(Math.min(3, step + 1));
});
$("#wizard").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  if (step !== 3) return;
  $("#finish").disabled = true;
  try {
    const job = await api("POST", "/jobs?start=true", spec());
    location.hash = "#/jobs/" + encodeURIComponent(job.name);
  } catch (e) {
    $("#wizard-error").textContent = e.message;
    if (e.data && e.data.checks) $("#precheck-result").replaceChildren(checksTable(e.data.checks));
    $("#finish").disabled = false;
  }
});

// ---- job page ----

function chart(samples) {
  const svg = $("#chart");
  for (const n of Array.from(svg.childNodes)) if (n.nodeName !== "title") n.remove();
  const W = 600, H = 180, P = 30;
  const ns = "http://www.w3.org/2000/svg";
  const add = (tag, attrs) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    svg.append(e);
    return e;
  };
  add("line", { x1: P, y1: H - P, x2: W - 8, y2: H - P, stroke: "#8a94a0" });
  add("line", { x1: P, y1: 8, x2: P, y2: H - P, stroke: "#8a94a0" });
  if (!samples || samples.length < 2) {
    add("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#4a5360" }).textContent = "Collecting data…";
    return;
  }
  const t0 = samples[0].at, t1 = samples[samples.length - 1].at;
  const x = (t) => P + ((t - t0) / Math.max(1, t1 - t0)) * (W - 8 - P);
  const series = [
    { key: "lag_seconds", color: "#b3261e" },
    { key: "apply_rate", color: "#0b5cad" },
  ];
  for (const s of series) {
    const max = Math.max(1, ...samples.map((p) => p[s.key]));
    const y = (v) => H - P - (v / max) * (H - P - 12);
    const d = samples.map((p, i) => (i ? "L" : "M") + x(p.at).toFixed(1) + " " + y(p[s.key]).toFixed(1)).join(" ");
    add("path", { d, fill: "none", stroke: s.color, "stroke-width": 2 });
    add("text", { x: s.key === "lag_seconds" ? P + 4 : W - 10, y: 18, fill: s.color, "font-size": 12, "text-anchor": s.key === "lag_seconds" ? "start" : "end" })
      .textContent = "max " + fmt(max, 1) + (s.key === "lag_seconds" ? " s" : " rec/s");
  }
  // The time axis: the window's start and end as clock times, its length in the middle.
  const clock = (t) => new Date(t).toLocaleTimeString();
  add("text", { x: P, y: H - 12, "text-anchor": "start", fill: "#4a5360", "font-size": 12, class: "axis-start" }).textContent = clock(t0);
  add("text", { x: (P + W - 8) / 2, y: H - 12, "text-anchor": "middle", fill: "#4a5360", "font-size": 12 }).textContent =
    `last ${Math.round((t1 - t0) / 1000)} s`;
  add("text", { x: W - 10, y: H - 12, "text-anchor": "end", fill: "#4a5360", "font-size": 12, class: "axis-end" }).textContent = clock(t1);
  // The value axis: 0 at the bottom, each series' maximum at the top (labels above).
  add("text", { x: P - 4, y: H - P + 4, "text-anchor": "end", fill: "#4a5360", "font-size": 11 }).textContent = "0";
}

function figure(label, value, id) {
  return el("div", {}, el("dt", {}, label), el("dd", id ? { id } : {}, value));
}

/// One line for the job's last `ferry verify`.
function verificationText(v) {
  if (!v) return "never";
  if (v.status === "running") return "running since " + new Date(v.started_at).toLocaleTimeString();
  if (v.status === "error") return "failed: " + v.error;
  const r = v.report;
  const when = new Date(v.finished_at).toLocaleString();
  if (r.equal) return `equal: ${fmt(r.keys_compared)} keys compared (${when})`;
  return `${fmt(r.keys_compared - r.keys_equal + r.extra_on_target)} keys differ: ` +
    `${fmt(r.missing_on_target)} missing, ${fmt(r.extra_on_target)} extra, ` +
    `${fmt(r.value_differences)} values, ${fmt(r.ttl_differences)} TTLs (${when})`;
}

async function showJob(name) {
  showOnly("view-job");
  const render = async () => {
    const j = await api("GET", "/jobs/" + encodeURIComponent(name));
    const v = await api("GET", "/jobs/" + encodeURIComponent(name) + "/verify").catch(() => null);
    $("#job-title").textContent = j.name;
    $("#job-description").textContent = j.description;
    const retry = j.state === "retrying"
      ? `attempt ${j.attempts}, next at ${j.next_attempt ? new Date(j.next_attempt).toLocaleString() : "–"}`
      : (j.attempts ? `${j.attempts} attempt(s)` : "none");
    $("#job-figures").replaceChildren(
      figure("Source node", j.source_nodes.join(", ")),
      figure("Target node", j.target_nodes.join(", ")),
      figure("Status", el("span", { class: "state " + j.state }, j.state), "fig-state"),
      figure("Sync progress (%)", fmt(j.progress_percent, 1), "fig-progress"),
      figure("Mode", j.mode),
      figure("Source transactions executed", fmt(j.source_transactions), "fig-source-tx"),
      figure("Target transactions executed", fmt(j.target_transactions), "fig-target-tx"),
      figure("Lag", lag(j)),
      figure("Throughput", `${fmt(j.apply_rate, 1)} records/s · ${fmt(j.bytes_rate / 1e6, 2)} MB/s read`),
      figure("Retries", retry),
      figure("Last error", j.last_error || "none"),
      figure("Worker", j.worker ? `${j.worker} (${j.worker_address || "?"})` : "none", "fig-worker"),
      figure("Last verification", verificationText(v), "fig-verify"),
    );
    const running = ["starting", "full-sync", "incremental", "retrying"].includes(j.state);
    for (const b of $$("#job-actions button")) {
      const a = b.dataset.action;
      b.disabled = (a === "start" && (running || j.state === "paused"))
        || ((a === "stop" || a === "pause") && !running)
        || (a === "resume" && j.state !== "paused");
    }
    $("#job-shards tbody").replaceChildren(...(j.shards || []).map((s) => el("tr", { "data-shard": s.shard },
      el("td", {}, s.shard),
      el("td", { class: "shard-worker" }, s.worker ? `${s.worker} (${s.worker_address || "?"})` : "none"),
      el("td", {}, el("span", { class: "state " + s.state }, s.state), s.error ? " — " + s.error : ""),
      el("td", {}, s.node || "–"),
      el("td", {}, fmt(s.records_applied)),
      el("td", {}, lag(s)),
      el("td", {}, "generation " + s.lease_generation))));
    chart(j.samples);
    $("#job-history").replaceChildren(...(j.history || []).slice(-30).reverse().map((h) =>
      el("li", {}, new Date(h.at).toLocaleString() + " — " + h.message)));
  };
  const actions = $("#job-actions");
  actions.onclick = async (ev) => {
    const a = ev.target.dataset && ev.target.dataset.action;
    if (!a) return;
    $("#job-error").textContent = "";
    try {
      if (a === "delete") {
        if (!confirm(`Delete job ${name}? It stops, and its checkpoint on the target is deleted.`)) return;
        await api("DELETE", "/jobs/" + encodeURIComponent(name));
        location.hash = "#/jobs";
        return;
      }
      if (a === "cutover") {
        if (!confirm(`Cut over job ${name}? Writes on the source are paused until the target holds every one, then for 30 s more while clients move to the target.`)) return;
        $("#job-cutover").textContent = "cutting over…";
        const r = await api("POST", `/jobs/${encodeURIComponent(name)}/cutover`, {});
        const held = r.source_paused_for_ms == null ? "the source is unpaused"
          : `writes on the source stay paused ${(r.source_paused_for_ms / 1000).toFixed(1)} s more: move the clients to the target now`;
        const verified = r.verified ? `, ${r.verified.keys_compared} sampled keys equal` : "";
        $("#job-cutover").textContent = `cut over: the target holds every write made before the pause (caught up in ${r.catch_up_ms} ms${verified}); ${held}`;
        return;
      }
      await api("POST", `/jobs/${encodeURIComponent(name)}/${a}`);
      await render();
    } catch (e) {
      if (a === "cutover") $("#job-cutover").textContent = "";
      let msg = e.message;
      if (e.data && e.data.checks) msg += "\n" + e.data.checks.filter((c) => c.level === "fail").map((c) => `${c.name}: ${c.message}`).join("\n");
      $("#job-error").textContent = msg;
    }
  };
  await render();
  pollTimer = setInterval(() => render().catch((e) => { $("#job-error").textContent = e.message; }), 1000);
}

// ---- routing ----

async function route() {
  if (pollTimer) { clearInterval(pollTimer); pollTimer = null; }
  const h = location.hash || "#/jobs";
  try {
    if (h === "#/new") showNew();
    else if (h.startsWith("#/jobs/")) await showJob(decodeURIComponent(h.slice(7)));
    else await showJobs();
  } catch (e) {
    if (e.status !== 401) {
      showOnly("view-jobs");
      $("#jobs-empty").hidden = false;
      $("#jobs-empty").textContent = "Cannot load: " + e.message;
    }
  }
}

window.addEventListener("hashchange", route);
route();
