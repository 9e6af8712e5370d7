// The page's model runner, a module Web Worker: loads model/plan.json and model/model.onnx into
// onnxruntime-web (files beside this one: nothing is fetched from elsewhere) and runs plan.json's
// draws with sampler.js, so that a guided teacher's 20 evaluations on 100 images (half a minute on a
// laptop) never freeze the page. One draw at a time: app.js waits for a draw to end before it sends the next.
//
// Messages in:  { type: "draw", id, draw, x, labels, guidance, strength, image, seed, fresh }
//                                        run one of plan.draws from the noise x (with strength and image: its SDEdit);
//                                        a stochastic draw's fresh noise continues the streams of seeds seed + i
//                                        (sampler.seededFresh), or is `fresh`, all of it in order
//               { type: "cancel", id }   stop draw `id` between evaluations
// Messages out: { type: "ready", plan, threads } | { type: "failed", id: null, message }   once, at load
//               { type: "step", id, done, total }                        after each network evaluation
//               { type: "done", id, x, seconds } | { type: "cancelled", id, done } | { type: "failed", id, message }
import { IMAGE_PIXELS, givenFresh, runDraw, seededFresh } from "./sampler.js";

const cancelled = new Set();
let latest = null;  // the id of the last draw asked for: a cancel for an older one comes too late

function threads() {
  // several WebAssembly threads need a cross-origin isolated page (COOP/COEP headers); a plain
  // static host gives one
  return self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
}

async function load() {
  const ort = await import("./ort/ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = new URL("./ort/", import.meta.url).href;
  ort.env.wasm.numThreads = threads();
  ort.env.wasm.proxy = false;  // this worker is already off the page's thread
  const plan = await (await fetch(new URL("./model/plan.json", import.meta.url))).json();
  const session = await ort.InferenceSession.create(new URL("./model/model.onnx", import.meta.url).href,
    { executionProviders: ["wasm"] });
  const labelled = plan.num_classes !== null;
  async function net(x, t, labels) {
    const n = t.length;
    const feeds = { x: new ort.Tensor("float32", x, [n, 1, 28, 28]), t: new ort.Tensor("int32", t, [n]) };
    if (labelled) feeds.label = new ort.Tensor("int32", labels, [n]);
    const out = await session.run(feeds);
    return out.out.data;
  }
  return { plan, net };
}

class Cancelled extends Error {}

// session.run settles through promises only, which let no message in: a zero-delay timer between
// evaluations lets a "cancel" that arrived during one be seen before the next starts
const yieldToMessages = () => new Promise((resolve) => setTimeout(resolve, 0));

async function run(model, request) {
  const { id, draw, x, labels, guidance, strength, image, seed, fresh } = request;
  let done = 0;
  try {
    if (cancelled.has(id)) throw new Cancelled();
    const t0 = performance.now();
    const out = await runDraw(model.plan, model.net, draw, x, labels, guidance, {
      strength,
      image,
      fresh: fresh ? givenFresh(fresh) : seededFresh(seed, x.length / IMAGE_PIXELS),
      onStep: async (i, total) => {
        done = i + 1;
        postMessage({ type: "step", id, done, total });
        await yieldToMessages();
        if (cancelled.has(id)) throw new Cancelled();
      },
    });
    const seconds = (performance.now() - t0) / 1000;
    postMessage({ type: "done", id, x: out, seconds }, [out.buffer]);
  } catch (e) {
    if (e instanceof Cancelled) postMessage({ type: "cancelled", id, done });
    else postMessage({ type: "failed", id, message: String(e.message || e) });
  } finally {
    cancelled.delete(id);
  }
}

const loading = load();
loading.then(
  ({ plan }) => postMessage({ type: "ready", plan, threads: threads() }),
  (e) => postMessage({ type: "failed", id: null, message: String(e.message || e) }),
);

self.onmessage = async (event) => {
  const request = event.data;
  if (request.type === "cancel") {
    if (request.id === latest) cancelled.add(request.id);
  } else if (request.type === "draw") {
    latest = request.id;
    const model = await loading.catch(() => null);
    if (model) await run(model, request);
    else postMessage({ type: "failed", id: request.id, message: "the model did not load" });
  }
};
