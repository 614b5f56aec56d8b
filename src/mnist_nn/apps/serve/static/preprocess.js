// A drawing -> MNIST form (28x28, light digit on dark), in the same steps as the server's preprocessing
// of a drawing (mnist_nn.inference.preprocess): the ink against the paper (the border's median), a
// hysteresis threshold (5% and 20% of the contrast), strokes scaled so that a full one is 255, specks
// dropped, the ink's box cropped, its half-strength box's longer side fitted to 20 px with Pillow's
// Lanczos filter, and the result placed in 28x28 with its centre of mass at the centre. The server also
// thins or thickens strokes far outside MNIST's range (a marker, a hairline pen); the pad's pen is of
// MNIST's width for digits of ordinary size, so the page leaves that step out.

const MNIST_SIZE = 28;
const MNIST_BOX = 20;
const MNIST_CENTRE = 14;
const HALF_STRENGTH = 0.5;
const LOW_THRESHOLD = 0.05;
const HIGH_THRESHOLD = 0.2;
const MIN_INK_CONTRAST = 20;
const FULL_STROKE_PERCENTILE = 90;
const FULL_STROKE_MARGIN = 1;
const BORDER_PARTS = 20;
const SPECK_SHARE = 0.05;
const SPECK_PIXELS = 4;
const MAX_BLOBS = 12;

// Python's round(): halves to the even neighbour.
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

function median(values) {
  const sorted = Float64Array.from(values).sort();
  const middle = sorted.length >> 1;
  return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

// numpy's percentile with linear interpolation.
function percentile(values, q) {
  const sorted = Float64Array.from(values).sort();
  const position = ((sorted.length - 1) * q) / 100;
  const below = Math.floor(position);
  const above = Math.min(below + 1, sorted.length - 1);
  return sorted[below] + (sorted[above] - sorted[below]) * (position - below);
}

// The frame a BORDER_PARTS-th of the shorter side wide, where the paper is (arrays.border).
function border(image, width, height) {
  const w = Math.max(1, Math.floor(Math.min(width, height) / BORDER_PARTS));
  const out = [];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (y < w || y >= height - w || x < w || x >= width - w) out.push(image[y * width + x]);
    }
  }
  return out;
}

// 8-connected components of a mask: a label per pixel (0 = none) and each label's area.
function components(mask, width, height) {
  const labels = new Int32Array(width * height);
  const areas = [0];
  const stack = [];
  for (let start = 0; start < mask.length; start++) {
    if (!mask[start] || labels[start]) continue;
    const label = areas.length;
    let area = 0;
    labels[start] = label;
    stack.push(start);
    while (stack.length) {
      const i = stack.pop();
      area += 1;
      const x = i % width;
      const y = (i - x) / width;
      for (let dy = -1; dy <= 1; dy++) {
        for (let dx = -1; dx <= 1; dx++) {
          const nx = x + dx;
          const ny = y + dy;
          if (nx < 0 || ny < 0 || nx >= width || ny >= height) continue;
          const j = ny * width + nx;
          if (mask[j] && !labels[j]) {
            labels[j] = label;
            stack.push(j);
          }
        }
      }
    }
    areas.push(area);
  }
  return { labels, areas };
}

// The ink as MNIST sees it (ink.extract_ink for clean paper): float [H*W], 0 = paper, a full stroke 255.
function extractInk(grey, width, height) {
  const paper = median(border(grey, width, height));
  const signal = new Float64Array(grey.length);
  const darkInk = paper >= 128; // the pad is white: dark ink; a dark image has light ink
  for (let i = 0; i < grey.length; i++) signal[i] = darkInk ? paper - grey[i] : grey[i] - paper;
  const level = median(border(signal, width, height));
  let contrast = -Infinity;
  for (let i = 0; i < signal.length; i++) {
    signal[i] -= level;
    contrast = Math.max(contrast, signal[i]);
  }
  if (!(contrast >= MIN_INK_CONTRAST)) return null;
  const low = LOW_THRESHOLD * contrast;
  const high = HIGH_THRESHOLD * contrast;
  const { labels, areas } = components(
    signal.map((v) => v > low),
    width,
    height
  );
  const strong = new Uint8Array(areas.length);
  for (let i = 0; i < signal.length; i++) if (signal[i] > high) strong[labels[i]] = 1;
  const inked = [];
  for (let i = 0; i < signal.length; i++) if (labels[i] && strong[labels[i]]) inked.push(signal[i]);
  const full = Math.max(percentile(inked, FULL_STROKE_PERCENTILE), high + FULL_STROKE_MARGIN);
  const pixels = new Float64Array(signal.length);
  const mask = new Uint8Array(signal.length);
  for (let i = 0; i < signal.length; i++) {
    if (labels[i] && strong[labels[i]]) {
      mask[i] = 1;
      pixels[i] = Math.min(1, Math.max(0, signal[i] / full)) * 255;
    }
  }
  return dropSpecks(pixels, mask, width, height);
}

// Blobs smaller than a 20th of the largest (and 4 pixels) are noise (components.drop_specks).
function dropSpecks(pixels, mask, width, height) {
  const { labels, areas } = components(mask, width, height);
  const largest = Math.max(...areas.slice(1));
  const kept = areas.map((area, label) => label > 0 && area >= Math.max(SPECK_PIXELS, SPECK_SHARE * largest));
  if (kept.filter(Boolean).length > MAX_BLOBS) return null;
  for (let i = 0; i < pixels.length; i++) if (!kept[labels[i]]) pixels[i] = 0;
  return pixels;
}

