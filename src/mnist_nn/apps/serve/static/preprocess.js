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

// Working arrays, kept from one drawing to the next (the pad's size does not change): a fresh 112x112
// array per step and drawing took about as long as the steps themselves. scratch(key, Type, n) is
// the first n elements of the array kept under `key`, zeroed.
const scratchArrays = new Map();
function scratch(key, Type, length) {
  let array = scratchArrays.get(key);
  if (!array || array.length < length) {
    array = new Type(length);
    scratchArrays.set(key, array);
    return array;
  }
  array = array.subarray(0, length);
  array.fill(0);
  return array;
}

// Python's round(): halves to the even neighbour.
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// The k-th smallest of `values` (a typed array this function reorders), by quickselect: afterwards
// nothing before k is larger and nothing after it smaller. O(n), where sorting a digit's ink was most
// of the preprocessing's time.
function select(values, k) {
  let left = 0;
  let right = values.length - 1;
  while (right > left) {
    const pivot = values[(left + right) >> 1];
    let i = left;
    let j = right;
    while (i <= j) {
      while (values[i] < pivot) i++;
      while (values[j] > pivot) j--;
      if (i <= j) {
        const t = values[i];
        values[i++] = values[j];
        values[j--] = t;
      }
    }
    if (k <= j) right = j;
    else if (k >= i) left = i;
    else break;
  }
  return values[k];
}

// The smallest of values[from...]: after select(values, k), the (k+1)-th smallest is values[k + 1...]'s least.
function leastFrom(values, from) {
  let least = Infinity;
  for (let i = from; i < values.length; i++) if (values[i] < least) least = values[i];
  return least;
}

// The median of `values`, a typed array this function may reorder.
function median(values) {
  const middle = values.length >> 1;
  if (values.length % 2) return select(values, middle);
  const below = select(values, middle - 1);
  return (below + leastFrom(values, middle)) / 2;
}

// numpy's percentile with linear interpolation, of a typed array this function may reorder.
function percentile(values, q) {
  const position = ((values.length - 1) * q) / 100;
  const below = Math.floor(position);
  const low = select(values, below);
  const high = below + 1 < values.length ? leastFrom(values, below + 1) : low;
  return low + (high - low) * (position - below);
}

// The frame a BORDER_PARTS-th of the shorter side wide, where the paper is (arrays.border): its
// values, in a new Float64Array, in no particular order (only their median is used).
function border(image, width, height) {
  const w = Math.max(1, Math.floor(Math.min(width, height) / BORDER_PARTS));
  const out = scratch("border", Float64Array, width * height);
  const right = Math.max(w, width - w);
  let n = 0;
  for (let y = 0; y < height; y++) {
    const row = y * width;
    if (y < w || y >= height - w) {
      for (let x = 0; x < width; x++) out[n++] = image[row + x];
    } else {
      for (let x = 0; x < w; x++) out[n++] = image[row + x];
      for (let x = right; x < width; x++) out[n++] = image[row + x];
    }
  }
  return out.subarray(0, n);
}

// 8-connected components of the pixels where signal > low: a label per pixel (0 = none), each label's
// area (Int32Array, index 0 unused), and the labelled pixels' indices (`order`, the first `count`), so
// that later steps visit the ink alone rather than the whole pad. Breadth first, with typed arrays.
function components(signal, low, width, height) {
  const labels = scratch("labels", Int32Array, width * height);
  const order = scratch("order", Int32Array, width * height);
  const areas = [0];
  let tail = 0;
  for (let start = 0; start < signal.length; start++) {
    if (!(signal[start] > low) || labels[start]) continue;
    const label = areas.length;
    const first = tail;
    let head = tail;
    labels[start] = label;
    order[tail++] = start;
    while (head < tail) {
      const i = order[head++];
      const y = (i / width) | 0;
      const x = i - y * width;
      const y0 = y > 0 ? y - 1 : 0;
      const y1 = y < height - 1 ? y + 1 : y;
      const x0 = x > 0 ? x - 1 : 0;
      const x1 = x < width - 1 ? x + 1 : x;
      for (let ny = y0; ny <= y1; ny++) {
        for (let j = ny * width + x0, end = ny * width + x1; j <= end; j++) {
          if (signal[j] > low && !labels[j]) {
            labels[j] = label;
            order[tail++] = j;
          }
        }
      }
    }
    areas.push(tail - first);
  }
  return { labels, areas: Int32Array.from(areas), order: order.subarray(0, tail) };
}

