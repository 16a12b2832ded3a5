// The page: draw on the pad (grey models; digits are centred like MNIST) or choose an image (RGB models), and the
// chosen browser runtime classifies it. Input size, channels, labels and preprocessing come from models.json.
// Query parameters: ?model=<id from models.json>&threads=<n>; more than one thread runs only in a cross-origin
// isolated page (the host's headers, or the opt-in service worker below). `window.edgeToolkit` exposes the same
// engine to `toolkit verify --browser` and `toolkit benchmark --browser` (driven by Playwright).

import {createEngine, RUNTIME_NAMES} from "./engines.mjs";
import {preprocessRGBA} from "./preprocess.mjs";

let H = 28, W = 28, C = 1, PIXELS = 28 * 28, LABELS = [];  // set from models.json in start()
// The input contract (models.json `input_contract`): model input = (pixel - MEAN[k]) / STD[k] for the model's
// channel k, which is the picture's RGB channel SOURCE[k] (BGR models take them reversed). Default: pixel / 255.
let MEAN = [0], STD = [255], SOURCE = [0], UNIT = true;

function setContract(contract) {
  const c = contract || {mean: [0], std: [255], channel_order: "RGB"};
  const perChannel = (v) => (v.length === C ? v : new Array(C).fill(v[0])).map(Math.fround);
  MEAN = perChannel(c.mean);
  STD = perChannel(c.std);
  SOURCE = C === 3 && c.channel_order === "BGR" ? [2, 1, 0] : [0, 1, 2];
  UNIT = MEAN.every((m) => m === 0) && STD.every((s) => s === 255) && SOURCE[0] === 0;
}

// one model input from a 0-255 value of the model's channel k
const toInput = (value, k) => (value - MEAN[k]) / STD[k];
const SHORT_NAMES = {"litertjs-wasm": "LiteRT.js", "onnxruntime-web-wasm": "ONNX Runtime Web"};
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);
const pad = $("pad");
const padCtx = pad.getContext("2d", {willReadFrequently: true});
const state = {
  models: null, entry: null, engine: null, firstResultMs: null, engineMs: null, last: null, error: null,
  note: null, isolationProblem: null, camera: null, frames: 0,
};

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

// A lasting remark under the status (why fewer threads run than were asked), or none.
function setNote(text) {
  state.note = text || null;
  $("note").textContent = text ? `${text}. See "Deploying the web app" in the toolkit's docs.` : "";
  $("note").hidden = !text;
}

// Cross-origin isolation from the service worker isolation-sw.js, where index.html opts in with
// <meta name="cross-origin-isolation" content="service-worker"> and the page is not isolated yet (a host without
// the headers). The worker's headers apply from the next load, so the page reloads once; a session flag stops a
// second reload where the browser still does not isolate the page. Returns true when the page is reloading.
async function isolateWithServiceWorker() {
  const KEY = "edge-toolkit-isolation-reload";
  const wanted = document.querySelector('meta[name="cross-origin-isolation"]')?.content === "service-worker";
  if (!wanted || self.crossOriginIsolated) {
    sessionStorage.removeItem(KEY);
    return false;
  }
  if (!window.isSecureContext || !navigator.serviceWorker) {
    state.isolationProblem = "the isolation service worker needs HTTPS (or localhost)";
    return false;
  }
  await navigator.serviceWorker.register("isolation-sw.js");
  await navigator.serviceWorker.ready;
  if (sessionStorage.getItem(KEY)) {
    sessionStorage.removeItem(KEY);
    state.isolationProblem = "the isolation service worker ran, but this browser did not isolate the page";
    return false;
  }
  sessionStorage.setItem(KEY, "1");
  location.reload();
  return true;
}

// ------------------------------------------------------------------------------------------ drawing

function clearPad() {
  padCtx.fillStyle = "#000";
  padCtx.fillRect(0, 0, pad.width, pad.height);
  showResult(null);
}

function padPoint(event) {
  const box = pad.getBoundingClientRect();
  return [(event.clientX - box.left) * (pad.width / box.width), (event.clientY - box.top) * (pad.height / box.height)];
}

let drawing = null;
let pending = false;

function scheduleClassify() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(async () => {
    pending = false;
    await classifyPad();
  });
}

