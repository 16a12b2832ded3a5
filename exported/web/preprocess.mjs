// Turn a drawing or photo of a digit into the model's 28x28 input, in the browser or in node.
//
// A dependency-free port of toolkit/preprocess.py (`to_grey` for RGBA images, then `normalise`), written
// to give the same numbers as the Python code: the same integer grey conversion as Pillow, numpy's median
// and summation order, Python's round-half-to-even, and Pillow's LANCZOS resize of a float32 ("F") image.
// tests/test_web_preprocess.py checks that the two agree to 1e-5.
//
//   import { preprocessRGBA } from "./preprocess.mjs";
//   const { data, width, height } = ctx.getImageData(0, 0, canvas.width, canvas.height);
//   const input = preprocessRGBA(data, width, height);  // Float32Array(784), row-major 28x28, in [0, 1]

const INK_THRESHOLD = 0.25; // ink is what is brighter than 25% of the brightest pixel
const BOX = 20; // the digit is fitted into 20x20 ...
const SIZE = 28; // ... and centred by its centre of mass in 28x28
const LANCZOS_SUPPORT = 3;
const OPAQUE_ALPHA = 250;  // as toolkit/preprocess.py
const TRANSPARENT_SHARE = 0.01;

/** RGBA bytes (e.g. ImageData.data, width*height*4) -> Float64Array(width*height) of grey in [0, 255].
 *  As to_grey: if at least 1% of the pixels have an alpha below 250 the image has real transparency and the
 *  alpha is the ink; otherwise the luminance of Pillow's convert("L"), which is integer arithmetic (alpha ignored). */
export function toGrey(rgba, width, height) {
  const n = checkSize(width, height);
  if (!rgba || rgba.length !== n * 4) throw new Error(`expected ${n * 4} RGBA bytes, got ${rgba ? rgba.length : rgba}`);
  let transparent = 0;
  for (let i = 3; i < rgba.length; i += 4) if (rgba[i] < OPAQUE_ALPHA) transparent++;
  const alphaIsInk = transparent >= TRANSPARENT_SHARE * n;
  const grey = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const p = i * 4;
    grey[i] = alphaIsInk ? rgba[p + 3] : (rgba[p] * 19595 + rgba[p + 1] * 38470 + rgba[p + 2] * 7471 + 0x8000) >> 16;
  }
  return grey;
}

/** Grey values (width*height, row-major, any range) -> Float32Array(784): the 28x28 model input in [0, 1],
 *  MNIST-style: white ink on black, cropped to the ink, fitted into 20x20, centred by centre of mass.
 *  Throws an Error ("no digit found") for a blank image. */
export function normalise(grey, width, height) {
  const n = checkSize(width, height);
  if (!grey || grey.length !== n) throw new Error(`expected ${n} grey values, got ${grey ? grey.length : grey}`);
  for (let i = 0; i < n; i++) if (!Number.isFinite(grey[i])) throw new Error("image contains NaN or infinity");

  // Polarity: a light border means a dark digit on a light background, which is inverted.
  const border = [];
  for (let x = 0; x < width; x++) border.push(grey[x]);
  for (let x = 0; x < width; x++) border.push(grey[(height - 1) * width + x]);
  for (let y = 0; y < height; y++) border.push(grey[y * width]);
  for (let y = 0; y < height; y++) border.push(grey[y * width + width - 1]);
  const invert = median(border) > 127;
  const background = invert ? median(border.map((v) => 255.0 - v)) : median(border);

  // Subtract the background, clip at 0, and find the ink: pixels above 25% of the peak.
  const g = new Float64Array(n);
  let peak = -Infinity;
  for (let i = 0; i < n; i++) {
    g[i] = Math.max((invert ? 255.0 - grey[i] : grey[i]) - background, 0);
    peak = Math.max(peak, g[i]);
  }
  if (!(peak > 0)) throw new Error("no digit found (the image is blank)");
  let top = height, bottom = -1, left = width, right = -1;
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (g[y * width + x] > INK_THRESHOLD * peak) {
        top = Math.min(top, y), bottom = Math.max(bottom, y), left = Math.min(left, x), right = Math.max(right, x);
      }
    }
  }

  // Crop to the ink's bounding box, scaled so that the peak is 255 (float32, as _fit's astype).
  const h = bottom - top + 1, w = right - left + 1;
  const crop = new Float32Array(w * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) crop[y * w + x] = (g[(top + y) * width + left + x] / peak) * 255.0;
  }
  return centre(fit(crop, w, h, BOX));
}

/** RGBA bytes -> the model input: normalise(toGrey(rgba, width, height), width, height). */
export function preprocessRGBA(rgba, width, height) {
  return normalise(toGrey(rgba, width, height), width, height);
}

/** Python 3's round(): to the nearest integer, ties to the even one (Math.round sends ties up). */
export function roundHalfEven(x) {
  const floor = Math.floor(x);
  const diff = x - floor; // exact for doubles
  if (diff !== 0.5) return diff < 0.5 ? floor : floor + 1;
  return floor % 2 === 0 ? floor : floor + 1;
}

