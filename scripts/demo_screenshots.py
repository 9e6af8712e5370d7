"""Screenshots of the demo's three tabs for the README, taken the way the browser test drives it.

    PYTHONPATH=src python scripts/demo_screenshots.py --output docs/figures

Starts `mnist-diffusion demo` (the shipped mnist model) on a free port, asks for one of each digit
with guidance 0.5, draws a stroke on the Edit canvas and turns it into a 7, opens Explain at t =
250, and saves demo_generate.png, demo_edit.png and demo_explain.png. Needs Debian's Chromium
(`make browser`) and the demo extra.
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", type=Path, default=Path("docs/figures"))
    args = p.parse_args(argv)
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mnist_diffusion", "demo", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        for line in server.stdout:
            if line.startswith("open http"):
                url = line.split()[1]
                break
        if url is None:
            raise SystemExit(f"the demo did not start (exit {server.wait()})")
        import threading  # keep reading its output, so a full pipe never blocks it
        threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.goto(url, wait_until="networkidle")
            page.locator("#generate_button").click()
            page.locator("#status", has_text="done").wait_for(timeout=120_000)
            page.screenshot(path=str(args.output / "demo_generate.png"))
            page.get_by_role("tab", name="Edit").click()
            page.locator("#canvas button[aria-label='Brush']").first.click()
            box = page.locator("#canvas canvas").first.bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.35, box["y"] + box["height"] * 0.25)
            page.mouse.down()
            for k in range(1, 11):
                page.mouse.move(box["x"] + box["width"] * (0.35 + 0.03 * k), box["y"] + box["height"] * (0.25 + 0.05 * k))
            page.mouse.up()
            page.locator("#edit_button").click()
            page.locator("#edit_status", has_text="SDEdit").wait_for(timeout=60_000)
            page.screenshot(path=str(args.output / "demo_edit.png"))
            page.get_by_role("tab", name="Explain").click()
            slider = page.locator("#explain_t input[type=number]")
            slider.fill("250")
            slider.press("Enter")
            page.locator("#explain_text", has_text="t = 250").wait_for(timeout=30_000)
            page.screenshot(path=str(args.output / "demo_explain.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
    print(f"wrote demo_generate.png, demo_edit.png and demo_explain.png into {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