pad.addEventListener("pointerdown", (event) => {
  pad.setPointerCapture(event.pointerId);
  drawing = padPoint(event);
  padCtx.fillStyle = "#fff";
  padCtx.beginPath();
  padCtx.arc(drawing[0], drawing[1], padCtx.lineWidth / 2, 0, 2 * Math.PI);
  padCtx.fill();
  scheduleClassify();
});
pad.addEventListener("pointermove", (event) => {
  if (!drawing) return;
  const point = padPoint(event);
  padCtx.beginPath();
  padCtx.moveTo(drawing[0], drawing[1]);
  padCtx.lineTo(point[0], point[1]);
  padCtx.stroke();
  drawing = point;
  scheduleClassify();
});
for (const type of ["pointerup", "pointercancel"]) {
  pad.addEventListener(type, () => {
    if (drawing) scheduleClassify();
    drawing = null;
  });
}
$("clear").addEventListener("click", clearPad);

// ------------------------------------------------------------------------------------ classifying

function showResult(result) {
  const list = $("classes");
  list.replaceChildren();
  const probs = result ? result.probabilities : new Float32Array(LABELS.length);
  const top = result ? result.digit : -1;
  for (let d = 0; d < LABELS.length; d++) {
    const li = document.createElement("li");
    li.className = d === top ? "top" : "";
    const name = document.createElement("span");
    name.textContent = LABELS[d];  // a label is text, never markup
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.innerHTML = `<span style="width:${(probs[d] * 100).toFixed(1)}%"></span>`;
    const share = document.createElement("span");
    share.textContent = `${(probs[d] * 100).toFixed(1)}%`;
    li.append(name, bar, share);
    list.append(li);
  }
  $("digit").textContent = result ? LABELS[result.digit] : "?";
  $("confidence").textContent = result ? `${(result.confidence * 100).toFixed(1)}%` : "";
  const seen = $("input28").getContext("2d");
  const img = seen.createImageData(W, H);
  for (let i = 0; i < H * W; i++) {
    const px = (k) => (result ? Math.round(result.input[i * C + k] * 255) : 0);
    img.data.set(C === 3 ? [px(0), px(1), px(2), 255] : [px(0), px(0), px(0), 255], i * 4);
  }
  seen.putImageData(img, 0, 0);
}

function engineLabel() {
  const e = state.entry;
  return `${RUNTIME_NAMES[e.runtime] || e.runtime} · ${e.variant} · ${e.file.split("/").pop()} · ${state.engine.threads} thread(s)`;
}

// Any picture -> the model's input: resized (bilinear, no cropping) to W x H, grey or RGB, by the input contract.
function resizedInput(source) {
  const canvas = document.createElement("canvas");
  canvas.width = W;
  canvas.height = H;
  const ctx = canvas.getContext("2d", {willReadFrequently: true});
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(source, 0, 0, W, H);
  const rgba = ctx.getImageData(0, 0, W, H).data;
  const input = new Float32Array(H * W * C);
  for (let i = 0; i < H * W; i++) {
    if (C === 3) for (let k = 0; k < 3; k++) input[i * 3 + k] = toInput(rgba[i * 4 + SOURCE[k]], k);
    else input[i] = toInput(0.299 * rgba[i * 4] + 0.587 * rgba[i * 4 + 1] + 0.114 * rgba[i * 4 + 2], 0);
  }
  return input;
}

async function classifyPad() {
  if (!state.engine) return null;
  const started = performance.now();
  let input;
  if (state.models.mode === "rgb") {
    if (!state.picture) return null;
    input = resizedInput(state.picture);
  } else if (state.models.mode === "grey") {
    input = resizedInput(pad);
  } else {
    try {
      input = preprocessRGBA(padCtx.getImageData(0, 0, pad.width, pad.height).data, pad.width, pad.height);
      if (!UNIT) input = input.map((u) => toInput(u * 255, 0));  // the digit steps give pixel / 255
    } catch (e) {
      showResult(null);
      setStatus(`${engineLabel()} · draw a digit`);
      return null;
    }
  }
  return classifyInput(input, started);
}