// The signal of ink against the paper: the border's median is the paper; positive where inked.
function inkSignal(grey, width, height) {
  const paper = median(border(grey, width, height));
  const signal = scratch("signal", Float64Array, grey.length);
  if (paper >= 128) {
    for (let i = 0; i < grey.length; i++) signal[i] = paper - grey[i]; // the pad is white: dark ink
  } else {
    for (let i = 0; i < grey.length; i++) signal[i] = grey[i] - paper; // a dark image has light ink
  }
  const level = median(border(signal, width, height));
  let contrast = -Infinity;
  for (let i = 0; i < signal.length; i++) {
    const v = signal[i] - level;
    signal[i] = v;
    if (v > contrast) contrast = v;
  }
  return { signal, contrast };
}

// The ink as MNIST sees it (ink.extract_ink for clean paper, then components.drop_specks): float
// [H*W], 0 = paper, a full stroke 255, and the box of the ink [y0, x0, y1, x1); null when no digit.
function extractInk(grey, width, height) {
  const { signal, contrast } = inkSignal(grey, width, height);
  if (!(contrast >= MIN_INK_CONTRAST)) return null;
  const low = LOW_THRESHOLD * contrast;
  const high = HIGH_THRESHOLD * contrast;
  const { labels, areas, order } = components(signal, low, width, height);
  const strong = new Uint8Array(areas.length);
  for (const i of order) if (signal[i] > high) strong[labels[i]] = 1;
  const inked = scratch("inked", Float64Array, order.length);
  let n = 0;
  for (const i of order) if (strong[labels[i]]) inked[n++] = signal[i];
  const full = Math.max(percentile(inked.subarray(0, n), FULL_STROKE_PERCENTILE), high + FULL_STROKE_MARGIN);
  const kept = keptBlobs(areas, strong);
  return kept && inkPixels(signal, labels, order, kept, full, width);
}

// Blobs smaller than a 20th of the largest (and 4 pixels) are noise (components.drop_specks); null
// when more than MAX_BLOBS are left. The ink mask is the strong components, whole: its own components
// are those very components, so their areas are the ones already counted.
function keptBlobs(areas, strong) {
  let largest = -Infinity;
  for (let label = 1; label < areas.length; label++) if (strong[label]) largest = Math.max(largest, areas[label]);
  const least = Math.max(SPECK_PIXELS, SPECK_SHARE * largest);
  const kept = new Uint8Array(areas.length);
  let count = 0;
  for (let label = 1; label < areas.length; label++) {
    if (strong[label] && areas[label] >= least) {
      kept[label] = 1;
      count += 1;
    }
  }
  return count > MAX_BLOBS ? null : kept;
}

// The kept blobs' pixels scaled so that a full stroke is 255, and their box; box null without ink.
function inkPixels(signal, labels, order, kept, full, width) {
  const pixels = scratch("pixels", Float64Array, signal.length);
  let y0 = Infinity;
  let x0 = Infinity;
  let y1 = -1;
  let x1 = -1;
  for (const i of order) {
    if (!kept[labels[i]]) continue;
    const v = Math.min(1, Math.max(0, signal[i] / full)) * 255;
    pixels[i] = v;
    if (v > 0) {
      const y = (i / width) | 0;
      const x = i - y * width;
      if (y < y0) y0 = y;
      if (y > y1) y1 = y;
      if (x < x0) x0 = x;
      if (x > x1) x1 = x;
    }
  }
  return { pixels, box: y1 < 0 ? null : [y0, x0, y1 + 1, x1 + 1] };
}