function checkSize(width, height) {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width < 1 || height < 1) {
    throw new Error(`expected a positive integer width and height, got ${width}x${height}`);
  }
  return width * height;
}

// numpy's median: the middle value, or the mean of the two middle values for an even count.
function median(values) {
  const s = Float64Array.from(values).sort();
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

// _fit: resize the crop (float32, w x h) so that its longer side is `size`, keeping its aspect, with
// Pillow's LANCZOS; then clip to [0, 255]. Returns {data: Float64Array, w, h}.
function fit(crop, w, h, size) {
  const scale = size / Math.max(h, w);
  const nh = Math.max(1, roundHalfEven(h * scale)), nw = Math.max(1, roundHalfEven(w * scale));
  let img = crop;
  if (nw !== w) img = resample(img, w, h, nw, true); // Pillow: horizontal pass first, only if needed
  if (nh !== h) img = resample(img, nw, h, nh, false); // then the vertical pass
  const data = new Float64Array(nw * nh);
  for (let i = 0; i < data.length; i++) data[i] = Math.min(Math.max(img[i], 0), 255);
  return { data, w: nw, h: nh };
}

// Pillow's lanczos_filter: sinc(x) * sinc(x / 3) on [-3, 3).
function sinc(x) {
  if (x === 0.0) return 1.0;
  x = x * Math.PI;
  return Math.sin(x) / x;
}
function lanczos(x) {
  return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0;
}

// Pillow's precompute_coeffs (Resample.c): for each output pixel, the first input pixel and the
// normalised filter weights of the input pixels it is made from.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = LANCZOS_SUPPORT * filterscale;
  const ss = 1.0 / filterscale;
  const bounds = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const k = new Float64Array(xmax);
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      k[x] = lanczos((x + xmin - center + 0.5) * ss);
      ww += k[x];
    }
    if (ww !== 0.0) for (let x = 0; x < xmax; x++) k[x] /= ww;
    bounds.push({ xmin, k });
  }
  return bounds;
}

// One pass of Pillow's ImagingResample{Horizontal,Vertical}_32bpc on a float32 image: accumulate in
// double, store float32. Resizes the width (horizontal) or the height to outSize.
function resample(src, w, h, outSize, horizontal) {
  const coeffs = coefficients(horizontal ? w : h, outSize);
  const ow = horizontal ? outSize : w, oh = horizontal ? h : outSize;
  const out = new Float32Array(ow * oh);
  for (let yy = 0; yy < oh; yy++) {
    for (let xx = 0; xx < ow; xx++) {
      const { xmin, k } = coeffs[horizontal ? xx : yy];
      let ss = 0.0;
      if (horizontal) for (let x = 0; x < k.length; x++) ss += src[yy * w + x + xmin] * k[x];
      else for (let y = 0; y < k.length; y++) ss += src[(y + xmin) * w + xx] * k[y];
      out[yy * ow + xx] = ss;
    }
  }
  return out;
}

// numpy's pairwise summation (what ndarray.sum() does for a contiguous float64 array), so that the
// centre of mass, and its rounding when it falls on a half pixel, are the same as in Python.
function pairwiseSum(a, start, n) {
  if (n < 8) {
    let res = 0.0;
    for (let i = start; i < start + n; i++) res += a[i];
    return res;
  }
  if (n <= 128) {
    const r = Array.from(a.subarray(start, start + 8));
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] += a[start + i + j];
    let res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) res += a[start + i];
    return res;
  }
  let n2 = Math.floor(n / 2);
  n2 -= n2 % 8;
  return pairwiseSum(a, start, n2) + pairwiseSum(a, start + n2, n - n2);
}

// _centre: place the box in 28x28 with its centre of mass at (14, 14) (clamped to stay inside),
// then divide by 255 in float32, as `.astype(np.float32) / 255.0`.
function centre({ data, w, h }) {
  const ys = new Float64Array(data.length), xs = new Float64Array(data.length);
  for (let i = 0; i < data.length; i++) {
    ys[i] = Math.floor(i / w) * data[i];
    xs[i] = (i % w) * data[i];
  }
  const total = pairwiseSum(data, 0, data.length);
  if (!(total > 0)) throw new Error("no digit found (nothing left after resizing)"); // Python: a ValueError
  const cy = pairwiseSum(ys, 0, ys.length) / total, cx = pairwiseSum(xs, 0, xs.length) / total;
  const top = Math.min(Math.max(roundHalfEven(SIZE / 2 - cy), 0), SIZE - h);
  const left = Math.min(Math.max(roundHalfEven(SIZE / 2 - cx), 0), SIZE - w);
  const out = new Float32Array(SIZE * SIZE);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) out[(top + y) * SIZE + left + x] = Math.fround(data[y * w + x]) / 255.0;
  }
  return out;
}
