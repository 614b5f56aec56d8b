// The drawing page: pointer events draw on #pad, and the network reads the digit as it is drawn.
// Where WebAssembly and the model are at hand, in this browser: the pad is prepared as the server
// would (preprocess.js) and the model runs in ONNX Runtime Web (model.js), every layer's output shown
// in the layer panel (layers.js). Otherwise, and for uploaded images, "why this answer?" and a browser
// without WebAssembly, the pad goes to /api/predict as a PNG, where the server prepares it exactly as
// `mnist-nn predict` would. The answer fills the bars, the label and the 28x28 preview, and says where it
// was computed. No libraries beyond the vendored runtime, no network beyond this page's own origin.
//
// The same page is the static folder of `mnist-nn export --format web` (<body data-mode="static">):
// the model is model.onnx beside it, and what needs a server (uploads, explanations) is hidden.
// Other pages can use it too: window.mnistNN.ready, window.mnistNN.predict(pixels) (see the docs).

import { isolate } from "./isolation.js";
import { BrowserModel } from "./model.js";
import { LayerPanel } from "./layers.js";
import { canvasGrey, toMnist } from "./preprocess.js";

const STATIC = document.body.dataset.mode === "static";
// A static folder's page first makes itself cross-origin isolated (threads for the model): where that
// takes a reload, nothing more happens in this load, not even window.mnistNN.
if (STATIC && (await isolate())) await new Promise(() => {});
const MODEL_URL = STATIC ? "model.onnx" : "api/model.onnx";
const SERVER_TIMING = { debounce: 120, maxWait: 350 }; // after the pen rests this long, ask; while it moves, this often
const LOCAL_TIMING = { debounce: 16, maxWait: 40 }; // in the browser an answer takes a millisecond: follow the pen
const STROKE = 24; // px on the 280 px pad: about MNIST's 2-px strokes once the digit is scaled to 20 px
const SEND_SIZE = 112; // px: what the pad is downscaled to before it is sent

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen");
const seenCtx = seen.getContext("2d");
const labelOut = document.getElementById("label");
const confidenceOut = document.getElementById("confidence");
const latencyOut = document.getElementById("latency");
const statusOut = document.getElementById("status");
const bars = document.getElementById("bars");
const fileInput = document.getElementById("file");
const dropzone = document.getElementById("dropzone");
const why = document.getElementById("why");
const whyMap = document.getElementById("why-map");
const whyCtx = whyMap.getContext("2d");

let labels = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
let hasInk = false;
let drawing = null; // the active pointer id and last point
let timer = null;
let lastSent = 0;
let inFlight = false;
let pending = null; // what to send once the request in flight is answered
let generation = 0; // bumped by Clear: answers to older requests are dropped
let answered = 0;
let lastAsked = null; // what was sent last: opening "why this answer?" asks again for its map
let local = null; // the model in this browser, once loaded; null: the server reads every digit
let panel = null;
let modelName = "model";

// ------------------------------------------------------------------ the pad

function resetPad() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  ctx.strokeStyle = "#000";
  ctx.fillStyle = "#000";
  ctx.lineWidth = STROKE;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  hasInk = false;
}

function point(event) {
  const rect = pad.getBoundingClientRect();
  return {
    x: ((event.clientX - rect.left) * pad.width) / rect.width,
    y: ((event.clientY - rect.top) * pad.height) / rect.height,
  };
}

pad.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 && event.pointerType === "mouse") return;
  event.preventDefault();
  pad.setPointerCapture(event.pointerId);
  const p = point(event);
  drawing = { id: event.pointerId, last: p };
  ctx.beginPath();
  ctx.arc(p.x, p.y, STROKE / 2, 0, 2 * Math.PI);
  ctx.fill();
  hasInk = true;
  schedule();
});

pad.addEventListener("pointermove", (event) => {
  if (!drawing || event.pointerId !== drawing.id) return;
  // Coalesced events: every point the pointer passed since the last frame, for smooth fast strokes.
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  ctx.beginPath();
  ctx.moveTo(drawing.last.x, drawing.last.y);
  for (const e of events.length ? events : [event]) {
    const p = point(e);
    ctx.lineTo(p.x, p.y);
    drawing.last = p;
  }
  ctx.stroke();
  schedule();
});

