"""The browser demo, tested as a person and a crowd would use it: a real Chromium (Debian's) driven by
Playwright asks for a 7, reads the image back from the page and has the shipped evaluator judge
it; a stroke on the Edit canvas comes back edited; every request stays on this machine. Then 20
requests at once on loopback, limits enforced by the server, memory bounded."""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mnist_diffusion.pretrained import PRETRAINED

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif("mnist" not in PRETRAINED, reason="the demo serves the shipped mnist model")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("gradio")
    cwd = tmp_path_factory.mktemp("demo-cwd")
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "mnist_diffusion", "demo", "--port", str(port), "--device", "cpu"],
                         cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, url, deadline = [], None, time.time() + 120
    while time.time() < deadline and p.poll() is None:
        line = p.stdout.readline()
        lines.append(line)
        if line.startswith("open http"):
            url = line.split()[1]
            break
    if url is None:
        p.kill()
        pytest.fail("the demo did not start:\n" + "".join(lines))
    yield {"url": url, "proc": p, "cwd": cwd, "port": port}
    p.terminate()
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        p.kill()


def test_it_binds_to_loopback_and_writes_nothing_beside_it(server):
    assert server["url"].startswith(f"http://127.0.0.1:{server['port']}")
    out = subprocess.run(["ss", "-ltnH", f"sport = :{server['port']}"], capture_output=True, text=True)
    if out.returncode == 0 and out.stdout.strip():  # State Recv-Q Send-Q Local Peer
        assert {line.split()[3] for line in out.stdout.strip().splitlines()} == {f"127.0.0.1:{server['port']}"}
    assert list(server["cwd"].iterdir()) == []  # its files live in a temporary folder


def _grid_cells(png: bytes, n: int, cols: int) -> np.ndarray:
    """The demo's grid (pad 1, each pixel 4x4) back into uint8 (n, 28, 28)."""
    from PIL import Image
    a = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    cell = 29 * 4
    out = [a[4 + (i // cols) * cell: 4 + (i // cols) * cell + 112: 4, 4 + (i % cols) * cell: 4 + (i % cols) * cell + 112: 4]
           for i in range(n)]
    return np.stack(out)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (make test installs Debian's)")
def test_a_person_asks_for_a_seven_and_edits_a_sketch(server, tmp_path, mnist):
    sync_api = pytest.importorskip("playwright.sync_api")
    from mnist_diffusion.metrics import class_stats
    from mnist_diffusion.evaluator import embed, shipped_evaluator

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        hosts = set()
        page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
        t0 = time.time()
        page.goto(server["url"], wait_until="networkidle")
        # Generate: four 7s, guidance 2, DPM-Solver++ 20 steps
        page.locator("#label input").click()
        page.get_by_role("option", name="7", exact=True).click()
        for elem, value in (("#num_images", "4"), ("#guidance", "2")):
            box = page.locator(f"{elem} input[type=number]")
            box.fill(value)
            box.press("Enter")
        page.locator("#generate_button").click()
        page.locator("#status", has_text="done").wait_for(timeout=90_000)
        src = page.locator("#final img").get_attribute("src")
        png = page.request.get(src).body() if not src.startswith("data:") else __import__("base64").b64decode(
            src.split(",", 1)[1])
        sevens = _grid_cells(png, 4, 4)
        _, probs = embed(shipped_evaluator("mnist"), sevens)
        assert (probs.argmax(1) == 7).all() and class_stats(probs)["recognizable"] >= 0.75, probs.max(1)
        page.screenshot(path=str(tmp_path / "generate.png"), full_page=True)
        # Edit: a stroke on the canvas, SDEdit towards 7
        page.get_by_role("tab", name="Edit").click()
        page.locator("#canvas button[aria-label='Brush']").first.click()  # as a person must: pick the brush
        canvas = page.locator("#canvas canvas").first
        canvas.wait_for()
        box = canvas.bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.2)
        page.mouse.down()
        for k in range(1, 11):
            page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * (0.2 + 0.06 * k))
        page.mouse.up()
        page.locator("#edit_button").click()
        page.locator("#edit_status", has_text="SDEdit").wait_for(timeout=60_000)
        assert page.locator("#edited img").get_attribute("src")
        page.screenshot(path=str(tmp_path / "edit.png"), full_page=True)
        page.get_by_role("tab", name="Explain").click()
        page.locator("#explain_text", has_text="SNR").wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "explain.png"), full_page=True)
        browser.close()
    assert hosts == {f"127.0.0.1:{server['port']}"}, hosts  # no fonts, scripts or analytics from elsewhere
    assert time.time() - t0 < 90


def test_twenty_requests_at_once_are_answered_or_refused_and_memory_stays_bounded(server):
    client_mod = pytest.importorskip("gradio_client")
    client = client_mod.Client(server["url"], verbose=False)
    before = _rss(server["proc"].pid)
    jobs = [client.submit("one of each", 0.5, "ddim", 4, i, 2, api_name="/generate") for i in range(20)]
    answered = refused = 0
    deadline = time.time() + 240
    for job in jobs:
        try:
            job.result(timeout=max(1, deadline - time.time()))
            answered += 1
        except Exception as e:  # noqa: BLE001  (a clean refusal is an error message, not a dropped connection)
            assert "queue" in str(e).lower() or "full" in str(e).lower(), e
            refused += 1
    assert answered + refused == 20 and answered >= 1
    assert _rss(server["proc"].pid) - before < 400 << 20
    # limits are the server's, not the page's: an API call past them gets a message, and serving goes on
    with pytest.raises(Exception, match="greater than maximum value 16|at most 16 images"):
        client.predict("one of each", 0.5, "ddim", 4, 0, 1000, api_name="/generate")
    with pytest.raises(Exception, match="steps for dpmpp must be a whole number from 1 to 100"):
        client.predict("7", 0.5, "dpmpp", 500, 0, 2, api_name="/generate")
    client.predict("7", 0.5, "ddim", 3, 0, 1, api_name="/generate")  # still serving


def test_malformed_uploads_get_a_message_and_serving_goes_on(server, tmp_path):
    """Not an image, an empty file, a 10,000 x 10,000 picture (small on disk): each refused, not crashed."""
    client_mod = pytest.importorskip("gradio_client")
    from PIL import Image
    client = client_mod.Client(server["url"], verbose=False)
    (tmp_path / "notes.png").write_text("this is not a picture")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("L", (10_000, 10_000)).save(tmp_path / "huge.png")  # ~100 kB of zeros, 10^8 pixels
    assert (tmp_path / "huge.png").stat().st_size < 1 << 20
    for name in ("notes.png", "empty.png", "huge.png"):
        f = client_mod.handle_file(str(tmp_path / name))
        with pytest.raises(Exception) as e:
            client.predict("canvas", {"background": f, "layers": [], "composite": f}, 0, "7", 0.6, "SDEdit",
                           "bottom", None, 0, api_name="/edit")
        assert "Connection" not in type(e.value).__name__, e.value
    before = _rss(server["proc"].pid)
    client.predict("test digit", None, 3, "7", 0.3, "SDEdit", "bottom", None, 0, api_name="/edit")  # still serving
    assert _rss(server["proc"].pid) - before < 200 << 20
