// The network in the browser: the page's ONNX model run by ONNX Runtime Web's WebAssembly build (vendored
// beside this file, loaded from this page's own origin). The model describes itself: `mnist-nn` writes
// the page's description (labels, layers, the zoom its checkpoint reads images at) into the ONNX
// file's metadata, under "mnist_nn.web", read here from the file's bytes.

import { isolatedThreads } from "./isolation.js";

const RUNTIME = new URL("./vendor/onnxruntime-web/", import.meta.url).href;
const WEB_KEY = "mnist_nn.web";
const SIZE = 28;

// ---------------------------------------------------------------- the ONNX file's own description

// Protocol buffers, as little as needed: ModelProto's field 14 (metadata_props), each a key (1) and value (2).
function varint(bytes, at) {
  let value = 0;
  let shift = 1;
  let i = at;
  for (;;) {
    const b = bytes[i++];
    value += (b & 0x7f) * shift;
    if (b < 0x80) return [value, i];
    shift *= 128;
  }
}

function fields(bytes, start = 0, end = bytes.length) {
  const out = [];
  let i = start;
  while (i < end) {
    let key;
    [key, i] = varint(bytes, i);
    const number = Math.floor(key / 8);
    const type = key % 8;
    if (type === 0) [, i] = varint(bytes, i);
    else if (type === 1) i += 8;
    else if (type === 5) i += 4;
    else if (type === 2) {
      let length;
      [length, i] = varint(bytes, i);
      out.push({ number, start: i, end: i + length });
      i += length;
    } else throw new Error(`unexpected protobuf wire type ${type}`);
  }
  return out;
}

export function metadata(bytes) {
  const text = new TextDecoder();
  const entries = {};
  for (const field of fields(bytes)) {
    if (field.number !== 14) continue;
    const parts = Object.fromEntries(
      fields(bytes, field.start, field.end).map((f) => [f.number, text.decode(bytes.subarray(f.start, f.end))])
    );
    entries[parts[1]] = parts[2];
  }
  if (!entries[WEB_KEY]) throw new Error("this ONNX model has no page description: export it with mnist-nn");
  return JSON.parse(entries[WEB_KEY]);
}

// ---------------------------------------------------------------- zoomed views, as `mnist-nn predict` reads

// torch's grid_sample (bilinear, zeros outside, align_corners=False) over a grid spanning `factor` of the image:
// per output row (and column, the same numbers) the first source row and its weight, computed once per zoom.
function samplingGrid(factor) {
  const first = new Int32Array(SIZE);
  const weight = new Float64Array(SIZE);
  for (let i = 0; i < SIZE; i++) {
    const at = ((factor * ((2 * i + 1) / SIZE - 1) + 1) * SIZE) / 2 - 0.5;
    first[i] = Math.floor(at);
    weight[i] = at - first[i];
  }
  return { first, weight };
}

// The view of `pixels` zoomed by `grid` (samplingGrid), written into `out` from `offset`.
function zoomInto(pixels, { first, weight }, out, offset) {
  const at = (x, y) => (x < 0 || y < 0 || x >= SIZE || y >= SIZE ? 0 : pixels[y * SIZE + x]);
  for (let i = 0; i < SIZE; i++) {
    const y0 = first[i];
    const wy = weight[i];
    for (let j = 0; j < SIZE; j++) {
      const x0 = first[j];
      const wx = weight[j];
      out[offset + i * SIZE + j] =
        (1 - wy) * ((1 - wx) * at(x0, y0) + wx * at(x0 + 1, y0)) + wy * ((1 - wx) * at(x0, y0 + 1) + wx * at(x0 + 1, y0 + 1));
    }
  }
}

// ---------------------------------------------------------------- the model

// ONNX Runtime Web's threads: several only where the page is cross-origin isolated (shared memory needs
// it: `serve` sends the headers, a static folder's service worker adds them; isolation.js), one otherwise.
function threads() {
  return self.crossOriginIsolated ? isolatedThreads() : 1;
}

export class BrowserModel {
  constructor(ort, session, description) {
    this.ort = ort;
    this.session = session;
    this.description = description;
    this.weights = null;
    this.threads = 1;
    const zoom = description.zoom || 0;
    // The views one reading averages: the digit as it is, and zoomed in and out by the checkpoint's zoom.
    this.grids = zoom ? [samplingGrid(1 - zoom), samplingGrid(1 + zoom)] : [];
  }

  // Load the runtime and the model at `url`; throws where WebAssembly or the model is unavailable.
  static async load(url) {
    if (typeof WebAssembly !== "object") throw new Error("this browser has no WebAssembly");
    const ort = await import("./vendor/onnxruntime-web/ort.wasm.min.mjs");
    ort.env.wasm.wasmPaths = RUNTIME;
    ort.env.wasm.numThreads = threads(); // read once, when the first session starts the runtime
    ort.env.wasm.proxy = false;
    const response = await fetch(url);
    if (!response.ok) throw new Error(`the model is unavailable (${response.status})`);
    const bytes = new Uint8Array(await response.arrayBuffer());
    const description = metadata(bytes);
    const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    const model = new BrowserModel(ort, session, description);
    model.threads = ort.env.wasm.numThreads;
    const pixels = new Float32Array(SIZE * SIZE);
    const first = await session.run({ pixels: new ort.Tensor("float32", pixels, [1, SIZE, SIZE]) }, [
      description.weights.output,
    ]);
    model.weights = first[description.weights.output].data;
    return model;
  }

  // The model's input: the views one after the other, [views, 28, 28] (`mnist-nn predict`'s).
  views(pixels) {
    const input = new Float32Array((1 + this.grids.length) * SIZE * SIZE);
    input.set(pixels);
    const digit = input.subarray(0, SIZE * SIZE); // as float32, as the model reads it
    this.grids.forEach((grid, i) => zoomInto(digit, grid, input, (i + 1) * SIZE * SIZE));
    return input;
  }

  // 784 grey levels (MNIST form) -> {probabilities: Float64Array(classes), layers: [Float32Array] | null}.
  async run(pixels, withLayers = false) {
    const input = this.views(pixels);
    const views = input.length / (SIZE * SIZE);
    const layerNames = withLayers ? this.description.layers.map((layer) => layer.output) : [];
    const results = await this.session.run(
      { pixels: new this.ort.Tensor("float32", input, [views, SIZE, SIZE]) },
      ["probabilities", ...layerNames]
    );
    const classes = this.description.labels.length;
    const all = results.probabilities.data;
    // The mean of the views' probabilities, as `mnist-nn predict` averages them (in log space, the same number).
    const probabilities = new Float64Array(classes);
    for (let v = 0; v < views; v++) {
      for (let c = 0; c < classes; c++) probabilities[c] += all[v * classes + c] / views;
    }
    // The panel shows the digit as it is: the first view of each layer's output.
    const layers = layerNames.map((name) => {
      const data = results[name].data;
      return data.subarray(0, data.length / views);
    });
    return { probabilities, layers: withLayers ? layers : null };
  }
}
