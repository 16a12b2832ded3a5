// One way to load a model in a browser runtime and run it, whatever the runtime:
//   const engine = await createEngine(entry, {threads});   // entry: one item of models.json
//   const probs = await engine.run(images, n);              // images: Float32Array(n*H*W*C) in [0, 1]
// `engine.batch` is the fixed batch size of the model (1 for LiteRT.js), or null when any batch works.
// `engine.threads` is what runs: more than one thread only in a cross-origin isolated page (see `threadLimit`).
// Every runtime file comes from ./vendor/ (copied from npm packages by `toolkit export --format web`).

// the model's own input (H, W, C) and class count, from its models.json entry
const imageShape = (entry) => entry.input.shape.slice(1);
const valuesPerImage = (entry) => imageShape(entry).reduce((a, b) => a * b, 1);
const classCount = (entry) => entry.output.shape[1];

export const RUNTIME_NAMES = {
  "litertjs-wasm": "LiteRT.js (WebAssembly)",
  "onnxruntime-web-wasm": "ONNX Runtime Web (WebAssembly)",
};

function here(path) {
  return new URL(path, document.baseURI).href;
}

// LiteRT.js keeps one WebAssembly module per page: load it once, with threads or without.
let liteRt = null;

async function loadLiteRtOnce(threads) {
  const core = await import("@litertjs/core");
  const wantThreads = threads > 1;
  if (liteRt && liteRt.threads !== wantThreads) {
    core.unloadLiteRt();
    liteRt = null;
  }
  if (!liteRt) {
    await core.loadLiteRt(here("vendor/litertjs/wasm/"), wantThreads ? {threads: true} : undefined);
    liteRt = {core, threads: wantThreads};
  }
  return core;
}

async function liteRtEngine(entry, threads) {
  const core = await loadLiteRtOnce(threads);
  const model = await core.loadAndCompile(here(entry.file), {accelerator: "wasm", cpuOptions: {numThreads: threads}});
  const shape = entry.input.shape;
  const PIXELS = valuesPerImage(entry), CLASSES = classCount(entry);
  return {
    entry, threads, batch: 1, runtime: entry.runtime,
    async run(images, n) {
      const out = new Float32Array(n * CLASSES);
      for (let i = 0; i < n; i++) {
        const input = new core.Tensor(images.subarray(i * PIXELS, (i + 1) * PIXELS), shape);
        const outputs = await model.run(input);
        out.set(outputs[0].toTypedArray(), i * CLASSES);
        input.delete();
        for (const t of outputs) t.delete();
      }
      return out;
    },
    dispose() {
      model.delete();
    },
  };
}

let ort = null;
const FIXED_BATCH_SESSIONS = 4;  // batch sizes with a session of their own; any other runs in the free-batch one

// ONNX Runtime Web plans kernels and memory once per shape when the batch dimension is fixed, so each batch size
// gets its own session with the model's free batch dimension overridden (`freeDimensionOverrides`), as an app
// with a fixed batch would create it. Measured in Chromium on 2 cores, batch 1: p99 fell from 1.5-2.6 ms to
// 1.1 ms on 1 thread and from 5.2-5.8 ms to 4.1-4.6 ms on 2; p50 was unchanged.
async function ortEngine(entry, threads) {
  if (!ort) {
    ort = await import("./vendor/onnxruntime-web/ort.wasm.min.mjs");
    ort.env.wasm.wasmPaths = here("vendor/onnxruntime-web/");
  }
  ort.env.wasm.numThreads = threads;  // read when the first session starts its WebAssembly module
  const response = await fetch(here(entry.file));
  if (!response.ok) throw new Error(`${entry.file}: HTTP ${response.status}`);
  const bytes = new Uint8Array(await response.arrayBuffer());
  const options = {executionProviders: ["wasm"]};
  const free = await ort.InferenceSession.create(bytes, options);
  const [inputName] = free.inputNames;
  const [outputName] = free.outputNames;
  const batchDim = free.inputMetadata?.[0]?.shape?.[0];  // a string when the batch is a free dimension
  const fixed = new Map();
  function sessionFor(n) {
    if (typeof batchDim !== "string") return free;
    if (!fixed.has(n)) {
      if (fixed.size >= FIXED_BATCH_SESSIONS) return free;
      fixed.set(n, ort.InferenceSession.create(bytes, {...options, freeDimensionOverrides: {[batchDim]: n}}));
    }
    return fixed.get(n);
  }
  await sessionFor(1);
  const PIXELS = valuesPerImage(entry), CLASSES = classCount(entry);
  return {
    entry, threads: ort.env.wasm.numThreads, batch: null, runtime: entry.runtime,
    async run(images, n) {
      const session = await sessionFor(n);
      const input = new ort.Tensor("float32", images.subarray(0, n * PIXELS), [n, ...imageShape(entry)]);
      const result = await session.run({[inputName]: input});
      const probs = result[outputName].data.slice(0, n * CLASSES);
      input.dispose?.();
      result[outputName].dispose?.();
      return probs;
    },
    async dispose() {
      for (const session of fixed.values()) (await session).release();
      free.release();
    },
  };
}

const FACTORIES = {
  "litertjs-wasm": liteRtEngine,
  "onnxruntime-web-wasm": ortEngine,
};

// WebAssembly threads share memory through SharedArrayBuffer, which browsers give only to a cross-origin isolated
// page (served with COOP: same-origin and COEP: require-corp). Elsewhere (a plain static host) every runtime runs
// on one thread: LiteRT.js would fail to start ("SharedArrayBuffer is not defined") and ONNX Runtime Web would
// fall back with only a console warning.
export function threadLimit() {
  if (self.crossOriginIsolated) return {max: Infinity, reason: null};
  return {
    max: 1,
    reason: "this page is not cross-origin isolated (its host sends no COOP/COEP headers), so the browser " +
      "withholds the shared memory that WebAssembly threads need",
  };
}

export async function createEngine(entry, {threads = 1} = {}) {
  const factory = FACTORIES[entry.runtime];
  if (!factory) throw new Error(`no browser runtime for ${entry.runtime} (${entry.file})`);
  const limit = threadLimit();
  const engine = await factory(entry, Math.min(threads, limit.max));
  engine.threadsAsked = threads;
  engine.threadNote = threads > limit.max ? `${threads} threads asked, 1 runs: ${limit.reason}` : null;
  return engine;
}