async function classifyInput(input, started) {
  const preprocessed = performance.now();
  const probabilities = await state.engine.run(input, 1);
  const done = performance.now();
  let digit = 0;
  for (let d = 1; d < LABELS.length; d++) if (probabilities[d] > probabilities[digit]) digit = d;
  state.last = {digit, confidence: probabilities[digit], probabilities, input, inferenceMs: done - preprocessed, preprocessMs: preprocessed - started};
  showResult(state.last);
  setStatus(`${engineLabel()} · last inference ${state.last.inferenceMs.toFixed(2)} ms (preprocessing ${state.last.preprocessMs.toFixed(2)} ms)`);
  return state.last;
}

// --------------------------------------------------------------------------------------- loading

async function useModel(id) {
  const entry = state.models.models.find((m) => m.id === id);
  if (!entry) throw new Error(`no model "${id}" in models.json; choose one of: ${state.models.models.map((m) => m.id).join(", ")}`);
  if (state.engine) await state.engine.dispose();  // ONNX Runtime Web releases its sessions asynchronously
  state.engine = null;
  state.entry = entry;
  setStatus(`loading ${entry.file} in ${RUNTIME_NAMES[entry.runtime] || entry.runtime}…`);
  const threads = Math.max(1, parseInt(params.get("threads") || "1", 10));
  const started = performance.now();
  const engine = await createEngine(entry, {threads});
  await engine.run(new Float32Array(PIXELS), 1);  // the first result: the runtime is really ready
  state.firstResultMs = performance.now();  // since navigation started: the cold start
  state.engineMs = state.firstResultMs - started;
  state.engine = engine;
  setNote(engine.threadNote && [engine.threadNote, state.isolationProblem].filter(Boolean).join("; "));
  setStatus(`${engineLabel()} · ready in ${state.engineMs.toFixed(0)} ms · draw a digit`);
  await classifyPad();
}

async function start() {
  padCtx.lineWidth = 22;
  padCtx.lineCap = "round";
  padCtx.lineJoin = "round";
  padCtx.strokeStyle = "#fff";
  clearPad();
  const response = await fetch("models.json");
  if (!response.ok) throw new Error(`models.json: HTTP ${response.status}`);
  state.models = await response.json();
  [H, W, C] = state.models.input_shape || [28, 28, 1];
  PIXELS = H * W * C;
  LABELS = state.models.labels || [];
  setContract(state.models.input_contract);
  state.models.mode = state.models.mode || "digit";
  setUpInput(state.models.mode);
  const select = $("model");
  for (const m of state.models.models) {
    select.append(new Option(`${SHORT_NAMES[m.runtime] || m.runtime} ${m.variant} (${(m.bytes / 1024).toFixed(0)} KB)`, m.id));
  }
  const id = params.get("model") || state.models.default;
  select.value = id;
  select.addEventListener("change", async () => {
    params.set("model", select.value);
    history.replaceState(null, "", `?${params}`);
    await useModel(select.value).catch(fail);
  });
  await useModel(id);
}

// The input of the page's mode: the drawing pad for grey models, an image file (or the camera) for RGB ones.
function setUpInput(mode) {
  $("input28").width = W;
  $("input28").height = H;
  $("seen-label").textContent = mode === "digit" ? `what the model sees (${W}×${H}, centred like MNIST)` :
    `what the model sees (${W}×${H}${C === 3 ? ", RGB" : ""})`;
  $("title").textContent = mode === "digit" ? "Draw a digit" : mode === "grey" ? "Draw" : "Choose a picture";
  $("lead").textContent = `${state.models.model} runs in this page, on this device: no server work, no network.`;
  if (mode !== "rgb") return;
  for (const id of ["pad", "clear"]) $(id).style.display = "none";  // the stylesheet's display wins over `hidden`
  $("picture").hidden = false;
  $("picture").addEventListener("change", async () => {
    const file = $("picture").files[0];
    if (!file) return;
    stopCamera();
    state.picture = await createImageBitmap(file);
    await classifyPad();
  });
  if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
    $("camera").hidden = false;
    $("camera").addEventListener("click", () => (state.camera ? stopCamera() : startCamera().catch(fail)));
  }
}

