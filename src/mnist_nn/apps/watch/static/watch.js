// The watch page: polls /api/runs about once a second and shows each run's progress, curves and
// sample predictions. The charts are uPlot (vendored in /static/vendor); this file only shapes the
// data for it. Nothing here reaches beyond this server.
"use strict";

const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#be185d", "#4d7c0f"];
const CHART_HEIGHT = 300;

const state = {
  version: null, // the runs' version last drawn (the server's ETag)
  runs: [], // the latest answer's runs
  cards: [], // one card's elements per run
  charts: null, // {loss, accuracy}: the uPlot instances, made at the first answer
  polls: 0,
  lastOk: 0,
};
window.watchCharts = null; // for the browser test: what is plotted

// ------------------------------------------------------------------ formatting

const percent = (value, digits = 2) => (value == null ? "–" : `${(100 * value).toFixed(digits)}%`);
const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function seconds(value) {
  if (value == null) return "–";
  if (value < 60) return `${value.toFixed(value < 10 ? 2 : 1)} s`;
  const minutes = Math.floor(value / 60);
  return `${minutes} min ${Math.round(value - 60 * minutes)} s`;
}

function ago(timestamp) {
  if (timestamp == null) return "";
  const s = Math.max(0, Date.now() / 1000 - timestamp);
  if (s < 90) return `last change ${Math.round(s)} s ago`;
  if (s < 5400) return `last change ${Math.round(s / 60)} min ago`;
  return `last change ${Math.round(s / 3600)} h ago`;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = text;
  return node;
}

// ------------------------------------------------------------------ run cards

function fact(list, label, className) {
  const box = element("div", className);
  box.append(element("dt", null, label));
  const value = element("dd", null, "–");
  box.append(value);
  list.append(box);
  return value;
}

function makeCard(run, index) {
  const card = element("article", "panel run");
  card.style.setProperty("--run-color", COLORS[index % COLORS.length]);
  const title = element("h2");
  title.append(element("span", "name", run.name), element("span", "badge", run.status));
  const facts = element("dl", "facts");
  const parts = {
    card,
    badge: title.lastChild,
    message: element("p", "message"),
    progress: element("progress"),
    epoch: fact(facts, "Epoch", "epoch"),
    time: fact(facts, "Time per epoch (last)", "epoch-time"),
    evalAcc: fact(facts, "Held-out accuracy", "eval-acc"),
    testAcc: fact(facts, "Test accuracy (final)", "final test-acc"),
    about: element("p", "about"),
    age: element("p", "age"),
    samplesTitle: element("h3", null, "Sample test digits"),
    digits: element("ol", "digits"),
    problems: element("ul", "problems"),
    samplesKey: null,
  };
  parts.evalLabel = parts.evalAcc.previousSibling;
  parts.progress.setAttribute("aria-label", `${run.name}: epochs done`);
  card.append(title, parts.message, parts.progress, facts, parts.about, parts.age);
  card.append(parts.samplesTitle, parts.digits, parts.problems);
  return parts;
}

function updateCard(parts, run) {
  parts.card.dataset.status = run.status;
  parts.badge.textContent = run.status;
  parts.message.textContent = run.message;
  const evals = run.eval || { epoch: [], accuracy: [], seconds: [] };
  const total = run.epochs || run.epoch || 1;
  parts.progress.max = total;
  parts.progress.value = Math.min(run.done || 0, total);
  parts.epoch.textContent = run.epoch ? `${run.epoch} of ${run.epochs ?? "?"}` : "–";
  const times = evals.seconds.filter((s) => s != null);
  const mean = times.length ? times.reduce((a, b) => a + b, 0) / times.length : null;
  parts.time.textContent = times.length ? seconds(times[times.length - 1]) : "–";
  if (times.length > 1) parts.time.append(element("small", null, `mean ${seconds(mean)}`));
  const split = { val: "Validation accuracy", test: "Test accuracy, per epoch" }[evals.split];
  parts.evalLabel.textContent = split || "Held-out accuracy";
  parts.evalAcc.textContent = percent(evals.accuracy.length ? evals.accuracy[evals.accuracy.length - 1] : null);
  parts.testAcc.textContent = run.summary ? percent(run.summary.test_accuracy) : "–";
  const about = [run.recipe && `recipe ${run.recipe}`, run.model, run.dataset];
  if (run.parameters) about.push(`${run.parameters.toLocaleString("en")} parameters`);
  if (run.processes > 1) about.push(`data-parallel, ${run.processes} processes`);
  if (run.batches_per_epoch) about.push(`${run.batches_per_epoch} batches per epoch`);
  parts.about.textContent = about.filter(Boolean).join(" · ");
  parts.problems.replaceChildren(...(run.problems || []).map((p) => element("li", null, p)));
  updateSamples(parts, run.samples);
}

