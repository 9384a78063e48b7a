// Operator page: plain JS, no external assets. The API token lives in sessionStorage and goes
// out as a bearer header; images are fetched the same way and shown through object URLs.
"use strict";

const TOKEN_KEY = "linewatch.token";
const REFRESH_MS = 2000;
const $ = (id) => document.getElementById(id);
let timer = null;
let objectUrls = [];
let shownAlert = null; // the alert on the alert page, for feedback on its worst frame

function token() { return sessionStorage.getItem(TOKEN_KEY); }

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}), Authorization: "Bearer " + token() };
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) { logout("Token rejected"); throw new Error("unauthorised"); }
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response;
}

async function showImage(img, url) {
  if (!url) { img.removeAttribute("src"); img.alt = "no heatmap cached"; return; }
  try {
    const blob = await (await api(url)).blob();
    const objectUrl = URL.createObjectURL(blob);
    objectUrls.push(objectUrl);
    img.src = objectUrl;
  } catch (err) { img.alt = "heatmap unavailable"; }
}

function releaseImages() { objectUrls.forEach((u) => URL.revokeObjectURL(u)); objectUrls = []; }
function time(ns) { return ns ? new Date(ns / 1e6).toLocaleString() : "—"; }
function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
  node.textContent = text;
  return node;
}
function ackText(alert) {
  return alert.ack ? `acknowledged by ${alert.ack.by} at ${time(alert.ack.at_ns)}` +
    (alert.ack.note ? ` (${alert.ack.note})` : "") : "not acknowledged";
}

// Regions of interest (GET /api/cameras/{id}/regions, normalised 0..1): drawn as an SVG over the heatmap,
// ignore masks shaded, included regions outlined. Fetched once per camera: they change only on a restart.
const SVG_NS = "http://www.w3.org/2000/svg";
const regionsByCamera = new Map();
function cameraRegions(camera) {
  if (!regionsByCamera.has(camera)) {
    regionsByCamera.set(camera, api("/api/cameras/" + encodeURIComponent(camera) + "/regions")
      .then((r) => r.json()).catch(() => { regionsByCamera.delete(camera); return null; }));
  }
  return regionsByCamera.get(camera);
}
async function withRegions(img, camera) {
  const regions = await cameraRegions(camera);
  if (!regions || (!regions.include.length && !regions.exclude.length)) return img;
  const svg = document.createElementNS(SVG_NS, "svg");
  Object.entries({ class: "regions", viewBox: "0 0 1 1", preserveAspectRatio: "none" })
    .forEach(([k, v]) => svg.setAttribute(k, v));
  Object.assign(svg.style, { position: "absolute", left: "0", top: "0", width: "100%", height: "100%",
    pointerEvents: "none" });
  const shapes = [["roi-include", regions.include, "none", "#3fb950"], ["roi-exclude", regions.exclude, "#000", "#8b949e"]];
  shapes.forEach(([kind, polygons, fill, stroke]) => polygons.forEach((points) => {
    const polygon = document.createElementNS(SVG_NS, "polygon");
    Object.entries({ class: kind, points: points.map(([x, y]) => `${x},${y}`).join(" "), fill, "fill-opacity": "0.45",
      stroke, "stroke-width": "2", "vector-effect": "non-scaling-stroke" }).forEach(([k, v]) => polygon.setAttribute(k, v));
    svg.append(polygon);
  }));
  const frame = el("div", { class: "overlay-frame" });
  frame.style.position = "relative";
  img.style.display = "block";
  frame.append(img, svg);
  return frame;
}