// The box as float32 (the precision the resampling works in, as Pillow's "F" image).
function crop(image, width, [y0, x0, y1, x1]) {
  const w = x1 - x0;
  const out = new Float32Array((y1 - y0) * w);
  for (let y = y0; y < y1; y++) {
    for (let x = x0; x < x1; x++) out[(y - y0) * w + (x - x0)] = image[y * width + x];
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

// Pillow's resampling coefficients (Resample.c, precompute_coeffs) for one axis: each output's first
// input (start), its number of inputs (count) and their weights, `taps` apart in `weights`.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(1, scale);
  const support = 3 * filterScale;
  const taps = Math.ceil(support) * 2 + 1;
  const start = new Int32Array(outSize);
  const count = new Int32Array(outSize);
  const weights = new Float64Array(outSize * taps);
  for (let xx = 0; xx < outSize; xx++) {
    const centre = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(centre - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(centre + support + 0.5)) - xmin;
    let total = 0;
    for (let x = 0; x < xmax; x++) {
      const w = lanczos((x + xmin - centre + 0.5) / filterScale);
      weights[xx * taps + x] = w;
      total += w;
    }
    if (total !== 0) for (let x = 0; x < xmax; x++) weights[xx * taps + x] /= total;
    start[xx] = xmin;
    count[xx] = Math.max(0, xmax);
  }
  return { start, count, weights, taps };
}

// One pass of the resampling, along x (horizontal) or along y: width x height to outWidth x outHeight,
// the other side unchanged; float32 between passes, as Pillow's.
function resamplePass(image, width, height, outWidth, outHeight, horizontal) {
  const { start, count, weights, taps } = coefficients(horizontal ? width : height, horizontal ? outWidth : outHeight);
  const next = new Float32Array(outWidth * outHeight);
  for (let y = 0; y < outHeight; y++) {
    for (let x = 0; x < outWidth; x++) {
      const o = horizontal ? x : y;
      const first = horizontal ? y * width + start[o] : start[o] * width + x;
      const step = horizontal ? 1 : width;
      let sum = 0;
      for (let k = 0, at = first, w = o * taps; k < count[o]; k++, at += step, w++) sum += image[at] * weights[w];
      next[y * outWidth + x] = sum;
    }
  }
  return next;
}

// Pillow's Image.resize(LANCZOS) of a float32 ("F") image: horizontal pass, then vertical, float32 between.
function resizeLanczos(image, width, height, outWidth, outHeight) {
  let current = image;
  if (outWidth !== width) current = resamplePass(current, width, height, outWidth, height, true);
  if (outHeight !== height) current = resamplePass(current, outWidth, height, outWidth, outHeight, false);
  const out = new Float32Array(current.length);
  for (let i = 0; i < out.length; i++) out[i] = Math.min(255, Math.max(0, current[i]));
  return out;
}

// The crop scaled so that its half-strength box's longer side is 20 px (normalize._fitted).
function fitted(image, width, height) {
  let peak = 0;
  for (let i = 0; i < image.length; i++) if (image[i] > peak) peak = image[i];
  const half = HALF_STRENGTH * peak;
  let y0 = height;
  let x0 = width;
  let y1 = -1;
  let x1 = -1;
  for (let y = 0, i = 0; y < height; y++) {
    for (let x = 0; x < width; x++, i++) {
      if (image[i] >= half) {
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
      }
    }
  }
  const factor = MNIST_BOX / Math.max(y1 + 1 - y0, x1 + 1 - x0);
  const outWidth = Math.max(1, roundHalfEven(width * factor));
  const outHeight = Math.max(1, roundHalfEven(height * factor));
  return { pixels: resizeLanczos(image, width, height, outWidth, outHeight), width: outWidth, height: outHeight };
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
  for (let y = Math.max(0, -top); y < Math.min(height, MNIST_SIZE - top); y++) {
    for (let x = Math.max(0, -left); x < Math.min(width, MNIST_SIZE - left); x++) {
      out[(y + top) * MNIST_SIZE + x + left] = pixels[y * width + x];
    }
  }
  return out;
}

// Grey levels of a drawing (Uint8/Float array, row by row) -> Float32Array(784) in MNIST form, or null
// when there is no digit (no ink, too faint, too many blobs).
export function toMnist(grey, width, height) {
  const ink = extractInk(grey, width, height);
  if (!ink || !ink.box) return null;
  const [y0, x0, y1, x1] = ink.box;
  return centred(fitted(crop(ink.pixels, width, ink.box), x1 - x0, y1 - y0));
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
