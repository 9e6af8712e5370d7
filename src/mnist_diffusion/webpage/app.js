// The page: starts worker.js (a module Web Worker that loads model/plan.json and model/model.onnx
// into onnxruntime-web, files beside this one: nothing is fetched from elsewhere, and runs the
// sampler), draws grids, turns a sketch into a digit. The page's own thread only checks the fields,
// makes the noise and paints, so a long draw never freezes it: it shows "step k of n", Cancel stops
// it within one network evaluation, and a new request stops the running one first.
// window.mnistDiffusion.sampleFromNoise(noise, labels, steps, guidance) runs the sampler on given
// noise (the parity test feeds it the Python sampler's).
import { IMAGE_PIXELS, drawProgram, gaussian, isGuided, toUint8 } from "./sampler.js";

const MAX_IMAGES = 100;
// limits the page enforces itself. Image i of a grid is drawn from seed + i by a 32-bit generator
// (sampler.gaussian): past 2^32 - MAX_IMAGES the last images' seeds would wrap onto seed 0's
export const LIMITS = { maxImages: MAX_IMAGES, maxGuidance: 10, maxSeed: 2 ** 32 - MAX_IMAGES };
const SCALE = 3; // grid pixels per image pixel
const DEFAULT_STRENGTH = "0.6"; // SDEdit's, one of plan.edit_strengths
const $ = (id) => document.getElementById(id);

function message(text, kind = "error") {
  const el = $("message");
  el.textContent = text;
  el.className = kind;
}

// A draw that stopped before its end: Cancel, or a newer request (`superseded`: that one speaks)
class Cancelled extends Error {
  constructor(done, superseded = false) {
    super(`cancelled after ${done} network evaluation${done === 1 ? "" : "s"}`);
    this.done = done;
    this.superseded = superseded;
  }
}

// The model runner: worker.js, started once; resolves when its model is loaded. run(request, onStep)
// sends one draw and resolves to { x, seconds }; one runs at a time: a new request cancels the
// running one and waits for it to end; cancel() stops the running one.
function startRunner() {
  if (typeof WebAssembly !== "object" || typeof WebAssembly.instantiate !== "function") {
    return Promise.reject(new Error("this browser has no WebAssembly: the model cannot run here (try a current Chrome, Firefox or Safari)"));
  }
  const worker = new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
  const jobs = new Map();   // id -> { resolve, reject, onStep }
  let running = null;       // { id, ended: a promise that resolves when the draw has ended, however }
  let latest = 0;           // the id of the newest request
  let cancelledUpTo = 0;    // Cancel stops every request up to this id, running or waiting

  function settle(m) {
    const job = jobs.get(m.id);
    if (!job) return;
    if (m.type === "step") return job.onStep(m.done, m.total);
    jobs.delete(m.id);
    if (running && running.id === m.id) {
      running.end();
      running = null;
    }
    if (m.type === "done") job.resolve({ x: m.x, seconds: m.seconds });
    else if (m.type === "cancelled") job.reject(new Cancelled(m.done, m.id !== latest));
    else job.reject(new Error(m.message));
  }

  async function run(request, onStep = () => {}) {
    const id = ++latest;
    while (running) {
      worker.postMessage({ type: "cancel", id: running.id });
      await running.ended;
      if (id !== latest) throw new Cancelled(0, true);  // a newer request came while this one waited
      if (id <= cancelledUpTo) throw new Cancelled(0);
    }
    let end;
    running = { id, ended: new Promise((resolve) => { end = resolve; }) };
    running.end = end;
    const result = new Promise((resolve, reject) => jobs.set(id, { resolve, reject, onStep }));
    const transfer = [request.x.buffer, ...[request.labels, request.image].filter(Boolean).map((a) => a.buffer)];
    worker.postMessage({ type: "draw", id, strength: null, image: null, ...request }, transfer);
    return result;
  }

  function cancel() {
    cancelledUpTo = latest;
    if (!running) return false;
    worker.postMessage({ type: "cancel", id: running.id });
    return true;
  }

  return new Promise((resolve, reject) => {
    worker.addEventListener("error", (e) => {
      e.preventDefault();
      // before "ready": it never started; after: it died (out of memory), taking its draws with it
      reject(new Error("the page's model runner (worker.js) did not start: this browser may lack module workers (try a current Chrome, Firefox or Safari)"));
      for (const job of jobs.values()) job.reject(new Error(`the model runner stopped: ${e.message || "reload the page"}`));
      jobs.clear();
      if (running) running.end();
      running = null;
    });
    worker.addEventListener("message", (e) => {
      const m = e.data;
      if (m.type === "ready") resolve({ plan: m.plan, threads: m.threads, run, cancel, busy: () => running !== null });
      else if (m.id === null) reject(new Error(m.message));
      else settle(m);
    });
  });
}

