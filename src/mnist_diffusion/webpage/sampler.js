// The samplers of samplers.py, ported to plain JavaScript: no DOM, no runtime, testable on its own.
//
// `net(x, t, labels)` is the network (model.onnx): x a Float32Array of n*784 values, t and labels
// Int32Arrays of n; it resolves to the network's output (eps, v or flow, as plan.prediction says).
// `plan` is plan.json (portable.py): alpha_bar and the schedule's coefficients for every timestep, the
// prediction, the null label and the draws with their timesteps.
//
// The arithmetic is PyTorch's: each tensor operation of samplers.py rounds to float32, scalars are
// rounded to float32 before they multiply a tensor, and so does every line here (f = Math.fround).
// It matters: at t = T - 1 a v-predicting model's x0 is (x - sqrt(1 - a) eps) sqrt(1 / a) with
// sqrt(1 / a) ~ 2e4, and float32 rounding of eps moves x0 by up to ~0.006; the page reproduces the
// Python draw's rounding rather than being more exact than it.

const PIXELS = 28 * 28;
const f = Math.fround;

// a schedule coefficient at t as the tensor operation sees it (float64 rounded to float32)
function coef(plan, name, t) {
  return f(plan.coefficients[name][t]);
}

// a_t as a float; 1 for t < 0 (the clean image)
function alphaBar(plan, t) {
  return t < 0 ? 1.0 : plan.alpha_bar[t];
}

