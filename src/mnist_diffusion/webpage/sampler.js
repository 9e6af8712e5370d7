// The page's sampler: an interpreter of the programs plan.json carries (portable.compile_plan), with
// no sampler of its own; no DOM, no runtime, testable on its own.
//
// `net(x, t, labels)` is the network (model.onnx): x a Float32Array of n*784 values, t and labels
// Int32Arrays of n; it resolves to the network's output (eps, v or flow, as plan.prediction says).
// `plan` is plan.json (portable.py): alpha_bar and the schedule's coefficients for every timestep, the
// prediction, the null label, and the draws, each guided and unguided and as an SDEdit at each
// strength offered, with its program: the start x (from the noise, and an edit's image), then per
// network evaluation its timestep, guidance and clipping and the rows of the update that follows,
// target = c_1 source_1 + c_2 source_2 + ... over named vectors (x, this step's x0 and eps, "fresh"
// noise where the step is marked fresh (a stochastic draw's, eta > 0), and what earlier rows kept). Turning the network's output into x0 is the model's (its prediction), not
// the sampler's, and stays here.
//
// The arithmetic is PyTorch's: each tensor operation of samplers.py rounds to float32, scalars are
// rounded to float32 before they multiply a tensor, and so does every line here (f = Math.fround);
// the rows are laid out in the order PyTorch runs the sampler's operations. It matters: at
// t = T - 1 a v-predicting model's x0 is (x - sqrt(1 - a) eps) sqrt(1 / a) with sqrt(1 / a) ~ 2e4,
// and float32 rounding of eps moves x0 by up to ~0.006; the page reproduces the Python draw's
// rounding rather than being more exact than it.

const PIXELS = 28 * 28;
const f = Math.fround;

// a schedule coefficient at t as the tensor operation sees it (float64 rounded to float32)
function coef(plan, name, t) {
  return f(plan.coefficients[name][t]);
}

// The network at timestep t for every image, guided (classifier-free, Ho & Salimans 2022 eq. 6:
// uncond + (1 + w)(cond - uncond), on the raw output) when w > 0, then turned into eps.
async function epsAt(plan, net, x, t, labels, w) {
  const n = x.length / PIXELS;
  let out;
  if (labels && w > 0) {
    const both = new Float32Array(2 * x.length);
    both.set(x);
    both.set(x, x.length);
    const y = new Int32Array(2 * n);
    y.set(labels);
    y.fill(plan.null_label, n);
    const raw = await net(both, new Int32Array(2 * n).fill(t), y);
    out = new Float32Array(x.length);
    const k = f(1.0 + w);
    for (let i = 0; i < x.length; i++) {
      const cond = raw[i], uncond = raw[i + x.length];
      out[i] = f(uncond + f(k * f(cond - uncond)));
    }
  } else {
    out = await net(x, new Int32Array(n).fill(t), labels);
  }
  for (let i = 0; i < out.length; i++) {
    if (!Number.isFinite(out[i])) {
      throw new Error(`guidance ${w} made the model's prediction overflow; use a smaller guidance`);
    }
  }
  const a = coef(plan, "sqrt_alpha_bar", t), b = coef(plan, "sqrt_one_minus_alpha_bar", t);
  if (plan.prediction === "v") {  // eps = sqrt(a_t) v + sqrt(1 - a_t) x_t
    for (let i = 0; i < out.length; i++) out[i] = f(f(a * out[i]) + f(b * x[i]));
  } else if (plan.prediction === "flow") {  // eps = (x_t + a u) / (a + b)
    const ab = f(a + b);
    for (let i = 0; i < out.length; i++) out[i] = f(f(x[i] + f(a * out[i])) / ab);
  }
  return out;
}

// (x0, eps) at timestep t: eq. 4 solved for x0, x0 clipped to [-1, 1] and eps made consistent with it
async function predictX0(plan, net, x, t, labels, w, clip) {
  const eps = await epsAt(plan, net, x, t, labels, w);
  const r = coef(plan, "sqrt_recip_alpha_bar", t), rm1 = coef(plan, "sqrt_recipm1_alpha_bar", t);
  const x0 = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const rx = f(r * x[i]);
    x0[i] = f(rx - f(rm1 * eps[i]));
    if (clip) {
      x0[i] = Math.min(1, Math.max(-1, x0[i]));
      eps[i] = f(f(rx - x0[i]) / rm1);
    }
  }
  return [x0, eps];
}

// target = c_1 source_1 + c_2 source_2 + ..., each product and sum rounded to float32, left to right
function combine(vectors, row, size) {
  const out = new Float32Array(size);
  row.forEach(([c, name], k) => {
    const v = vectors[name];
    if (!v || v.length !== size) throw new Error(`the plan reads ${name}, which ${v ? "is not the images' size" : "nothing set"}`);
    const cf = f(c);
    if (k === 0) for (let i = 0; i < size; i++) out[i] = f(cf * v[i]);
    else for (let i = 0; i < size; i++) out[i] = f(out[i] + f(cf * v[i]));
  });
  return out;
}

// The program of draw `drawName`, guided or not; an SDEdit's at `strength` (one of plan.edit_strengths)
export function drawProgram(plan, drawName, guided, strength = null) {
  const draw = plan.draws[drawName];
  if (!draw) throw new Error(`no draw ${drawName}; the model offers ${Object.keys(plan.draws).join(", ")}`);
  const modes = strength === null ? draw : draw.edits[String(strength)];
  if (!modes) throw new Error(`no edit at strength ${strength}; the page offers ${plan.edit_strengths.join(", ")}`);
  const program = modes[guided ? "guided" : "unguided"];
  if (!program) throw new Error("this model takes no guidance");
  return program;
}

