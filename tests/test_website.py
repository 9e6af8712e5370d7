"""The ONNX export and the static page: onnxruntime agrees with PyTorch; the page, served as plain
files on loopback and run in Debian's Chromium, draws from the noise the Python sampler used the
same digits (uint8, at most 2 levels apart, nearly all equal), for a one-step student and for a
guided teacher's DPM-Solver++; no console error, no request to another host; bad input gets a
message in the page; a long draw leaves the page responsive, shows its steps and stops on Cancel or
a new request; the status names the guidance used; the sketch's SDEdit is the CLI's `edit`; the CLI
refuses what it cannot do in one line."""
from __future__ import annotations

import copy
import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import mnist_diffusion as md
from mnist_diffusion.config import PRESETS, RunConfig
from mnist_diffusion.data import to_uint8
from mnist_diffusion.pretrained import PRETRAINED
from mnist_diffusion.samplers import PerImageNoise
from mnist_diffusion.sampling import run_plan
from mnist_diffusion.website import ORT_WEB_VERSION, find_runtime

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
onnx = pytest.importorskip("onnxruntime")


def _runtime():
    try:
        return find_runtime()
    except md.ConfigError as e:
        pytest.skip(str(e))


def _cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "mnist_diffusion", *args], cwd=cwd, capture_output=True, text=True)


def _random(data: dict, seed: int):
    """A model with every weight random (a fresh one's last layer is zero: its output would be too)."""
    diff = md.Diffusion.new(RunConfig.from_dict(data), seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in diff.model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return diff


def test_onnx_export_of_a_random_model_matches_pytorch(tmp_path):
    from mnist_diffusion.portable import check, export_onnx, onnx_bytes, read_plan
    for conditional in (True, False):
        data = copy.deepcopy(PRESETS["tiny"])
        data["model"]["num_classes"] = 10 if conditional else None
        diff = _random(data, seed=1)
        out = tmp_path / f"c{int(conditional)}"
        report = export_onnx(diff, out)
        assert report["max_abs_difference"] <= 1e-4 and report["opset"] == 17
        plan = read_plan(out)
        assert plan["num_classes"] == (10 if conditional else None) and len(plan["alpha_bar"]) == diff.timesteps
        sess = onnx.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == (["x", "t", "label"] if conditional else ["x", "t"])
        assert {i.type for i in sess.get_inputs()[1:]} == {"tensor(int32)"}
        # a batch size other than the one traced: the axis is free
        x = np.random.default_rng(0).standard_normal((5, 1, 28, 28), dtype=np.float32)
        feeds = {"x": x, "t": np.arange(5, dtype=np.int32) * 9}
        if conditional:
            feeds["label"] = np.array([0, 3, 9, 10, 10], dtype=np.int32)
        got = sess.run(None, feeds)[0]
        with torch.no_grad():
            want = diff.model.float()(torch.from_numpy(x), torch.from_numpy(feeds["t"]).long(),
                                      *([torch.from_numpy(feeds["label"]).long()] if conditional else [])).numpy()
        assert np.abs(got - want).max() <= 1e-4 and np.abs(want).mean() > 0.05
    # an autoguided model (held in memory: its guide has no step) is exported without its guide, and says so
    guided = diff.autoguided(_random(data, seed=3))
    report = export_onnx(guided, tmp_path / "auto")
    assert report["autoguide"].startswith("not exported: drawn without its guide")
    assert report["max_abs_difference"] <= 1e-4 and "autoguide" not in export_onnx(diff, tmp_path / "plain")
    # the check catches a file that is not this network
    with pytest.raises(md.ConfigError, match="disagrees with PyTorch"):
        check(_random(PRESETS["tiny"], seed=1), onnx_bytes(_random(PRESETS["tiny"], seed=2)))


@pytest.mark.system
def test_export_onnx_cli_and_its_refusals(tmp_path):
    out = tmp_path / "onnx"
    r = _cli("export", "--format", "onnx", "--pretrained", "mnist-fast" if "mnist-fast" in PRETRAINED else "mnist",
             "--output", str(out))
    assert r.returncode == 0, r.stderr
    assert "agrees with PyTorch" in r.stdout and (out / "model.onnx").is_file() and (out / "plan.json").is_file()
    plan = json.loads((out / "plan.json").read_text())
    assert plan["export"]["max_abs_difference"] <= 1e-4
    for args, words in ((["--dtype", "fp16"], "writes fp32"), ([], "needs --checkpoint")):
        src = [] if words == "needs --checkpoint" else ["--pretrained", "mnist"]
        r = _cli("export", "--format", "onnx", *src, "--output", str(tmp_path / "x"), *args)
        assert r.returncode != 0 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.system
def test_web_refuses_a_folder_of_other_files_and_a_missing_runtime(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    r = _cli("web", "--pretrained", "mnist", "--output", str(tmp_path / "mine"))
    assert r.returncode != 0 and "holds files not written by web" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    r = _cli("web", "--pretrained", "mnist", "--output", str(tmp_path / "s"), "--runtime", str(tmp_path / "nothing"))
    assert r.returncode != 0 and "onnxruntime-web" in r.stderr and "not found" in r.stderr
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------------------------------------
# the page in Chromium

class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    _runtime()
    names = [n for n in ("mnist-fast", "mnist") if n in PRETRAINED]
    if len(names) < 2:
        pytest.skip("the page is tested with the shipped mnist-fast and mnist")
    root = tmp_path_factory.mktemp("sites")
    servers = {}
    for name in names:
        r = _cli("web", "--pretrained", name, "--output", str(root / name))
        assert r.returncode == 0, r.stderr
        # the page runs its model in a module worker: a site without it cannot draw
        assert (root / name / "worker.js").is_file(), "website.PAGE_FILES must list worker.js"
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root / name)))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers[name] = (f"http://127.0.0.1:{httpd.server_address[1]}/", root / name, httpd)
    yield servers
    for _, _, httpd in servers.values():
        httpd.shutdown()