// Live camera (RGB models): each frame is resized and made into inputs by the contract, as a picture is, and
// classified in turn; state.frames counts the classified frames.
async function startCamera() {
  const stream = await navigator.mediaDevices.getUserMedia({video: {facingMode: "environment"}, audio: false});
  const video = $("video");
  video.srcObject = stream;
  video.hidden = false;
  await video.play();
  state.camera = stream;
  state.picture = video;
  $("camera").textContent = "Stop camera";
  const next = async () => {
    if (state.camera !== stream) return;
    if (video.videoWidth) {
      await classifyPad();
      state.frames++;
    }
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(next);
    else setTimeout(next, 100);
  };
  next();
}

function stopCamera() {
  if (!state.camera) return;
  for (const track of state.camera.getTracks()) track.stop();
  state.camera = null;
  $("video").hidden = true;
  $("camera").textContent = "Camera";
}

function fail(error) {
  state.error = String(error && error.message ? error.message : error);
  setStatus(state.error, true);
  throw error;
}

// ------------------------------------------------------------------ harness for verify and benchmark

async function fetchImages(url, count) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const n = Math.min(count ?? Infinity, Math.floor(bytes.length / PIXELS));
  const images = new Float32Array(n * PIXELS);
  // RGB (or grey) pixels, as an app has them, made into model inputs by the input contract
  for (let i = 0; i < images.length; i += C) {
    for (let k = 0; k < C; k++) images[i + k] = toInput(bytes[i + SOURCE[k]], k);
  }
  return {images, n};
}

window.edgeToolkit = {
  state,
  // never settles while the page reloads into isolation: the next load has its own edgeToolkit
  ready: isolateWithServiceWorker().then((reloading) => (reloading ? new Promise(() => {}) : start())).catch(fail),
  classifyPad,
  startCamera,
  stopCamera,
  preprocessRGBA,
  // every test image, in batches of the model's size (LiteRT.js: 1) or `batch`; probabilities as a flat array
  async classify(url, count, batch = 250) {
    const {images, n} = await fetchImages(url, count);
    const step = state.engine.batch || batch;
    const classes = LABELS.length;
    const probabilities = new Float32Array(n * classes);
    const started = performance.now();
    for (let i = 0; i < n; i += step) {
      const m = Math.min(step, n - i);
      probabilities.set(await state.engine.run(images.subarray(i * PIXELS), m), i * classes);
    }
    return {n, batch: step, ms: performance.now() - started, probabilities: Array.from(probabilities)};
  },
  // per-call times in ms of `runs` calls at `batch` images after `warmup` calls, cycling through the images
  async time(url, {batch = 1, warmup = 100, runs = 1000, count = 256} = {}) {
    if (state.engine.batch && batch !== state.engine.batch) throw new Error(`this model has a fixed batch of ${state.engine.batch}`);
    const {images, n} = await fetchImages(url, Math.max(count, batch));
    const groups = Math.max(1, Math.floor(n / batch));
    const call = (i) => state.engine.run(images.subarray((i % groups) * batch * PIXELS), batch);
    for (let i = 0; i < warmup; i++) await call(i);
    const ms = new Array(runs);
    for (let i = 0; i < runs; i++) {
      const t0 = performance.now();
      await call(i);
      ms[i] = performance.now() - t0;
    }
    return {ms, crossOriginIsolated: self.crossOriginIsolated};
  },
  // this page's float32 ceiling, measured as the native one is: the best call of a square MatMul model (fetched
  // from `url`) in ONNX Runtime Web, with the threads this page's ONNX Runtime Web was started with
  async peak(url, {n = 512, seconds = 1} = {}) {
    const ort = await import("./vendor/onnxruntime-web/ort.wasm.min.mjs");
    const model = new Uint8Array(await (await fetch(url)).arrayBuffer());
    const session = await ort.InferenceSession.create(model, {executionProviders: ["wasm"]});
    const a = new ort.Tensor("float32", new Float32Array(n * n).fill(0.5), [n, n]);
    const [output] = session.outputNames;
    let best = Infinity;
    (await session.run({a}))[output].dispose?.();
    const end = performance.now() + seconds * 1000;
    while (performance.now() < end) {
      const t0 = performance.now();
      const result = await session.run({a});
      best = Math.min(best, performance.now() - t0);
      result[output].dispose?.();
    }
    session.release();
    return {n, ms: best, gflops: (2 * n * n * n) / (best / 1000) / 1e9, threads: ort.env.wasm.numThreads};
  },
};
