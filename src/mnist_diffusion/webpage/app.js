// The page: loads model/plan.json and model/model.onnx into onnxruntime-web (WebAssembly, files
// beside this one: nothing is fetched from elsewhere), draws grids, turns a sketch into a digit.
// window.mnistDiffusion.sampleFromNoise(noise, labels, steps, guidance) runs the sampler on given
// noise (the parity test feeds it the Python sampler's).
import { IMAGE_PIXELS, gaussian, noised, runDraw, sdeditStart, toUint8 } from "./sampler.js";

// limits the page enforces itself
export const LIMITS = { maxImages: 100, maxGuidance: 10, maxSeed: 4294967295 };
const SCALE = 3; // grid pixels per image pixel
const $ = (id) => document.getElementById(id);

function message(text, kind = "error") {
  const el = $("message");
  el.textContent = text;
  el.className = kind;
}

function threads() {
  // several WebAssembly threads need a cross-origin isolated page (COOP/COEP headers); a plain
  // static host gives one
  return self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
}

async function load() {
  if (typeof WebAssembly !== "object" || typeof WebAssembly.instantiate !== "function") {
    throw new Error("this browser has no WebAssembly: the model cannot run here (try a current Chrome, Firefox or Safari)");
  }
  const ort = await import("./ort/ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
  ort.env.wasm.numThreads = threads();
  ort.env.wasm.proxy = false;
  const plan = await (await fetch("./model/plan.json")).json();
  const session = await ort.InferenceSession.create("./model/model.onnx", { executionProviders: ["wasm"] });
  const labelled = plan.num_classes !== null;
  async function net(x, t, labels) {
    const n = t.length;
    const feeds = { x: new ort.Tensor("float32", x, [n, 1, 28, 28]), t: new ort.Tensor("int32", t, [n]) };
    if (labelled) feeds.label = new ort.Tensor("int32", labels, [n]);
    const out = await session.run(feeds);
    return out.out.data;
  }
  return { ort, plan, net, labelled };
}

function checkedInt(value, name, lo, hi) {
  const v = Number(value);
  if (!Number.isInteger(v) || v < lo || v > hi) throw new Error(`${name} must be a whole number from ${lo} to ${hi}, got ${value}`);
  return v;
}

function checkedGuidance(value) {
  const v = Number(value);
  if (!Number.isFinite(v) || v < 0 || v > LIMITS.maxGuidance) {
    throw new Error(`guidance must be a number from 0 to ${LIMITS.maxGuidance}, got ${value}`);
  }
  return v;
}

function drawGrid(canvas, images, n, ncol) {
  const nrow = Math.ceil(n / ncol), pad = 2, cell = 28 + pad;
  canvas.width = (ncol * cell + pad) * SCALE;
  canvas.height = (nrow * cell + pad) * SCALE;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = false;
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  const tile = ctx.createImageData(28, 28);
  const off = document.createElement("canvas");
  off.width = off.height = 28;
  const octx = off.getContext("2d");
  for (let i = 0; i < n; i++) {
    for (let p = 0; p < IMAGE_PIXELS; p++) {
      const v = images[i * IMAGE_PIXELS + p];
      tile.data.set([v, v, v, 255], 4 * p);
    }
    octx.putImageData(tile, 0, 0);
    const x = (pad + (i % ncol) * cell) * SCALE, y = (pad + Math.floor(i / ncol) * cell) * SCALE;
    ctx.drawImage(off, x, y, 28 * SCALE, 28 * SCALE);
  }
}

function setupSketch(canvas) {
  const ctx = canvas.getContext("2d");
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height); };
  clear();
  let down = false;
  const at = (e) => { const r = canvas.getBoundingClientRect(); return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height]; };
  canvas.addEventListener("pointerdown", (e) => { down = true; ctx.beginPath(); ctx.moveTo(...at(e)); canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointermove", (e) => {
    if (!down) return;
    ctx.lineTo(...at(e));
    ctx.strokeStyle = "#fff"; ctx.lineWidth = canvas.width / 11; ctx.lineCap = ctx.lineJoin = "round";
    ctx.stroke();
  });
  canvas.addEventListener("pointerup", () => { down = false; });
  return clear;
}

// the sketch as one 28x28 image in the model's range (box-filtered down, 0 = background)
function sketchImage(canvas) {
  const off = document.createElement("canvas");
  off.width = off.height = 28;
  const octx = off.getContext("2d");
  octx.imageSmoothingEnabled = true;
  octx.imageSmoothingQuality = "high";
  octx.drawImage(canvas, 0, 0, 28, 28);
  const data = octx.getImageData(0, 0, 28, 28).data;
  const x = new Float32Array(IMAGE_PIXELS);
  for (let p = 0; p < IMAGE_PIXELS; p++) x[p] = data[4 * p] / 127.5 - 1;
  return x;
}

