// The page's sampler (src/mnist_diffusion/webpage/sampler.js, the interpreter of plan.json's programs)
// replaying draws that Python made: tests/test_page_sampler.py writes one JSON fixture per draw (the
// model's plan.json, the start noise, the fresh noise of eta > 0, labels, an SDEdit's strength and image, every network call
// Python made with its input and output, and Python's result) and
// runs `node --test` on this file with PAGE_FIXTURES naming their folder and PAGE_SAMPLER the module. The page's network is
// the recorded calls, in order: each input must be what Python fed the network (within float32
// rounding), so every step of the page's arithmetic is checked, not only the end.
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

// the page's module as an .mjs copy (PAGE_SAMPLER): Node reads a bare .js file outside a
// "type": "module" package as CommonJS
const { givenFresh, runDraw } = await import(process.env.PAGE_SAMPLER);
const folder = process.env.PAGE_FIXTURES;
assert.ok(folder, "PAGE_FIXTURES must name the folder of fixtures (tests/test_page_sampler.py writes them)");
const names = readdirSync(folder).filter((n) => n.endsWith(".json")).sort();
assert.ok(names.length > 0, `no fixtures in ${folder}`);

// the largest difference, scaled by the values' own size (at least 1)
function gap(a, b) {
  assert.equal(a.length, b.length);
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]) / Math.max(1, Math.abs(b[i])));
  return worst;
}

for (const name of names) {
  test(`the page draws what Python drew: ${name}`, async () => {
    const fx = JSON.parse(readFileSync(join(folder, name), "utf-8"));
    let call = 0;
    const net = async (x, t, labels) => {
      assert.ok(call < fx.calls.length, `the page made more network calls than Python's ${fx.calls.length}`);
      const want = fx.calls[call++];
      assert.ok(t.every((v) => v === want.t), `call ${call}: timestep ${t[0]}, Python's ${want.t}`);
      assert.deepEqual(labels === null || labels === undefined ? null : Array.from(labels), want.labels,
                       `call ${call}: labels`);
      assert.ok(gap(x, want.x) <= fx.tolerance, `call ${call} (t = ${want.t}): input differs by ${gap(x, want.x)}`);
      return Float32Array.from(want.out);
    };
    const labels = fx.labels === null ? null : Int32Array.from(fx.labels);
    const edit = fx.strength === null ? {} : { strength: fx.strength, image: Float32Array.from(fx.image) };
    // a stochastic draw's fresh noise: Python's, replayed; every value of it must be used
    let used = 0;
    const given = givenFresh(Float32Array.from(fx.fresh));
    const fresh = (size) => { used += size; return given(size); };
    const got = await runDraw(fx.plan, net, fx.draw, Float32Array.from(fx.noise), labels, fx.guidance, { ...edit, fresh });
    assert.equal(call, fx.calls.length, "the page made fewer network calls than Python");
    assert.equal(used, fx.fresh.length, "the page used another amount of fresh noise than Python drew");
    assert.ok(gap(got, fx.want) <= fx.tolerance, `the images differ by ${gap(got, fx.want)}`);
  });
}

test("a draw or an edit the plan does not offer is refused in one line", async () => {
  const fx = JSON.parse(readFileSync(join(folder, names[0]), "utf-8"));
  const noise = new Float32Array(784), never = async () => assert.fail("the network was called");
  const draw = Object.keys(fx.plan.draws)[0];
  for (const [name, extra, words] of [["7", {}, "no draw 7; the model offers"],
                                      [draw, { strength: 0.55, image: noise }, "no edit at strength 0.55; the page offers 0.1,"],
                                      [draw, { strength: 0.5 }, "an SDEdit needs its strength and its image"]]) {
    await assert.rejects(runDraw(fx.plan, never, name, noise, null, 0, extra),
                         (e) => e.message.includes(words) && !e.message.includes("\n"));
  }
});

test("a stochastic draw asks for its fresh noise; the page's comes from each image's seed", async () => {
  const { gaussianStream, seededFresh } = await import(process.env.PAGE_SAMPLER);
  const name = names.find((n) => JSON.parse(readFileSync(join(folder, n), "utf-8")).fresh.length > 0);
  assert.ok(name, "no fixture draws fresh noise");
  const fx = JSON.parse(readFileSync(join(folder, name), "utf-8"));
  const labels = fx.labels === null ? null : Int32Array.from(fx.labels);
  const never = async () => assert.fail("the network was called");
  await assert.rejects(runDraw(fx.plan, never, fx.draw, Float32Array.from(fx.noise), labels, fx.guidance,
                               fx.strength === null ? {} : { strength: fx.strength, image: Float32Array.from(fx.image) }),
                       (e) => e.message.includes("was given no source of it"));
  // image i's fresh noise continues its own stream (seed + i) after its start noise
  const fresh = seededFresh(5, 2), first = fresh(2 * 784), second = fresh(2 * 784);
  for (const i of [0, 1]) {
    const stream = gaussianStream(5 + i).next(3 * 784);
    assert.deepEqual(first.subarray(i * 784, (i + 1) * 784), stream.subarray(784, 2 * 784));
    assert.deepEqual(second.subarray(i * 784, (i + 1) * 784), stream.subarray(2 * 784));
  }
  assert.throws(() => fresh(784), /fresh noise for 2 images asked for 784 values/);
});