// (y0, x0, y1, x1), ends exclusive, of where test(value) holds; null when nowhere.
function bounds(image, width, height, test) {
  let y0 = height;
  let x0 = width;
  let y1 = -1;
  let x1 = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (test(image[y * width + x])) {
        y0 = Math.min(y0, y);
        y1 = Math.max(y1, y);
        x0 = Math.min(x0, x);
        x1 = Math.max(x1, x);
      }
    }
  }
  return y1 < 0 ? null : [y0, x0, y1 + 1, x1 + 1];
}

function crop(image, width, [y0, x0, y1, x1]) {
  const out = new Float64Array((y1 - y0) * (x1 - x0));
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) out[(y - y0) * (x1 - x0) + (x - x0)] = image[y * width + x];
  }
  return out;
}

function sinc(x) {
  if (x === 0) return 1;
  const px = x * Math.PI;
  return Math.sin(px) / px;
}

function lanczos(x) {
  return x >= -3 && x < 3 ? sinc(x) * sinc(x / 3) : 0;
}

// Pillow's resampling coefficients (Resample.c, precompute_coeffs) for one axis.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(1, scale);
  const support = 3 * filterScale;
  const rows = [];
  for (let xx = 0; xx < outSize; xx++) {
    const centre = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(centre - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(centre + support + 0.5)) - xmin;
    const weights = [];
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      const w = lanczos((x + xmin - centre + 0.5) / filterScale);
      weights.push(w);
      total += w;
    }
    rows.push({ xmin, weights: weights.map((w) => (total !== 0 ? w / total : w)) });
  }
  return rows;
}

// Pillow's Image.resize(LANCZOS) of a float32 ("F") image: horizontal pass, then vertical, float32 between.
function resizeLanczos(image, width, height, outWidth, outHeight) {
  let current = image;
  let w = width;
  if (outWidth !== width) {
    const coeffs = coefficients(width, outWidth);
    const next = new Float32Array(outWidth * height);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < outWidth; x++) {
        const { xmin, weights } = coeffs[x];
        let sum = 0;
        for (let k = 0; k < weights.length; k++) sum += current[y * w + xmin + k] * weights[k];
        next[y * outWidth + x] = sum;
      }
    }
    current = next;
    w = outWidth;
  }
  if (outHeight !== height) {
    const coeffs = coefficients(height, outHeight);
    const next = new Float32Array(w * outHeight);
    for (let y = 0; y < outHeight; y++) {
      const { xmin, weights } = coeffs[y];
      for (let x = 0; x < w; x++) {
        let sum = 0;
        for (let k = 0; k < weights.length; k++) sum += current[(xmin + k) * w + x] * weights[k];
        next[y * w + x] = sum;
      }
    }
    current = next;
  }
  return Float32Array.from(current, (v) => Math.min(255, Math.max(0, v)));
}

// The crop scaled so that its half-strength box's longer side is 20 px (normalize._fitted).
function fitted(image, width, height) {
  let peak = 0;
  for (const v of image) peak = Math.max(peak, Math.fround(v));
  const [y0, x0, y1, x1] = bounds(image, width, height, (v) => Math.fround(v) >= HALF_STRENGTH * peak);
  const factor = MNIST_BOX / Math.max(y1 - y0, x1 - x0);
  const outWidth = Math.max(1, roundHalfEven(width * factor));
  const outHeight = Math.max(1, roundHalfEven(height * factor));
  const f32 = Float32Array.from(image);
  return { pixels: resizeLanczos(f32, width, height, outWidth, outHeight), width: outWidth, height: outHeight };
}

// The fitted digit in 28x28, its centre of mass moved to (14, 14) by whole pixels (normalize._centred).
function centred({ pixels, width, height }) {
  let total = 0;
  let sy = 0;
  let sx = 0;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const v = pixels[y * width + x];
      total += v;
      sy += y * v;
      sx += x * v;
    }
  }
  if (!(total > 0)) return null;
  const top = roundHalfEven(MNIST_CENTRE - sy / total);
  const left = roundHalfEven(MNIST_CENTRE - sx / total);
  const out = new Float32Array(MNIST_SIZE * MNIST_SIZE);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const ty = y + top;
      const tx = x + left;
      if (ty >= 0 && tx >= 0 && ty < MNIST_SIZE && tx < MNIST_SIZE) out[ty * MNIST_SIZE + tx] = pixels[y * width + x];
    }
  }
  return out;
}

// Grey levels of a drawing (Uint8/Float array, row by row) -> Float32Array(784) in MNIST form, or null
// when there is no digit (no ink, too faint, too many blobs).
export function toMnist(grey, width, height) {
  const ink = extractInk(grey, width, height);
  if (!ink) return null;
  const box = bounds(ink, width, height, (v) => v > 0);
  if (!box) return null;
  const [y0, x0, y1, x1] = box;
  return centred(fitted(crop(ink, width, box), x1 - x0, y1 - y0));
}

// A canvas's grey levels (ITU-R 601-2 luma, as Pillow's convert("L")), row by row.
export function canvasGrey(canvas) {
  const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  const grey = new Uint8Array(canvas.width * canvas.height);
  for (let i = 0; i < grey.length; i++) {
    grey[i] = (data[4 * i] * 19595 + data[4 * i + 1] * 38470 + data[4 * i + 2] * 7471 + 0x8000) >> 16;
  }
  return grey;
}