// whether a draw with these labels at this guidance mixes in classifier-free guidance
export function isGuided(plan, labels, guidance) {
  return Boolean(labels) && plan.takes_guidance && guidance > 0;
}

// Run a program from `noise` (n*784 values; an edit's `image` too): x starts as its init row, and each
// step evaluates the network at x, turns its output into x0 and eps, and runs its rows. w: the
// guidance weight of the steps the program guides. `fresh(size)`: the next fresh noise of a step
// marked fresh (seededFresh, or givenFresh to replay another sampler's). Resolves to x, the
// model-range images.
export async function runProgram(plan, net, program, noise, labels, w,
                                 { image = null, onStep = null, fresh = null } = {}) {
  if (!fresh && program.program.some((step) => step.fresh)) {
    throw new Error("this draw adds fresh noise at its steps (eta > 0) and was given no source of it");
  }
  const vectors = { noise, ...(image ? { image } : {}) };
  vectors.x = combine(vectors, program.init, noise.length);
  const total = program.program.length;
  for (let i = 0; i < total; i++) {
    const step = program.program[i];
    [vectors.x0, vectors.eps] = await predictX0(plan, net, vectors.x, step.t, labels, step.guided ? w : 0.0, step.clip);
    if (step.fresh) vectors.fresh = fresh(noise.length);
    for (const [target, row] of step.then) vectors[target] = combine(vectors, row, noise.length);
    if (onStep) await onStep(i, total);
  }
  return vectors.x;
}

// Run one of plan.draws from `noise` at `guidance` (guided where the model takes it, labels are
// given and guidance > 0); with `strength` and `image`, that draw's SDEdit of the image.
export async function runDraw(plan, net, drawName, noise, labels, guidance,
                              { strength = null, image = null, onStep = null, fresh = null } = {}) {
  if ((strength !== null) !== (image !== null)) throw new Error("an SDEdit needs its strength and its image, a draw neither");
  const guided = isGuided(plan, labels, guidance);
  const program = drawProgram(plan, drawName, guided, strength);
  return runProgram(plan, net, program, noise, labels, guided ? guidance : 0.0, { image, onStep, fresh });
}

// model range [-1, 1] -> uint8, 0 = background: round((x + 1) 127.5), halves to even as torch.round
export function toUint8(x) {
  const out = new Uint8Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = f(f(Math.min(1, Math.max(-1, x[i])) + 1) * 127.5);
    let r = Math.round(v);
    if (r - v === 0.5 && r % 2 === 1) r -= 1;
    out[i] = r;
  }
  return out;
}

// A stream of standard normal values from a 32-bit seed (mulberry32 + Box-Muller, in pairs: an odd
// count drops its pair's second value). Image i of a grid uses seed + i: its start noise, then its
// fresh noise step by step, so an image does not depend on how many are drawn. Not PyTorch's
// generator: the page's seeds draw other digits than the CLI's (sampleFromNoise takes the CLI's
// noise for a like-for-like draw). A seed outside 0..2^32 - 1 is refused, not wrapped: 2^32 + 5
// would draw seed 5's image (app.js bounds its seed field so that seed + i stays inside).
export function gaussianStream(seed) {
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new Error(`a noise seed must be a whole number from 0 to ${0xffffffff}, got ${seed}`);
  }
  let s = seed >>> 0;
  const uniform = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let q = s;
    q = Math.imul(q ^ (q >>> 15), q | 1);
    q ^= q + Math.imul(q ^ (q >>> 7), q | 61);
    return ((q ^ (q >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next(count) {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i += 2) {
        const u1 = 1 - uniform(), u2 = uniform();
        const r = Math.sqrt(-2 * Math.log(u1));
        out[i] = r * Math.cos(2 * Math.PI * u2);
        if (i + 1 < count) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
      }
      return out;
    },
  };
}

// `count` standard normal values: the start of seed's stream
export function gaussian(seed, count) {
  return gaussianStream(seed).next(count);
}

// The fresh noise of n images drawn from seeds seed .. seed + n - 1: image i's stream after its start
// noise (gaussian(seed + i, 784)), 784 values a step. The streams start at the first ask, so a
// deterministic draw (which never asks) pays nothing.
export function seededFresh(seed, n) {
  let streams = null;
  return (size) => {
    if (size !== n * PIXELS) throw new Error(`fresh noise for ${n} images asked for ${size} values`);
    if (!streams) {
      streams = Array.from({ length: n }, (_, i) => gaussianStream(seed + i));
      for (const s of streams) s.next(PIXELS);
    }
    const out = new Float32Array(size);
    streams.forEach((s, i) => out.set(s.next(PIXELS), i * PIXELS));
    return out;
  };
}

// Fresh noise given as one array (another sampler's draws, in order): the next `size` values at each ask
export function givenFresh(values) {
  let at = 0;
  return (size) => {
    if (at + size > values.length) throw new Error(`the fresh noise given (${values.length} values) ran out`);
    at += size;
    return Float32Array.from(values.subarray(at - size, at));
  };
}

export const IMAGE_PIXELS = PIXELS;