function endStroke(event) {
  if (!drawing || event.pointerId !== drawing.id) return;
  drawing = null;
  schedule();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function clearAll() {
  generation += 1;
  clearTimeout(timer);
  timer = null;
  pending = null;
  if (!inFlight) setBusy(false);
  resetPad();
  showEmpty("draw something");
  statusOut.textContent = "";
}

document.getElementById("clear").addEventListener("click", clearAll);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") clearAll();
});

// ------------------------------------------------------------------ asking the server

// Debounced with a maximum wait: answers follow the pen while drawing without a request per pixel.
function schedule() {
  clearTimeout(timer);
  setBusy(true);
  const waited = performance.now() - lastSent;
  const timing = local ? LOCAL_TIMING : SERVER_TIMING;
  timer = setTimeout(
    () => {
      timer = null;
      submit({ kind: "pad" });
    },
    waited > timing.maxWait ? 0 : timing.debounce
  );
}

// data-busy on <body> while an answer is due: lets a test (or a style) know the page has settled.
function setBusy(on) {
  if (on) document.body.dataset.busy = "1";
  else delete document.body.dataset.busy;
}

// The pad is sent at 112x112: the server fits the ink into 20x20 anyway, and a quarter of the
// pixels makes its preprocessing about 4x cheaper than the full 280x280 (2 ms instead of 9).
// The browser reads the same 112x112 copy, so that both ways start from the same image.
function smallPad() {
  const small = document.createElement("canvas");
  small.width = small.height = SEND_SIZE;
  const smallCtx = small.getContext("2d", { willReadFrequently: true });
  smallCtx.imageSmoothingEnabled = true;
  smallCtx.imageSmoothingQuality = "high";
  smallCtx.drawImage(pad, 0, 0, SEND_SIZE, SEND_SIZE);
  return small;
}

function padBlob() {
  return new Promise((resolve) => smallPad().toBlob(resolve, "image/png"));
}

async function submit(what) {
  if (what.kind === "pad" && !hasInk) {
    if (!inFlight && !timer) setBusy(false);
    return;
  }
  if (inFlight) {
    pending = what; // one request at a time; the newest wish wins
    return;
  }
  inFlight = true;
  lastSent = performance.now();
  lastAsked = what;
  const mine = generation;
  try {
    if (what.kind === "pad" && local && !why.open) {
      await readInBrowser(mine);
      return;
    }
    if (STATIC) return; // no server to ask: the page says why in the model line
    const form = new FormData();
    if (what.kind === "file") form.append("file", what.file, what.file.name || "upload");
    else form.append("file", await padBlob(), "drawing.png");
    const url = why.open ? "api/predict?explain=true" : "api/predict";
    const response = await fetch(url, { method: "POST", body: form });
    const body = await response.json().catch(() => ({}));
    if (mine !== generation) return;
    if (!response.ok) {
      showEmpty("could not read that");
      statusOut.textContent = body.detail ? String(body.detail) : `error ${response.status}`;
    } else {
      statusOut.textContent = "";
      render(body);
    }
  } catch (error) {
    if (mine === generation) statusOut.textContent = `the server did not answer (${error.message})`;
  } finally {
    inFlight = false;
    answered += 1;
    document.body.dataset.answered = String(answered);
    if (pending) {
      const next = pending;
      pending = null;
      submit(next);
    } else if (!timer) {
      setBusy(false);
    }
  }
}

// ------------------------------------------------------------------ showing the answer

function buildBars() {
  bars.replaceChildren(
    ...labels.map((name) => {
      const li = document.createElement("li");
      li.dataset.label = name;
      const nameSpan = document.createElement("span");
      nameSpan.className = "name";
      nameSpan.textContent = name;
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      track.append(fill);
      const pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = "–";
      li.append(nameSpan, track, pct);
      return li;
    })
  );
}

