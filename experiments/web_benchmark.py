"""How fast the static page draws in headless Chromium on this machine (issue 39's targets).

Builds the page for the shipped mnist-fast (one-step student) and mnist (teacher) with
`mnist-diffusion web`, serves each on loopback, and times window.mnistDiffusion.sampleFromNoise on
a grid of 10 digits (one of each): one warm-up, then the median of --repeats draws. Every request
must go to the page's own host (nothing from the network). Needs Debian's chromium, playwright and
`npm ci --prefix web`.

    PYTHONPATH=src python experiments/web_benchmark.py --json docs/results/web-timing.json
"""
from __future__ import annotations

import argparse
import functools
import http.server
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DRAWS = (("mnist-fast", 1), ("mnist-fast", 2), ("mnist", 10), ("mnist", 20))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}

    def log_message(self, *args):
        pass


def _evaluations(plan: dict, steps: int) -> int:
    """Network evaluations of the page's draw `steps` at the model's own guidance (sampleFromNoise's)."""
    guided = plan["takes_guidance"] and plan["guidance"] > 0
    return len(plan["draws"][str(steps)]["guided" if guided else "unguided"]["timesteps"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path)
    p.add_argument("--screenshot", type=Path, help="a PNG of the student's page after its first grid")
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    rows, tmp = [], Path(tempfile.mkdtemp(prefix="web-bench-"))
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            for name in dict(DRAWS):
                site = tmp / name
                subprocess.run([sys.executable, "-m", "mnist_diffusion", "web", "--pretrained", name, "--output",
                                str(site)], check=True, cwd=ROOT, capture_output=True)
                httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
                threading.Thread(target=httpd.serve_forever, daemon=True).start()
                host = f"127.0.0.1:{httpd.server_address[1]}"
                page = browser.new_page()
                hosts = set()
                page.on("request", lambda r: hosts.add(r.url.split("/")[2]))
                page.goto(f"http://{host}/")
                page.wait_for_selector("body[data-ready='1']", timeout=120_000)
                info = json.loads((site / "site.json").read_text())
                if args.screenshot and name == "mnist-fast":
                    page.set_viewport_size({"width": 900, "height": 720})
                    page.screenshot(path=str(args.screenshot))
                for steps in (s for n, s in DRAWS if n == name):
                    js = ("async (s) => { const n = []; for (let i = 0; i < 7840; i++) n.push(Math.sin(i) * 1.3);"
                          " const y = [0,1,2,3,4,5,6,7,8,9]; const out = [];"
                          f" for (let r = 0; r <= {args.repeats}; r++) out.push((await window.mnistDiffusion"
                          ".sampleFromNoise(n, y, s)).seconds); return out; }")
                    times = page.evaluate(js, steps)[1:]
                    row = {"model": name, "steps": steps, "images": 10, "median_s": round(statistics.median(times), 4),
                           "times_s": [round(t, 4) for t in times], "threads": page.evaluate("window.mnistDiffusion.threads"),
                           "evaluations": _evaluations(json.loads((site / "model" / "plan.json").read_text()), steps),
                           "model_bytes": info["model_bytes"], "runtime_bytes": info["runtime_bytes"]}
                    rows.append(row)
                    print(f"{name:11s} {steps:2d} steps: 10 images in {row['median_s']:.3f} s (median of {args.repeats}; "
                          f"{row['threads']} thread(s))", flush=True)
                assert hosts == {host}, hosts
                page.close()
                httpd.shutdown()
            version = browser.version
            browser.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"cpu": _cpu(), "machine": platform.machine(), "chromium": version, "rows": rows}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    sys.exit(main())
