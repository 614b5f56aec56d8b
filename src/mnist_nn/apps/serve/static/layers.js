// The layer panel: every layer's output for the digit on the pad. A convolution's feature maps are small
// images (one per filter, brighter = stronger), a dense layer's units a strip of cells, the softmax last.
// Each layer is scaled to its own strongest value, so its brightest cell is white. Hovering a unit of the
// first layer shows its weights: what in the input excites it (red) or inhibits it (blue).

const TILE_GAP = 2;
const STRIP_COLUMNS = 32;
const CELL = 8;
const SOFTMAX_CELL = 26;

function tileSize(side) {
  return Math.max(1, Math.round(28 / side)); // small maps are drawn bigger: every map about 28 px wide
}

function layerCanvas(layer) {
  const canvas = document.createElement("canvas");
  if (layer.kind === "maps") {
    const [channels, height, width] = layer.shape;
    const scale = tileSize(Math.max(height, width));
    const columns = Math.min(channels, 16);
    const rows = Math.ceil(channels / columns);
    canvas.width = columns * (width * scale + TILE_GAP) - TILE_GAP;
    canvas.height = rows * (height * scale + TILE_GAP) - TILE_GAP;
    Object.assign(canvas.dataset, { columns, gap: TILE_GAP, unitWidth: width * scale, unitHeight: height * scale });
    canvas.dataset.scale = scale;
  } else {
    const units = layer.shape.reduce((a, b) => a * b, 1);
    const columns = Math.min(units, STRIP_COLUMNS);
    canvas.width = columns * CELL;
    canvas.height = Math.ceil(units / columns) * CELL;
    Object.assign(canvas.dataset, { columns, gap: 0, unitWidth: CELL, unitHeight: CELL });
  }
  canvas.setAttribute("role", "img");
  return canvas;
}

function grey(image, x, y, value) {
  const i = 4 * (y * image.width + x);
  image.data[i] = image.data[i + 1] = image.data[i + 2] = value;
  image.data[i + 3] = 255;
}

function drawLayer(canvas, layer, values) {
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(canvas.width, canvas.height);
  let peak = 0;
  for (const v of values || []) peak = Math.max(peak, Math.abs(v));
  const level = (v) => (peak > 0 ? Math.round((255 * Math.max(0, v)) / peak) : 0);
  const columns = Number(canvas.dataset.columns);
  if (layer.kind === "maps") {
    const [channels, height, width] = layer.shape;
    const scale = Number(canvas.dataset.scale);
    for (let c = 0; c < channels; c++) {
      const left = (c % columns) * (width * scale + TILE_GAP);
      const top = Math.floor(c / columns) * (height * scale + TILE_GAP);
      for (let y = 0; y < height * scale; y++) {
        for (let x = 0; x < width * scale; x++) {
          const v = values ? values[c * height * width + Math.floor(y / scale) * width + Math.floor(x / scale)] : 0;
          grey(image, left + x, top + y, level(v));
        }
      }
    }
  } else {
    const units = layer.shape.reduce((a, b) => a * b, 1);
    for (let u = 0; u < units; u++) {
      const v = values ? level(values[u]) : 0;
      for (let y = 0; y < CELL - 1; y++) {
        for (let x = 0; x < CELL - 1; x++) grey(image, (u % columns) * CELL + x, Math.floor(u / columns) * CELL + y, v);
      }
    }
  }
  ctx.putImageData(image, 0, 0);
}

// Which unit of a layer canvas is under the pointer; -1 for none.
function unitAt(canvas, event, count) {
  const rect = canvas.getBoundingClientRect();
  const x = ((event.clientX - rect.left) * canvas.width) / rect.width;
  const y = ((event.clientY - rect.top) * canvas.height) / rect.height;
  const gap = Number(canvas.dataset.gap);
  const stepX = Number(canvas.dataset.unitWidth) + gap;
  const stepY = Number(canvas.dataset.unitHeight) + gap;
  const unit = Math.floor(y / stepY) * Number(canvas.dataset.columns) + Math.floor(x / stepX);
  return unit >= 0 && unit < count ? unit : -1;
}