async function refreshLive() {
  const [cameras, alerts] = await Promise.all([
    api("/api/cameras").then((r) => r.json()), api("/api/alerts?limit=100").then((r) => r.json())]);
  const old = objectUrls; objectUrls = [];
  const grid = $("cameras");
  const cards = await Promise.all(cameras.map(async (cam) => {
    const card = el("div", { class: "card" + (cam.anomalous ? " anomalous" : ""), "data-camera": cam.camera_id });
    const img = el("img", { alt: "heatmap of " + cam.camera_id, class: "overlay" });
    await showImage(img, cam.overlay_url);
    card.append(await withRegions(img, cam.camera_id), el("div", {}, `${cam.line_id} / ${cam.camera_id} · #${cam.sequence}`),
      el("div", { class: "score" }, cam.normalised_score.toFixed(2)));
    return card;
  }));
  grid.replaceChildren(...cards);
  old.forEach((u) => URL.revokeObjectURL(u));
  const rows = alerts.map((a) => {
    const row = el("tr", { class: a.state + (a.suspect ? " suspect" : ""), "data-alert": a.alert_id });
    const link = el("a", { href: "#/alert/" + encodeURIComponent(a.alert_id) }, a.camera_id);
    const cells = [stateText(a), a.severity, a.line_id, null, time(a.start_ns), a.peak_score.toFixed(2),
      String(a.frame_count), a.ack ? a.ack.by : "—"];
    cells.forEach((text, i) => {
      const td = el("td", i === 1 ? { class: "sev-" + a.severity } : {}, text === null ? "" : text);
      if (text === null) td.append(link);
      row.append(td);
    });
    return row;
  });
  $("alerts").querySelector("tbody").replaceChildren(...rows);
  await refreshCameraHealth();
}

async function refreshAlert(alertId) {
  const detail = await (await api("/api/alerts/" + encodeURIComponent(alertId))).json();
  const a = detail.alert;
  shownAlert = a;
  $("alert-id").textContent = a.alert_id;
  $("alert-state").textContent = a.state;
  $("alert-ack").textContent = ackText(a);
  $("ack-button").disabled = Boolean(a.ack);
  const facts = [["Line", a.line_id], ["Camera", a.camera_id], ["Severity", a.severity],
    ["Started", time(a.start_ns)], ["Ended", time(a.end_ns)], ["Peak score", a.peak_score.toFixed(3)],
    ["Breaching frames", a.frame_count], ["Worst frame", "#" + a.worst_sequence], ["Suspect", suspectText(a)]];
  $("alert-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, String(v))]));
  showSuspectBanner(a);
  if (!$("worst-heatmap").dataset.loaded) {
    releaseImages();
    await showImage($("worst-heatmap"), detail.heatmap_url);
    $("worst-heatmap").dataset.loaded = "1";
    const figures = await Promise.all(detail.frames.map(async (f) => {
      const fig = el("figure", { class: f.worst ? "worst" : "" });
      const img = el("img", { alt: "frame " + f.sequence });
      await showImage(img, f.overlay_url);
      fig.append(img, el("figcaption", {}, `#${f.sequence} · ${f.normalised_score.toFixed(2)}`));
      return fig;
    }));
    $("frames").replaceChildren(...figures);
  }
}

// Camera health (GET /api/camera-health, from `linewatch camera-health`) and suspect defect alerts:
// an alert raised while its camera was unhealthy may come from the camera fault, not from the parts.
function stateText(a) { return a.suspect ? `${a.state} · suspect` : a.state; }
function suspectText(a) {
  return a.suspect ? "yes: camera unhealthy (" + a.suspect_checks.join(", ") + ")" : "no";
}
function showSuspectBanner(a) {
  $("alert-suspect").hidden = !a.suspect;
  $("alert-suspect").textContent = a.suspect ? "Suspect: the camera was unhealthy (" +
    a.suspect_checks.join(", ") + ") while this alert was open; check the camera before the parts." : "";
}

// health is "healthy", "unhealthy" or "unknown" (the camera-health service is not reporting: no check
// runs, so a camera without failing checks is not known to be healthy; the checks shown are the last recorded).
function healthRow(cam) {
  const row = el("tr", { class: cam.health, "data-camera": cam.camera_id });
  const failing = cam.checks.map((c) => `${c.check}: ${c.detail} (since ${time(c.since_ns)})`).join("; ");
  const checks = failing && cam.health === "unknown" ? "last recorded: " + failing : failing;
  [cam.camera_id, cam.line_id || "—", cam.health, checks || "—"]
    .forEach((text) => row.append(el("td", {}, text)));
  return row;
}

function markUnhealthyCards(cameras) {
  cameras.filter((cam) => cam.health === "unhealthy").forEach((cam) => {
    const card = document.querySelector(`#cameras .card[data-camera="${CSS.escape(cam.camera_id)}"]`);
    if (!card) return;
    card.classList.add("unhealthy");
    card.append(el("div", { class: "health" }, "unhealthy: " + cam.checks.map((c) => c.check).join(", ")));
  });
}

async function refreshCameraHealth() {
  const health = await (await api("/api/camera-health")).json();
  $("health-monitor").textContent = health.monitored ? "" :
    "The camera-health service is not reporting: no check is running, cameras are not known to be healthy.";
  $("camera-health").querySelector("tbody").replaceChildren(...health.cameras.map(healthRow));
  markUnhealthyCards(health.cameras);
}

// Promoted models a detector refuses (GET /api/model-refusals): the line is not inspected by the model the
// engineers meant until they roll back or promote a good one. Shown on every view.
const REFUSAL_REASONS = {
  model_file: "the model file is missing from the store or damaged",
  checkpoint: "the checkpoint is unreadable or its metadata does not match its weights",
  version_mismatch: "the file holds another version",
  output_shape: "it scored the warm-up frame with the wrong output shape",
  non_finite: "it scored the warm-up frame with non-finite values",
  known_good: "it calls the product's known-good image anomalous",
  load_error: "it could not be loaded",
};
function refusalText(r) {
  const where = r.line ? `line ${r.line}` : "every line";
  const why = REFUSAL_REASONS[r.reason] ? ` (${REFUSAL_REASONS[r.reason]})` : "";
  const running = r.running_version ? `The previous model ${r.running_version} keeps scoring.` :
    "No earlier model of this product was running: its frames are dead-lettered, or scored by the fallback model.";
  return `Model ${r.version} for product ${r.product} (${where}) is refused: ${r.reason}${why}, since ` +
    `${time(r.since_ns)}. ${running}`;
}
async function refreshRefusals() {
  const { refusals } = await (await api("/api/model-refusals")).json();
  $("model-refusals").replaceChildren(...refusals.map((r) => el("p", { "data-product": r.product,
    "data-version": r.version, "data-reason": r.reason, title: r.detail }, refusalText(r))));
  $("model-refusals").hidden = !refusals.length;
}

async function acknowledge(event) {
  event.preventDefault();
  const alertId = $("alert-id").textContent;
  $("ack-button").disabled = true;
  try {
    await api("/api/alerts/" + encodeURIComponent(alertId) + "/ack", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ note: $("ack-note").value })});
    await refreshAlert(alertId);
  } catch (err) { $("status").textContent = "acknowledge failed: " + err.message; $("ack-button").disabled = false; }
}