function updateSamples(parts, samples) {
  parts.samplesTitle.hidden = parts.digits.hidden = !samples;
  if (!samples) return;
  parts.samplesTitle.textContent = samples.epoch
    ? `Ten test digits: true label → the network's answer after epoch ${samples.epoch}`
    : "Ten test digits (no answers yet)";
  const key = JSON.stringify([samples.epoch, samples.labels, samples.predictions]);
  if (key === parts.samplesKey) return;
  parts.samplesKey = key;
  parts.digits.replaceChildren(...samples.labels.map((label, i) => digitItem(samples, label, i)));
}

function digitItem(samples, label, i) {
  const item = element("li");
  const canvas = element("canvas");
  canvas.width = canvas.height = 28;
  drawDigit(canvas, samples.pixels[i]);
  const caption = element("div");
  caption.append(element("span", "truth", String(label)));
  if (samples.predictions) {
    const said = samples.predictions[i];
    const confidence = samples.confidences[i];
    item.classList.add(said === label ? "right" : "wrong");
    caption.append(" → ", element("span", "said", String(said)), " ", element("span", "conf", percent(confidence, 0)));
    canvas.setAttribute("aria-label", `a ${label}; the network says ${said} (${percent(confidence, 0)} sure)`);
  } else {
    canvas.setAttribute("aria-label", `a ${label}`);
  }
  canvas.setAttribute("role", "img");
  item.append(canvas, caption);
  return item;
}

function drawDigit(canvas, pixels) {
  const context = canvas.getContext("2d");
  const image = context.createImageData(28, 28);
  for (let i = 0; i < pixels.length; i++) {
    const ink = 255 - pixels[i]; // MNIST is light on dark; shown as ink on paper
    image.data[4 * i] = image.data[4 * i + 1] = image.data[4 * i + 2] = ink;
    image.data[4 * i + 3] = 255;
  }
  context.putImageData(image, 0, 0);
}

// ------------------------------------------------------------------ charts

// uPlot plots series that share one x array: join each run's (x, y) pairs on the union of their x.
function align(tables) {
  const xs = [...new Set(tables.flatMap(([x]) => x))].sort((a, b) => a - b);
  const where = new Map(xs.map((x, i) => [x, i]));
  const columns = tables.map(([x, y]) => {
    const column = new Array(xs.length).fill(null);
    x.forEach((value, i) => (column[where.get(value)] = y[i]));
    return column;
  });
  return [xs, ...columns];
}

function chart(container, series, yLabel, format) {
  const options = {
    width: container.clientWidth || 560,
    height: CHART_HEIGHT,
    scales: { x: { time: false } },
    axes: [
      { label: "epoch" },
      format ? { label: yLabel, size: 60, values: (u, ticks) => ticks.map(format) } : { label: yLabel, size: 60 },
    ],
    series: [{ label: "epoch", value: (u, v) => (v == null ? "–" : v.toFixed(2)) }, ...series],
    legend: { live: true },
    cursor: { drag: { x: true, y: false } },
  };
  const plot = new uPlot(options, [[], ...series.map(() => [])], container);
  new ResizeObserver(() => plot.setSize({ width: container.clientWidth, height: CHART_HEIGHT })).observe(container);
  return plot;
}