function setBars(probabilities) {
  let best = null;
  if (probabilities) {
    best = Object.entries(probabilities).reduce((a, b) => (b[1] > a[1] ? b : a))[0];
  }
  for (const li of bars.children) {
    const p = probabilities ? probabilities[li.dataset.label] ?? 0 : 0;
    li.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    li.querySelector(".pct").textContent = probabilities ? `${(100 * p).toFixed(1)}%` : "–";
    li.classList.toggle("best", li.dataset.label === best);
    li.setAttribute("aria-label", probabilities ? `${li.dataset.label}: ${(100 * p).toFixed(1)} percent` : li.dataset.label);
  }
}

function drawSeen(pixels) {
  const image = seenCtx.createImageData(28, 28);
  for (let y = 0; y < 28; y++) {
    for (let x = 0; x < 28; x++) {
      const v = pixels ? (pixels.length === 784 ? Math.round(pixels[28 * y + x]) : pixels[y][x]) : 0;
      const i = 4 * (28 * y + x);
      image.data[i] = image.data[i + 1] = image.data[i + 2] = v;
      image.data[i + 3] = 255;
    }
  }
  seenCtx.putImageData(image, 0, 0);
}

// The map over the digit: the digit dimmed to grey, each pixel tinted red (pushed towards the answer)
// or blue (pushed away) as strongly as its value, -1 to 1. Small values are lifted a little (the
// power 0.75), so that a faint but real part still shows.
const TOWARDS = [255, 72, 48];
const AWAY = [64, 140, 255];

function drawWhy(pixels, explanation) {
  const image = whyCtx.createImageData(28, 28);
  for (let y = 0; y < 28; y++) {
    for (let x = 0; x < 28; x++) {
      const grey = pixels ? 0.45 * pixels[y][x] : 0;
      const value = explanation ? explanation[y][x] : 0;
      const alpha = Math.min(1, Math.abs(value)) ** 0.75;
      const tint = value >= 0 ? TOWARDS : AWAY;
      const i = 4 * (28 * y + x);
      for (let c = 0; c < 3; c++) image.data[i + c] = grey * (1 - alpha) + tint[c] * alpha;
      image.data[i + 3] = 255;
    }
  }
  whyCtx.putImageData(image, 0, 0);
}

function showEmpty(message) {
  labelOut.textContent = "–";
  confidenceOut.textContent = message;
  latencyOut.textContent = "";
  setBars(null);
  drawSeen(null);
  drawWhy(null, null);
}

function render(result) {
  if (result.status !== "ok") {
    showEmpty(result.reason ? `${result.status}: ${result.reason}` : result.status);
  } else {
    labelOut.textContent = result.label;
    confidenceOut.textContent = `${(100 * result.confidence).toFixed(1)}% sure`;
    setBars(result.probabilities);
    drawSeen(result.seen);
    drawWhy(result.seen, result.explanation);
  }
  const where = result.where === "browser" ? "in this browser (WebAssembly)" : "on the server";
  latencyOut.textContent = `${result.model}, ${result.latency_ms.toFixed(1)} ms ${where}`;
  document.body.dataset.where = result.where || "server";
}

// ------------------------------------------------------------------ reading in the browser

// The pad's digit read here: prepared as the server would, run by the model in WebAssembly.
async function readInBrowser(mine) {
  const start = performance.now();
  const small = smallPad();
  const grey = canvasGrey(small);
  const pixels = toMnist(grey, small.width, small.height);
  window.mnistNN.lastImage = { width: small.width, height: small.height, grey: Array.from(grey) };
  window.mnistNN.lastInput = pixels ? Array.from(pixels) : null;
  const reading = pixels ? await local.run(pixels, true) : null;
  const latency = performance.now() - start;
  if (mine !== generation) return;
  statusOut.textContent = "";
  if (!reading) {
    render({ status: "no digit found", reason: "nothing stands out from the paper", model: modelName, latency_ms: latency, where: "browser" });
    panel.show(null, null);
    return;
  }
  const probabilities = Object.fromEntries(labels.map((name, i) => [name, reading.probabilities[i]]));
  const best = labels.reduce((a, b) => (probabilities[b] > probabilities[a] ? b : a));
  render({
    status: "ok",
    label: best,
    confidence: probabilities[best],
    probabilities,
    seen: pixels,
    explanation: null,
    model: modelName,
    latency_ms: latency,
    where: "browser",
  });
  panel.show(reading.layers, reading.probabilities);
}