def _python_draw(name: str, steps: int, labels: torch.Tensor, noise: torch.Tensor) -> tuple[np.ndarray, list]:
    """What the CLI's sampler draws from `noise` with the draw the page runs (plan.json: `sample --steps
    STEPS`), at fp32, and the fresh noise it drew (eta > 0; seed 5's), all of it in order."""
    diff = md.load(name, device="cpu", precision="fp32")
    plan = diff.plan(steps=steps)
    eps_fn = diff.eps_fn(labels, plan.guidance, plan.guidance_interval)
    fresh, seeded = [], PerImageNoise(5, len(noise))

    def noise_fn(like):
        fresh.append(seeded(like))
        return fresh[-1]
    with torch.no_grad():
        x = run_plan(plan, eps_fn, diff.schedule, noise, noise_fn)
    return to_uint8(x), [v for z in fresh for v in z.flatten().tolist()]


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (make test installs Debian's)")
@pytest.mark.system
def test_the_page_draws_what_python_draws_from_the_same_noise(site, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from mnist_diffusion.evaluator import embed, shipped_evaluator
    from mnist_diffusion.metrics import class_stats

    labels = torch.arange(10)
    noise = torch.randn(10, 1, 28, 28, generator=torch.Generator().manual_seed(7))
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        for name, steps in (("mnist-fast", 1), ("mnist-fast", 2), ("mnist", 20)):
            url, folder, _ = site[name]
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors, hosts = [], set()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=120_000)
            want, fresh = _python_draw(name, steps, labels, noise)
            got = page.evaluate("([n, y, s, z]) => window.mnistDiffusion.sampleFromNoise(n, y, s, null, z)",
                                [noise.flatten().tolist(), labels.tolist(), steps, fresh])
            web = np.array(got["images"], dtype=np.uint8).reshape(10, 28, 28)
            gap = np.abs(web.astype(int) - want.astype(int))
            assert gap.max() <= 2 and (gap == 0).mean() >= 0.99, (name, steps, gap.max(), (gap == 0).mean())
            _, probs = embed(shipped_evaluator("mnist"), web)
            assert (probs.argmax(1) == labels.numpy()).mean() >= 0.8 and class_stats(probs)["recognizable"] >= 0.7
            if steps == 1:
                page.screenshot(path=str(tmp_path / f"{name}.png"))
                # limits and bad input: a message in the page, nothing thrown at the console
                page.fill("#count", "1000")
                page.click("#draw")
                page.wait_for_selector("#message.error", timeout=10_000)
                assert "images must be a whole number from 1 to 100" in page.inner_text("#message")
                page.fill("#count", "10")
                page.fill("#seed", "-3")
                page.click("#draw")
                page.wait_for_function("document.querySelector('#message').textContent.includes('seed')")
                page.fill("#seed", "4")
                page.click("#draw")
                page.wait_for_function("document.querySelector('#message').textContent.includes('10 images in')")
                # a sketch turned into a 3
                page.select_option("#target", "3")
                box = page.locator("#sketch").bounding_box()
                page.mouse.move(box["x"] + 60, box["y"] + 40)
                page.mouse.down()
                for dx, dy in ((140, 40), (80, 100), (140, 160), (60, 170)):
                    page.mouse.move(box["x"] + dx, box["y"] + dy, steps=8)
                page.mouse.up()
                page.click("#edit")
                page.wait_for_function("document.querySelector('#message').textContent.includes('turned the sketch')")
            assert errors == [], errors
            assert hosts == {url.split("/")[2]}, hosts
            page.close()
        browser.close()
    assert ORT_WEB_VERSION in (folder / "site.json").read_text()


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (make test installs Debian's)")
@pytest.mark.system
def test_the_page_says_so_without_webassembly_and_when_opened_from_disk(site):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, folder, _ = site["mnist-fast"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        page.add_init_script("delete window.WebAssembly")
        page.goto(url)
        page.wait_for_selector("#message.error", timeout=30_000)
        assert "no WebAssembly" in page.inner_text("#message")
        page.close()
        # Chromium runs no module from file://: the page says how to serve it instead of "loading" forever
        page = browser.new_page()
        page.goto((folder / "index.html").resolve().as_uri())
        page.wait_for_selector("#message.error", timeout=30_000)
        assert "python -m http.server" in page.inner_text("#message")
        assert page.inner_text("#model") == ""
        browser.close()


class _Page:
    """A page of `site[name]` in Chromium, ready (its first draw done), collecting console errors and
    the hosts it asked; `text()` is the message line, `grid()` the grid's pixels as a data URL."""

    def __init__(self, browser, site, name):
        self.url = site[name][0]
        self.page = browser.new_page(viewport={"width": 1100, "height": 900})
        self.errors, self.hosts = [], set()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.hosts.add(r.url.split("/")[2]))
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready='1']", timeout=120_000)

    def text(self) -> str:
        return self.page.inner_text("#message")

    def grid(self) -> str:
        return self.page.evaluate("document.querySelector('#grid').toDataURL()")

    def wait_for(self, words: str, timeout: float = 60_000):
        self.page.wait_for_function("(w) => document.querySelector('#message').textContent.includes(w)",
                                    arg=words, timeout=timeout)

    def refused(self, field: str, value: str, words: str):
        """`value` typed into `field`, Draw clicked: an error naming the limit, and nothing drawn."""
        before = self.grid()
        self.page.evaluate("(el => { el.textContent = ''; el.className = ''; })(document.querySelector('#message'))")
        self.page.fill(field, value)
        self.page.click("#draw")
        self.page.wait_for_selector("#message.error", timeout=10_000)
        assert words in self.text(), (value, self.text())
        assert self.grid() == before

    def close(self):
        assert self.errors == [], self.errors
        assert self.hosts == {self.url.split("/")[2]}, self.hosts
        self.page.close()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium here (make test installs Debian's)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.mark.system
def test_a_long_draw_leaves_the_page_responsive_and_cancel_or_a_new_request_stops_it(site, browser):
    # the guided teacher on 100 images: 20 evaluations of 200 images, half a minute on this machine
    p = _Page(browser, site, "mnist")
    page = p.page
    # the page's own thread: a timer that records its longest gap while the draw runs
    page.evaluate("""() => { let last = performance.now(); window.longestGap = 0;
        setInterval(() => { const now = performance.now(); window.longestGap = Math.max(window.longestGap, now - last);
                            last = now; }, 20); }""")
    before = p.grid()
    page.fill("#count", "100")
    page.select_option("#steps", "20")
    page.click("#draw")
    p.wait_for("step 3 of 20")  # two evaluations done: progress is shown as it goes
    assert not page.is_disabled("#cancel")
    gap = page.evaluate("window.longestGap")
    assert gap < 500, f"the page froze for {gap:.0f} ms during a draw"
    under_way = int(p.text().split("step ")[1].split(" of")[0])
    page.click("#cancel")
    p.wait_for("cancelled after step", timeout=30_000)
    done = int(p.text().split("after step ")[1].split(" of")[0])
    assert done <= under_way + 1, (under_way, p.text())  # stopped within about one evaluation
    page.wait_for_timeout(300)
    assert p.grid() == before and page.is_disabled("#cancel") and "cancelled" in p.text()
    # a new request while one runs: the running one stops, the new one draws
    page.click("#draw")
    p.wait_for("step 2 of 20")
    page.fill("#count", "13")
    page.click("#draw")
    p.wait_for("13 images in", timeout=60_000)
    assert page.evaluate("document.querySelector('#grid').height") == (2 * 30 + 2) * 3  # 13 images, not 100
    assert page.evaluate("window.longestGap") < 500
    p.close()


@pytest.mark.system
def test_the_status_names_the_guidance_used_and_bad_guidance_is_refused(site, browser):
    p = _Page(browser, site, "mnist")
    page = p.page
    assert "guidance 0.5 at noise levels 0.3-5" in p.text()  # the first draw: the model's own
    page.fill("#count", "2")
    for value, words in (("2", "guidance 2 at noise levels 0.3-5"), ("0", "no guidance")):
        page.evaluate("document.querySelector('#message').textContent = ''")
        page.fill("#guidance", value)
        page.click("#draw")
        p.wait_for("2 images in")
        assert words in p.text() and "guidance 0.5" not in p.text(), p.text()
    # the sketch's SDEdit is the CLI's `edit` with the draw's options: its t0 and its share of the steps
    want = md.load("mnist", device="cpu").plan(steps=20, task="edit", strength=0.6)
    page.fill("#guidance", "0.5")
    page.click("#edit")
    p.wait_for("turned the sketch")
    assert f"SDEdit at strength 0.6 from timestep {want.start}, {want.describe()})" in p.text(), p.text()
    # empty, not a number, out of range: a message, never a draw at guidance 0
    p.refused("#guidance", "", "guidance must be a number from 0 to 10, got an empty field")
    p.refused("#guidance", "10.5", "guidance must be a number from 0 to 10, got 10.5")
    p.refused("#guidance", "-1", "guidance must be a number from 0 to 10, got -1")
    # text that is no number: the field holds "" and says badInput
    page.fill("#guidance", "")
    page.type("#guidance", "e")
    assert page.evaluate("document.querySelector('#guidance').validity.badInput")
    before = p.grid()
    page.click("#draw")
    page.wait_for_selector("#message.error", timeout=10_000)
    assert "guidance must be a number from 0 to 10, got no number" in p.text() and p.grid() == before
    noise = [0.0] * 784
    for bad in ("NaN", "Infinity"):
        with pytest.raises(Exception, match="guidance must be a number"):
            page.evaluate(f"() => window.mnistDiffusion.sampleFromNoise({noise}, [3], 20, {bad})")
    p.close()


@pytest.mark.system
def test_seeds_are_bounded_where_every_images_seed_is_exact(site, browser):
    p = _Page(browser, site, "mnist-fast")
    page = p.page
    limits = page.evaluate("window.mnistDiffusion.limits")
    # image i is drawn from seed + i with a 32-bit generator: the last of 100 images must not wrap
    assert limits["maxSeed"] + limits["maxImages"] - 1 == 2**32 - 1
    for seed in ("4294967295", str(limits["maxSeed"] + 1), "1e20"):
        p.refused("#seed", seed, f"seed must be a whole number from 0 to {limits['maxSeed']}, got {seed}")
    p.refused("#seed", "", "seed must be a whole number from 0 to 4294967196, got an empty field")
    page.fill("#count", "100")
    page.fill("#seed", str(limits["maxSeed"]))
    page.click("#draw")
    p.wait_for("100 images in")
    # the two ends of the range draw different noise: 2^32 - 1 is not seed 0 again
    pair = page.evaluate("""async () => { const { gaussian } = await import('./sampler.js');
        return [Array.from(gaussian(0, 4)), Array.from(gaussian(4294967295, 4))]; }""")
    assert pair[0] != pair[1]
    with pytest.raises(Exception, match="a noise seed must be a whole number"):
        page.evaluate("async () => (await import('./sampler.js')).gaussian(4294967296, 4)")
    p.close()