function makeCharts(runs) {
  const lossSeries = [];
  const accuracySeries = [];
  runs.forEach((run, i) => {
    const color = COLORS[i % COLORS.length];
    const name = runs.length > 1 ? `${run.name}: ` : "";
    const point = { size: 7, fill: color, stroke: color };
    const value = (digits) => (u, v) => (v == null ? "–" : v.toFixed(digits));
    lossSeries.push({ label: `${name}train loss`, stroke: color, width: 1, spanGaps: true, points: { show: false }, value: value(4) });
    lossSeries.push({ label: `${name}held-out loss`, stroke: color, width: 2, dash: [7, 5], spanGaps: true, points: { show: true, ...point }, value: value(4) });
    accuracySeries.push({ label: `${name}held-out accuracy`, stroke: color, width: 2, spanGaps: true, points: { show: true, ...point }, value: (u, v) => (v == null ? "–" : `${v.toFixed(2)}%`) });
  });
  return {
    loss: chart(document.getElementById("loss-chart"), lossSeries, "loss", null),
    accuracy: chart(document.getElementById("accuracy-chart"), accuracySeries, "accuracy", (v) => `${+v.toFixed(2)}%`),
  };
}

function updateCharts(runs) {
  const empty = [[], []];
  const loss = [];
  const accuracy = [];
  for (const run of runs) {
    const train = run.train ? [run.train.x, run.train.loss] : empty;
    const evals = run.eval ? [run.eval.epoch, run.eval.loss] : empty;
    const acc = run.eval ? [run.eval.epoch, run.eval.accuracy.map((a) => (a == null ? null : 100 * a))] : empty;
    loss.push(train, evals);
    accuracy.push(acc);
  }
  state.charts.loss.setData(align(loss));
  state.charts.accuracy.setData(align(accuracy));
  const plotted = (plot) => plot.data.slice(1).reduce((n, column) => n + column.filter((v) => v != null).length, 0);
  document.body.dataset.lossPoints = plotted(state.charts.loss);
  document.body.dataset.accuracyPoints = plotted(state.charts.accuracy);
}

// ------------------------------------------------------------------ polling

function render(answer) {
  const runs = answer.runs;
  if (!state.charts) {
    document.getElementById("title").textContent =
      runs.length === 1 ? `Watching ${runs[0].name}` : `Comparing ${runs.length} runs`;
    document.title = `mnist-nn: ${runs.length === 1 ? runs[0].name : plural(runs.length, "run")}`;
    const list = document.getElementById("runs");
    state.cards = runs.map((run, i) => makeCard(run, i));
    list.replaceChildren(...state.cards.map((parts) => parts.card));
    state.charts = makeCharts(runs);
    window.watchCharts = state.charts;
  }
  runs.forEach((run, i) => updateCard(state.cards[i], run));
  updateCharts(runs);
  state.runs = runs;
  document.body.dataset.finished = runs.filter((run) => run.status === "finished").length;
}

function showAges() {
  state.runs.forEach((run, i) => (state.cards[i].age.textContent = ago(run.modified)));
}

function showConnection(ok, detail) {
  const line = document.getElementById("connection");
  line.classList.toggle("lost", !ok);
  if (ok) {
    const runs = state.runs;
    const finished = runs.filter((run) => run.status === "finished").length;
    const waiting = runs.filter((run) => run.status === "waiting").length;
    const parts = [];
    if (runs.length - finished - waiting) parts.push(`${runs.length - finished - waiting} training`);
    if (finished) parts.push(`${finished} finished`);
    if (waiting) parts.push(`${waiting} waiting for the run to start`);
    line.textContent = `${parts.join(", ")} · live: refreshed about every second`;
  } else {
    line.textContent = `cannot reach the watch server (${detail}): is mnist-nn still running? Showing the last data.`;
  }
}

async function poll() {
  let wait = 1000;
  try {
    // "no-cache": always ask the server, which answers 304 (and the browser its copy) while nothing changed.
    const response = await fetch("/api/runs", { cache: "no-cache" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const answer = await response.json();
    wait = answer.poll_ms || wait;
    if (answer.version !== state.version) {
      render(answer);
      state.version = answer.version;
      document.body.dataset.version = answer.version;
    }
    showConnection(true);
  } catch (error) {
    showConnection(false, error.message || String(error));
  }
  state.polls += 1;
  document.body.dataset.polls = state.polls;
  showAges();
  setTimeout(poll, wait);
}

poll();