async function loadLocal() {
  local = await BrowserModel.load(MODEL_URL);
  const description = local.description;
  panel = new LayerPanel(document.getElementById("layers"), description, local.weights);
  panel.show(null, null);
  document.getElementById("inside").hidden = false;
  document.body.dataset.engine = "browser";
  window.mnistNN.threads = local.threads;
  return description;
}

// 784 grey levels (MNIST form: light digit on dark, row by row, 0-255) -> the classes' probabilities.
async function predict(pixels) {
  if (!pixels || pixels.length !== 784) throw new TypeError("predict takes 784 grey levels (28x28, row by row)");
  if (local) return Array.from((await local.run(pixels)).probabilities);
  if (STATIC) throw new Error("this page cannot read digits: the browser has no WebAssembly, or the model did not load");
  const rows = Array.from({ length: 28 }, (_, y) => Array.from(pixels.slice(28 * y, 28 * y + 28)));
  const response = await fetch("api/predict?preprocess=false", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ pixels: rows }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.detail || `error ${response.status}`);
  return body.probabilities ? labels.map((name) => body.probabilities[name]) : null;
}

// Opening the toggle explains the answer on show: the same drawing or file is asked again, with its map.
why.addEventListener("toggle", () => {
  if (!why.open || !lastAsked || !hasInk) return;
  setBusy(true);
  submit(lastAsked);
});

// ------------------------------------------------------------------ uploads: button and drag & drop

async function showFile(file) {
  // Show the image on the pad (fitted, on white) and read the original file, not the pad's copy.
  resetPad();
  try {
    const bitmap = await createImageBitmap(file);
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    const w = bitmap.width * scale;
    const h = bitmap.height * scale;
    ctx.drawImage(bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    bitmap.close();
  } catch {
    // A format this browser cannot show (TIFF, say): the server may still read it.
  }
  hasInk = true;
  generation += 1;
  clearTimeout(timer);
  timer = null;
  setBusy(true);
  submit({ kind: "file", file });
}

document.getElementById("upload").addEventListener("click", () => fileInput.click());
fileInput.addEventListener("change", () => {
  if (fileInput.files.length) showFile(fileInput.files[0]);
  fileInput.value = ""; // choosing the same file again still fires
});

for (const type of ["dragenter", "dragover"]) {
  dropzone.addEventListener(type, (event) => {
    event.preventDefault();
    dropzone.classList.add("dragging");
  });
}
for (const type of ["dragleave", "drop"]) {
  dropzone.addEventListener(type, () => dropzone.classList.remove("dragging"));
}
dropzone.addEventListener("drop", (event) => {
  event.preventDefault();
  const file = event.dataTransfer.files[0];
  if (file) showFile(file);
});

// ------------------------------------------------------------------ start

function describe(model) {
  const accuracy = model.test_accuracy == null ? "" : `, test accuracy ${(100 * model.test_accuracy).toFixed(2)}%`;
  // A bundled model goes by its own name ("robust"), its network after it.
  const name = model.pretrained ? `${model.pretrained} (${model.model || model.name})` : model.model || model.name;
  return `${name}: ${model.parameters.toLocaleString("en")} parameters${accuracy}`;
}

async function loadModel() {
  const info = document.getElementById("model-info");
  if (STATIC) {
    try {
      const description = await ready;
      labels = description.labels;
      modelName = description.model;
      info.textContent = `${describe(description)}; runs in this browser`;
    } catch (error) {
      info.textContent = `this page cannot read digits here: ${error.message}`;
    }
    buildBars();
    setBars(null);
    return;
  }
  try {
    const response = await fetch("api/model");
    const model = await response.json();
    labels = model.labels;
    modelName = model.name;
    info.textContent = describe(model);
  } catch {
    info.textContent = "model information unavailable";
  }
  buildBars();
  setBars(null);
}

// The model loads in the background; until it is ready (or where it cannot), the server reads the digits.
const ready = loadLocal();
ready.catch((error) => {
  document.body.dataset.engine = STATIC ? "none" : "server";
  document.body.dataset.engineError = error.message;
});
window.mnistNN = { ready, predict, threads: null, lastInput: null, lastImage: null };

resetPad();
drawSeen(null);
drawWhy(null, null);
buildBars();
loadModel();