async function main() {
  let model;
  try {
    model = await load();
  } catch (e) {
    message(String(e.message || e));
    throw e;
  }
  const { plan, net, labelled } = model;
  const names = plan.class_names || [];
  const classSelect = $("label"), targetSelect = $("target"), stepsSelect = $("steps");
  if (labelled) {
    classSelect.add(new Option("one of each", "all"));
    names.forEach((nm, i) => { classSelect.add(new Option(nm, i)); targetSelect.add(new Option(nm, i)); });
  } else {
    $("label-row").hidden = true;
    $("target-row").hidden = true;
  }
  $("guidance-row").hidden = !plan.takes_guidance;
  $("guidance").value = plan.guidance;
  for (const k of Object.keys(plan.draws)) stepsSelect.add(new Option(`${k} (${plan.draws[k].describe})`, k));
  stepsSelect.value = String(plan.default_steps);
  $("model").textContent = `${plan.dataset}, ${plan.distilled ? "a distilled one-step student" : "predicts " + plan.prediction}, ` +
    `${(plan.export.bytes / 1e6).toFixed(1)} MB; WebAssembly, ${threads()} thread${threads() > 1 ? "s" : ""}`;

  function requestLabels(n, label) {
    if (!labelled) return null;
    const k = plan.num_classes;
    return Int32Array.from({ length: n }, (_, i) => (label === "all" ? i % k : Number(label)));
  }

  async function timed(what, fn) {
    const t0 = performance.now();
    const out = await fn();
    const s = (performance.now() - t0) / 1000;
    return [out, s];
  }

  async function drawClicked() {
    try {
      const n = checkedInt($("count").value, "images", 1, LIMITS.maxImages);
      const seed = checkedInt($("seed").value, "seed", 0, LIMITS.maxSeed);
      const guidance = plan.takes_guidance ? checkedGuidance($("guidance").value) : 0;
      const labels = requestLabels(n, classSelect.value);
      const noise = new Float32Array(n * IMAGE_PIXELS);
      for (let i = 0; i < n; i++) noise.set(gaussian(seed + i, IMAGE_PIXELS), i * IMAGE_PIXELS);
      message("drawing...", "info");
      const [x, s] = await timed("draw", () => runDraw(plan, net, stepsSelect.value, noise, labels, guidance));
      drawGrid($("grid"), toUint8(x), n, labelled && classSelect.value === "all" ? plan.num_classes : Math.min(n, 10));
      message(`${n} image${n > 1 ? "s" : ""} in ${s.toFixed(2)} s (${plan.draws[stepsSelect.value].describe})`, "info");
      $("timing").textContent = s.toFixed(3);
    } catch (e) {
      message(String(e.message || e));
    }
  }

  const clearSketch = setupSketch($("sketch"));
  async function editClicked() {
    try {
      const strength = Number($("strength").value);
      if (!(strength > 0 && strength <= 1)) throw new Error(`strength must be in (0, 1], got ${$("strength").value}`);
      const seed = checkedInt($("seed").value, "seed", 0, LIMITS.maxSeed);
      const guidance = plan.takes_guidance ? checkedGuidance($("guidance").value) : 0;
      const t0 = sdeditStart(plan, strength);
      const x = noised(plan, sketchImage($("sketch")), gaussian(seed, IMAGE_PIXELS), t0);
      const labels = labelled ? Int32Array.of(Number(targetSelect.value)) : null;
      const [out, s] = await timed("edit", () => runDraw(plan, net, stepsSelect.value, x, labels, guidance, { start: t0 }));
      drawGrid($("edited"), toUint8(out), 1, 1);
      message(`turned the sketch into ${labelled ? names[Number(targetSelect.value)] : "an image"} in ${s.toFixed(2)} s ` +
        `(from timestep ${t0})`, "info");
    } catch (e) {
      message(String(e.message || e));
    }
  }

  $("draw").addEventListener("click", drawClicked);
  $("edit").addEventListener("click", editClicked);
  $("clear").addEventListener("click", clearSketch);
  $("draw").disabled = $("edit").disabled = false;

  window.mnistDiffusion = {
    plan,
    limits: LIMITS,
    threads: threads(),
    // the sampler on given noise: noise n*784 numbers, labels n class indices (null: unlabelled);
    // resolves to { images: uint8 n*784 as a plain array, seconds }
    async sampleFromNoise(noise, labels, steps, guidance) {
      const n = noise.length / IMAGE_PIXELS;
      if (!Number.isInteger(n) || n < 1 || n > LIMITS.maxImages) throw new Error(`noise must hold 1 to ${LIMITS.maxImages} images of 784 values`);
      const y = labels === null ? null : Int32Array.from(labels);
      const g = guidance === undefined || guidance === null ? plan.guidance : checkedGuidance(guidance);
      const [x, s] = await timed("draw", () => runDraw(plan, net, String(steps), Float32Array.from(noise), y, g));
      return { images: Array.from(toUint8(x)), seconds: s };
    },
    draw: drawClicked,
  };
  message("ready", "info");
  await drawClicked();
  document.body.dataset.ready = "1";
}

main();