// lambda_t = 0.5 log(a_t / (1 - a_t)), the half log-SNR
function halfLogSnr(plan, t) {
  const a = plan.alpha_bar[t];
  return 0.5 * (Math.log(a) - Math.log1p(-a));
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

// DDIM at eta 0 (Song et al. 2021, eq. 12): x_s = sqrt(a_s) x0 + sqrt(1 - a_s) eps; the last step to x0
async function ddim(plan, net, xT, seq, labels, w, clip, onStep) {
  let x = xT;
  for (let i = 0; i < seq.length; i++) {
    const t = seq[i], s = i + 1 < seq.length ? seq[i + 1] : -1;
    const [x0, eps] = await predictX0(plan, net, x, t, labels, w(t), clip);
    const aS = alphaBar(plan, s);
    const c0 = f(Math.sqrt(aS)), c1 = f(Math.sqrt(Math.max(1 - aS, 0)));
    const next = new Float32Array(x.length);
    for (let k = 0; k < x.length; k++) next[k] = f(f(c0 * x0[k]) + f(c1 * eps[k]));
    x = next;
    if (onStep) await onStep(i, seq.length);
  }
  return x;
}

// dpmpp's corrector weights (samplers.corrector_weights) at eta 0, linear (order 1) or quadratic
function correctorWeights(h, hBefore, order) {
  const m0 = -Math.expm1(-h), m1 = h - m0, m2 = h * h - 2 * (h - m0);
  if (order === 1 || hBefore === null) return [m1 / h, m0 - m1 / h, 0.0];
  const hb = hBefore;
  return [(m2 + hb * m1) / (h * (h + hb)), -(m2 + (hb - h) * m1 - hb * h * m0) / (hb * h),
          (m2 - h * m1) / (hb * (hb + h))];
}

// DPM-Solver++(2M) at eta 0 (Lu et al. 2022b, Algorithm 2) with the corrector and the first-order
// steps where guidance switches on or off, as samplers.dpmpp does; the last step jumps to x0
async function dpmpp(plan, net, xT, seq, labels, w, clip, firstOrderAt, corrector, onStep) {
  let x = xT, x0Prev = null, hPrev = null, last = null;
  const n = x.length;
  for (let i = 0; i < seq.length; i++) {
    const t = seq[i];
    const [x0] = await predictX0(plan, net, x, t, labels, w(t), clip);
    if (onStep) await onStep(i, seq.length);
    if (i + 1 === seq.length) return x0;
    if (last !== null && !firstOrderAt.has(t)) {  // redo the step into x with the new x0 as well
      const [base, aT, hStep, x0a, x0b, hb] = last;
      const [wNew, wA, wB] = correctorWeights(hStep, x0b !== null ? hb : null, corrector).map(f);
      const c = f(Math.sqrt(aT));
      const fixed = new Float32Array(n);
      for (let k = 0; k < n; k++) {
        let inner = f(f(wNew * x0[k]) + f(wA * x0a[k]));
        if (wB) inner = f(inner + f(wB * x0b[k]));
        fixed[k] = f(base[k] + f(c * inner));
      }
      x = fixed;
    }
    const s = seq[i + 1];
    const aT = alphaBar(plan, t), aS = alphaBar(plan, s);
    const h = halfLogSnr(plan, s) - halfLogSnr(plan, t);
    let d;
    if (x0Prev === null || firstOrderAt.has(t)) {
      d = x0;
      x0Prev = null;
    } else {
      const r = hPrev / h, c0 = f(1 + 1 / (2 * r)), c1 = f(1 / (2 * r));
      d = new Float32Array(n);
      for (let k = 0; k < n; k++) d[k] = f(f(c0 * x0[k]) - f(c1 * x0Prev[k]));
    }
    const cx = f(Math.sqrt((1 - aS) / (1 - aT))), cd = f(Math.sqrt(aS) * Math.expm1(-h));
    const base = new Float32Array(n), next = new Float32Array(n);
    for (let k = 0; k < n; k++) {
      base[k] = f(cx * x[k]);
      next[k] = f(base[k] - f(cd * d[k]));
    }
    x = next;
    if (corrector) last = [base, aS, h, x0, corrector === 2 ? x0Prev : null, hPrev];
    x0Prev = x0;
    hPrev = h;
  }
  return x;
}

// Run one of plan.draws from the starting point xT (n*784 values) at guidance w. `start` (SDEdit):
// begin at that timestep instead, on the draw's grid cut below it. Resolves to the model-range images.
export async function runDraw(plan, net, drawName, xT, labels, guidance, { start = null, onStep = null } = {}) {
  const draw = plan.draws[drawName];
  if (!draw) throw new Error(`no draw ${drawName}; the model offers ${Object.keys(plan.draws).join(", ")}`);
  let seq = draw.timesteps;
  if (start !== null) seq = [start, ...seq.filter((t) => t < start)];
  const w0 = labels && plan.takes_guidance ? guidance : 0.0;
  const guided = new Set(draw.guided_timesteps);
  // guided only inside the draw's guidance interval (its guided timesteps), where one was planned
  const w = (t) => (w0 > 0 && (guided.has(t) || draw.guidance === 0) ? w0 : 0.0);
  if (draw.sampler === "ddim") return ddim(plan, net, xT, seq, labels, w, draw.clip, onStep);
  if (draw.sampler === "dpmpp") {
    const switches = new Set(w0 > 0 ? draw.switches : []);
    return dpmpp(plan, net, xT, seq, labels, w, draw.clip, switches, draw.corrector, onStep);
  }
  throw new Error(`the page has no ${draw.sampler} sampler`);
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

// SDEdit's start (samplers.sdedit_start): strength s in (0, 1] -> round(s T) - 1
export function sdeditStart(plan, strength) {
  return Math.max(0, Math.min(plan.timesteps - 1, Math.round(strength * plan.timesteps) - 1));
}

// x_t = sqrt(a_t) x0 + sqrt(1 - a_t) z (eq. 4)
export function noised(plan, x0, z, t) {
  const a = coef(plan, "sqrt_alpha_bar", t), b = coef(plan, "sqrt_one_minus_alpha_bar", t);
  const out = new Float32Array(x0.length);
  for (let i = 0; i < x0.length; i++) out[i] = f(f(a * x0[i]) + f(b * z[i]));
  return out;
}

// Standard normal noise from a 32-bit seed (mulberry32 + Box-Muller): image i of a grid uses seed
// + i, so an image does not depend on how many are drawn. Not PyTorch's generator: the page's seeds
// draw other digits than the CLI's (sampleFromNoise takes the CLI's noise for a like-for-like draw).
// A seed outside 0..2^32 - 1 is refused, not wrapped: 2^32 + 5 would draw seed 5's image (app.js
// bounds its seed field so that seed + i stays inside).
export function gaussian(seed, count) {
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
  const out = new Float32Array(count);
  for (let i = 0; i < count; i += 2) {
    const u1 = 1 - uniform(), u2 = uniform();
    const r = Math.sqrt(-2 * Math.log(u1));
    out[i] = r * Math.cos(2 * Math.PI * u2);
    if (i + 1 < count) out[i + 1] = r * Math.sin(2 * Math.PI * u2);
  }
  return out;
}

export const IMAGE_PIXELS = PIXELS;