// Operator feedback (POST /api/feedback, recorded as the token's identity): false alarms become
// training images of good parts, real defects test images, in `linewatch dataset export --feedback`.
async function sendFeedback(verdict) {
  const a = shownAlert;
  if (!a) return;
  const defectType = $("defect-type").value.trim();
  const body = { camera_id: a.camera_id, sequence: a.worst_sequence, verdict, alert_id: a.alert_id };
  if (verdict === "real_defect" && defectType) body.defect_type = defectType;
  try {
    await api("/api/feedback", { method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body) });
    $("feedback-result").textContent = `recorded: frame #${a.worst_sequence} ${verdict.replace("_", " ")}`;
  } catch (err) { $("feedback-result").textContent = "feedback failed: " + err.message; }
}

function route() {
  clearInterval(timer);
  const match = location.hash.match(/^#\/alert\/(.+)$/);
  $("login-view").hidden = Boolean(token());
  $("logout").hidden = !token();
  $("live-view").hidden = !token() || Boolean(match);
  $("alert-view").hidden = !token() || !match;
  if (!token()) { $("model-refusals").hidden = true; return; }
  delete $("worst-heatmap").dataset.loaded;
  const view = () => (match ? refreshAlert(decodeURIComponent(match[1])) : refreshLive());
  const tick = () => Promise.all([view(), refreshRefusals()])
    .then(() => { $("status").textContent = "updated " + new Date().toLocaleTimeString(); })
    .catch((err) => { $("status").textContent = "offline: " + err.message; });
  tick();
  timer = setInterval(tick, REFRESH_MS);
}

async function login(event) {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
  try {
    const who = await (await api("/api/whoami")).json();
    $("identity").textContent = who.identity;
    $("login-error").textContent = "";
    route();
  } catch (err) { $("login-error").textContent = "Sign-in failed: " + err.message; }
}

function logout(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  $("identity").textContent = "";
  $("login-error").textContent = typeof message === "string" ? message : "";
  route();
}

$("login-form").addEventListener("submit", login);
$("ack-form").addEventListener("submit", acknowledge);
$("false-alarm").addEventListener("click", () => sendFeedback("false_alarm"));
$("real-defect").addEventListener("click", () => sendFeedback("real_defect"));
$("logout").addEventListener("click", logout);
window.addEventListener("hashchange", route);
route();