// One unit's weights as a diverging image: red for positive, blue for negative, as strong as their size.
function drawWeights(canvas, weights, unit) {
  const { shape, transposed } = weights.layout;
  const [units, ...rest] = shape; // PyTorch's layout; the data is [inputs, units] when transposed
  const inputs = rest.reduce((a, b) => a * b, 1);
  const side = Math.round(Math.sqrt(inputs));
  canvas.width = canvas.height = side;
  const values = new Float32Array(inputs);
  for (let i = 0; i < inputs; i++) values[i] = transposed ? weights.data[i * units + unit] : weights.data[unit * inputs + i];
  let peak = 0;
  for (const v of values) peak = Math.max(peak, Math.abs(v));
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(side, side);
  for (let i = 0; i < side * side; i++) {
    const s = peak > 0 ? values[i] / peak : 0;
    const a = Math.abs(s);
    const tint = s >= 0 ? [220, 50, 32] : [40, 110, 230];
    for (let c = 0; c < 3; c++) image.data[4 * i + c] = Math.round(255 * (1 - a) + tint[c] * a);
    image.data[4 * i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
}

export class LayerPanel {
  constructor(root, description, weightsData) {
    this.root = root;
    this.layers = description.layers;
    this.labels = description.labels;
    this.weights = { layout: description.weights, data: weightsData };
    this.canvases = [];
    this.updates = 0;
    this.build();
  }

  build() {
    const items = this.layers.map((layer, index) => {
      const figure = document.createElement("figure");
      figure.className = "layer";
      const canvas = layerCanvas(layer);
      const units = layer.kind === "maps" ? layer.shape[0] : layer.shape.reduce((a, b) => a * b, 1);
      const what = layer.kind === "maps" ? `${units} feature maps of ${layer.shape[1]}×${layer.shape[2]}` : `${units} units`;
      canvas.setAttribute("aria-label", `${layer.title}: ${what}`);
      const caption = document.createElement("figcaption");
      caption.textContent = `${layer.title}: ${what}`;
      figure.append(caption, canvas);
      this.canvases.push(canvas);
      if (index === 0) this.hoverable(canvas, units);
      return figure;
    });
    this.softmax = document.createElement("canvas");
    this.softmax.width = SOFTMAX_CELL * this.labels.length;
    this.softmax.height = SOFTMAX_CELL;
    this.softmax.setAttribute("role", "img");
    this.softmax.setAttribute("aria-label", "softmax: the probability of each class");
    const figure = document.createElement("figure");
    figure.className = "layer softmax";
    const caption = document.createElement("figcaption");
    caption.textContent = "softmax: each class's probability";
    figure.append(caption, this.softmax);
    this.root.replaceChildren(...items, figure);
  }

  hoverable(canvas, units) {
    const view = document.getElementById("weights");
    const caption = document.getElementById("weights-caption");
    const first = this.layers[0].title.split(",")[0];
    canvas.classList.add("hoverable");
    canvas.addEventListener("pointermove", (event) => {
      const unit = unitAt(canvas, event, units);
      if (unit < 0) return;
      drawWeights(view, this.weights, unit);
      view.hidden = false;
      caption.textContent = `${first}, unit ${unit + 1}: its weights (red excites it, blue inhibits it)`;
    });
  }

  // One cell per class, as bright as its probability, its label written in it.
  drawSoftmax(probabilities) {
    const ctx = this.softmax.getContext("2d");
    ctx.font = `${Math.round(SOFTMAX_CELL * 0.55)}px system-ui, sans-serif`;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    this.labels.forEach((label, i) => {
      const v = probabilities ? Math.round(255 * probabilities[i]) : 0;
      ctx.fillStyle = `rgb(${v}, ${v}, ${v})`;
      ctx.fillRect(i * SOFTMAX_CELL, 0, SOFTMAX_CELL - 1, SOFTMAX_CELL);
      ctx.fillStyle = v > 127 ? "#000" : "#9aa4b2";
      ctx.fillText(label.slice(0, 2), i * SOFTMAX_CELL + SOFTMAX_CELL / 2, SOFTMAX_CELL / 2);
    });
  }

  show(layerValues, probabilities) {
    this.layers.forEach((layer, i) => drawLayer(this.canvases[i], layer, layerValues ? layerValues[i] : null));
    this.drawSoftmax(probabilities);
    this.updates += 1;
    this.root.dataset.updates = String(this.updates);
  }
}