// a number field's text; a number input holds "" both when empty and when what was typed is no
// number ("1e", "--2"): both are refused by the checks below, never read as Number("") = 0
function field(id) {
  const el = $(id);
  return el.validity && el.validity.badInput ? "no number" : el.value.trim();
}

function asNumber(value) {
  return typeof value === "number" ? value : (String(value).trim() === "" ? NaN : Number(value));
}

function given(value) {
  return String(value).trim() === "" ? "an empty field" : String(value);
}

function checkedInt(value, name, lo, hi) {
  const v = asNumber(value);
  if (!Number.isInteger(v) || v < lo || v > hi) throw new Error(`${name} must be a whole number from ${lo} to ${hi}, got ${given(value)}`);
  return v;
}

function checkedGuidance(value) {
  const v = asNumber(value);
  if (!Number.isFinite(v) || v < 0 || v > LIMITS.maxGuidance) {
    throw new Error(`guidance must be a number from 0 to ${LIMITS.maxGuidance}, got ${given(value)}`);
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
  let runner;
  try {
    runner = await startRunner();
  } catch (e) {
    message(String(e.message || e));
    $("model").textContent = "";
    throw e;
  }
  const { plan } = runner;
  const labelled = plan.num_classes !== null;
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
  $("guidance").max = LIMITS.maxGuidance;
  $("seed").max = LIMITS.maxSeed;
  $("count").max = LIMITS.maxImages;
  for (const k of Object.keys(plan.draws)) {
    stepsSelect.add(new Option(`${k} (${describe(program(k, plan.guidance))})`, k));
  }
  stepsSelect.value = String(plan.default_steps);
  // the SDEdit strengths plan.json has programs for (each the CLI's `edit --strength S`)
  for (const s of plan.edit_strengths) $("strength").add(new Option(s, s));
  $("strength").value = plan.edit_strengths.includes(DEFAULT_STRENGTH) ? DEFAULT_STRENGTH : plan.edit_strengths.at(-1);
  $("model").textContent = `${plan.dataset}, ${plan.distilled ? "a distilled one-step student" : "predicts " + plan.prediction}, ` +
    `${(plan.export.bytes / 1e6).toFixed(1)} MB; WebAssembly, ${runner.threads} thread${runner.threads > 1 ? "s" : ""}`;

  function requestLabels(n, label) {
    if (!labelled) return null;
    const k = plan.num_classes;
    return Int32Array.from({ length: n }, (_, i) => (label === "all" ? i % k : Number(label)));
  }

  // the guidance a draw uses: the field's, checked, for a model that takes it; none otherwise
  function guidanceOf(value) {
    return plan.takes_guidance ? checkedGuidance(value) : 0;
  }

  // the program a draw runs (as worker.js picks it: a labelled model's draws carry labels): guided
  // or not as the guidance asks; an SDEdit's at `strength`
  function program(drawName, guidance, strength = null) {
    return drawProgram(plan, drawName, isGuided(plan, labelled, guidance), strength);
  }

  // a program's description with the guidance this draw used: "guidance 2 at noise levels 0.3-5",
  // "no guidance", "guidance 0.5 built in"; w null: none named (the steps menu, where the field decides)
  function describe(prog, w = null) {
    const text = prog.describe;
    if (plan.distilled && plan.guidance) return `${text}, guidance ${plan.guidance} built in`;
    if (!plan.takes_guidance || w === null) return text.replace(/, (auto)?guidance [^,]*/, "");
    return w > 0 ? text.replace(/guidance [^ ,]+/, `guidance ${w}`) : `${text}, no guidance`;
  }

  // the running draw's progress, in the message line: step k is the network evaluation under way
  function progress(what, total) {
    const show = (done) => message(`${what}: step ${Math.min(done + 1, total)} of ${total} (Cancel stops it)`, "info");
    show(0);
    return show;
  }

  // a request's end that is not a picture: a cancel says so (unless a newer request took over and
  // speaks for itself), an error is the message
  function failed(e, total) {
    if (e instanceof Cancelled) {
      if (!e.superseded) message(`cancelled after step ${e.done} of ${total}, nothing drawn`, "info");
    } else {
      message(String(e.message || e));
    }
  }

  function whileRunning(promise) {
    $("cancel").disabled = false;
    return promise.finally(() => { $("cancel").disabled = !runner.busy(); });
  }

  async function drawClicked() {
    let total = 0;
    try {
      const n = checkedInt(field("count"), "images", 1, LIMITS.maxImages);
      const seed = checkedInt(field("seed"), "seed", 0, LIMITS.maxSeed);
      const guidance = guidanceOf(field("guidance"));
      const drawName = stepsSelect.value, label = classSelect.value;
      const labels = requestLabels(n, label);
      const noise = new Float32Array(n * IMAGE_PIXELS);
      for (let i = 0; i < n; i++) noise.set(gaussian(seed + i, IMAGE_PIXELS), i * IMAGE_PIXELS);
      const prog = program(drawName, guidance);
      total = prog.program.length;
      const show = progress(`drawing ${n} image${n > 1 ? "s" : ""}`, total);
      const { x, seconds } = await whileRunning(runner.run({ draw: drawName, x: noise, labels, guidance, seed }, show));
      drawGrid($("grid"), toUint8(x), n, labelled && label === "all" ? plan.num_classes : Math.min(n, 10));
      message(`${n} image${n > 1 ? "s" : ""} in ${seconds.toFixed(2)} s (${describe(prog, guidance)})`, "info");
      $("timing").textContent = seconds.toFixed(3);
    } catch (e) {
      failed(e, total);
    }
  }

  const clearSketch = setupSketch($("sketch"));
  async function editClicked() {
    let total = 0;
    try {
      const strength = $("strength").value;
      const seed = checkedInt(field("seed"), "seed", 0, LIMITS.maxSeed);
      const guidance = guidanceOf(field("guidance"));
      const drawName = stepsSelect.value, target = targetSelect.value;
      const labels = labelled ? Int32Array.of(Number(target)) : null;
      const prog = program(drawName, guidance, strength);
      total = prog.program.length;
      const show = progress("turning the sketch", total);
      const request = { draw: drawName, x: gaussian(seed, IMAGE_PIXELS), image: sketchImage($("sketch")), labels, guidance,
                        strength, seed };
      const { x: out, seconds } = await whileRunning(runner.run(request, show));
      drawGrid($("edited"), toUint8(out), 1, 1);
      message(`turned the sketch into ${labelled ? names[Number(target)] : "an image"} in ${seconds.toFixed(2)} s ` +
        `(SDEdit at strength ${strength} from timestep ${prog.start}, ${describe(prog, guidance)})`, "info");
    } catch (e) {
      failed(e, total);
    }
  }

  function cancelClicked() {
    if (runner.cancel()) message("cancelling...", "info");
  }

  $("draw").addEventListener("click", drawClicked);
  $("edit").addEventListener("click", editClicked);
  $("cancel").addEventListener("click", cancelClicked);
  $("clear").addEventListener("click", clearSketch);
  $("draw").disabled = $("edit").disabled = false;

  window.mnistDiffusion = {
    plan,
    limits: LIMITS,
    threads: runner.threads,
    // the sampler on given noise: noise n*784 numbers, labels n class indices (null: unlabelled), and
    // a stochastic draw's fresh noise (eta > 0) as one array of its draws in order (null: seed 0's);
    // resolves to { images: uint8 n*784 as a plain array, seconds }
    async sampleFromNoise(noise, labels, steps, guidance, fresh = null) {
      const n = noise.length / IMAGE_PIXELS;
      if (!Number.isInteger(n) || n < 1 || n > LIMITS.maxImages) throw new Error(`noise must hold 1 to ${LIMITS.maxImages} images of 784 values`);
      const y = labels === null ? null : Int32Array.from(labels);
      const g = guidance === undefined || guidance === null ? plan.guidance : checkedGuidance(guidance);
      const request = { draw: String(steps), x: Float32Array.from(noise), labels: y, guidance: g, seed: 0,
                        fresh: fresh === null ? null : Float32Array.from(fresh) };
      const { x, seconds } = await whileRunning(runner.run(request));
      return { images: Array.from(toUint8(x)), seconds };
    },
    draw: drawClicked,
  };
  message("ready", "info");
  await drawClicked();
  document.body.dataset.ready = "1";
}

main();
