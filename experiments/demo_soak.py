"""Does the demo's memory level off? A soak of `mnist-diffusion demo` on loopback: RSS vs requests.

Starts the demo (`--pretrained MODEL --device cpu`) on 127.0.0.1 at a free port, its temporary
files in a folder of its own, and sends a bounded number of requests to its HTTP API
(/gradio_api/call/<event>, as any client can), the tabs mixed: generate (a student's one or two
steps, a teacher's few DDIM steps), edit (SDEdit of a test digit, of an uploaded drawing, and now
and then the teacher's inpainting), explain, and a malformed request. Every --every requests it
reads the server's /proc/PID/status (VmRSS, threads), its open files and its temporary folder.
It stops by itself: after --requests requests or --max-seconds, whichever comes first. Prints a
table of requests vs RSS and writes it (with the machine and the settings) as JSON; the slope is
a least-squares fit over the second half of the samples, in MB per 1,000 requests.

    OMP_NUM_THREADS=1 PYTHONPATH=src python experiments/demo_soak.py --model mnist-fast --requests 3000 \
        --json runs/soak/fast.json
    OMP_NUM_THREADS=1 PYTHONPATH=src python experiments/demo_soak.py --model mnist --steps 4 --requests 600

--env NAME=VALUE sets a variable in the server's environment only (MALLOC_ARENA_MAX=2, say), for
comparing allocators; --concurrency K sends K requests at a time (the queue refuses past 24).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc(pid: int) -> dict:
    """VmRSS, VmHWM (MB), threads and open files of a process, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
        elif key == "Threads":
            out["threads"] = int(value)
    try:
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        out["fds"] = None
    return out


def _folder_size(folder: Path) -> tuple[int, float]:
    files = [f for f in folder.rglob("*") if f.is_file()]
    return len(files), sum(f.stat().st_size for f in files if f.exists()) / 2**20


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _start(model: str, tmp: Path, env_extra: dict, threads: int):
    """The demo of `model` on a free loopback port: (process, url, log lines)."""
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp), "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), **env_extra}
    p = subprocess.Popen([sys.executable, "-m", "mnist_diffusion", "demo", "--host", "127.0.0.1", "--port", str(port),
                          "--device", "cpu", "--pretrained", model], cwd=tmp, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, url, deadline = [], None, time.time() + 180
    while time.time() < deadline and p.poll() is None:
        line = p.stdout.readline()
        lines.append(line)
        if line.startswith("open http"):
            url = line.split()[1]
            break
    if url is None or not url.startswith("http://127.0.0.1:"):
        p.kill()
        sys.exit("the demo did not start on loopback:\n" + "".join(lines))
    threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True).start()
    return p, url.rstrip("/"), lines


def _drawing_png() -> bytes:
    """A stroke on a 280 x 280 canvas, as the page uploads it (RGBA PNG)."""
    from PIL import Image, ImageDraw
    img = Image.new("RGBA", (280, 280), (255, 255, 255, 255))
    ImageDraw.Draw(img).line([(140, 40), (140, 240)], fill=(0, 0, 0, 255), width=20)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


class Traffic:
    """The requests: a mix of the tabs, each one POST and the answer's event stream read to its end."""

    def __init__(self, url: str, student: bool, steps: int, inpaint_every: int, seed: int):
        import httpx
        self.url, self.student, self.steps, self.inpaint_every = url, student, steps, inpaint_every
        self.rng = random.Random(seed)
        self.png = _drawing_png()
        self.local = threading.local()
        self.httpx = httpx

    def _client(self):
        if not hasattr(self.local, "c"):
            self.local.c = self.httpx.Client(base_url=self.url, timeout=300)
        return self.local.c

    def call(self, api: str, data: list) -> str:
        """POST the values, read the answer: 'complete', 'error' (a refusal) or what went wrong."""
        c = self._client()
        r = c.post(f"/gradio_api/call/{api}", content=json.dumps({"data": data}),
                   headers={"content-type": "application/json"})
        if r.status_code != 200:
            return f"http {r.status_code}"
        event = None
        with c.stream("GET", f"/gradio_api/call/{api}/{r.json()['event_id']}") as answer:
            for line in answer.iter_lines():
                if line.startswith("event: "):
                    event = line[len("event: "):]
                    if event in ("complete", "error"):
                        break
        return event or "nothing"

    def upload(self) -> dict:
        r = self._client().post("/gradio_api/upload", files={"files": ("drawing.png", self.png, "image/png")})
        r.raise_for_status()
        path = r.json()[0]
        return {"path": path, "meta": {"_type": "gradio.FileData"}, "orig_name": "drawing.png"}

    def next(self, i: int) -> tuple[str, list]:
        """Request i: mostly generate, then edit and explain, a malformed one every 25th."""
        rng, seed = self.rng, self.rng.randrange(2**31 - 1)
        if i % 25 == 24:
            return "generate", ["one of each", "NaN", "ddim", 1, seed, 2]  # refused: one line
        k = rng.random()
        if k < 0.55:
            n = rng.randint(1, 16)
            if self.student:
                return "generate", [rng.choice(["one of each", "3", "7"]), 0, "ddim", rng.randint(1, 2), seed, n]
            return "generate", ["one of each", 0.5, rng.choice(["ddim", "dpmpp"]), self.steps, seed, n]
        if k < 0.75:
            if not self.student and self.inpaint_every and i % self.inpaint_every == 0:
                return "edit", ["test digit", None, rng.randrange(1000), "7", None, "inpaint", "bottom", None, seed]
            if rng.random() < 0.5:
                f = self.upload()
                drawn = {"background": None, "layers": [], "composite": f}
                return "edit", ["canvas", drawn, None, "7", round(rng.uniform(0.2, 0.9), 2), "SDEdit", None, None, seed]
            return "edit", ["test digit", None, rng.randrange(1000), "7", round(rng.uniform(0.2, 0.9), 2), "SDEdit",
                            None, None, seed]
        return "explain", [rng.randrange(1000), rng.randrange(1000)]


def _slope(rows: list[dict]) -> float | None:
    """MB per 1,000 requests, least squares over the second half of the samples."""
    half = rows[len(rows) // 2:]
    if len(half) < 3:
        return None
    xs, ys = [r["requests"] for r in half], [r["rss_mb"] for r in half]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return 1000 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mnist-fast", help="a shipped model (--pretrained): mnist-fast, mnist, ...")
    p.add_argument("--requests", type=int, default=2000, help="stop after this many requests")
    p.add_argument("--max-seconds", type=float, default=300, help="or after this long (the soak's own time)")
    p.add_argument("--every", type=int, default=100, help="read the server's RSS every this many requests")
    p.add_argument("--steps", type=int, default=4, help="a teacher's sampling steps (a student: 1 or 2)")
    p.add_argument("--inpaint-every", type=int, default=50, help="a teacher's inpainting every N requests (0: none)")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                   help="the server's OMP_NUM_THREADS")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="in the server's environment")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    env_extra = dict(e.split("=", 1) for e in args.env)
    tmp = Path(tempfile.mkdtemp(prefix="demo-soak-"))
    proc, url, log = _start(args.model, tmp, env_extra, args.threads)
    folder = next(tmp.glob("mnist-diffusion-demo-*"))
    student = "distilled student" in "".join(log) or args.model.endswith("-fast")
    traffic = Traffic(url, student, args.steps, args.inpaint_every, args.seed)
    rows, outcomes, t0 = [], {}, time.time()

    def sample(n: int) -> None:
        files, mb = _folder_size(folder)
        rows.append({"requests": n, "seconds": round(time.time() - t0, 1), "rss_mb": None, "hwm_mb": None,
                     **{"outcomes": dict(outcomes), "temp_files": files, "temp_mb": round(mb, 1)}})
        info = _proc(proc.pid)
        rows[-1].update(rss_mb=round(info["VmRSS"], 1), hwm_mb=round(info["VmHWM"], 1), threads=info["threads"],
                        fds=info["fds"])
        r = rows[-1]
        print(f"{n:>8} {r['seconds']:>8.1f} {r['rss_mb']:>8.1f} {r['hwm_mb']:>8.1f} {r['threads']:>7} {r['fds']:>5} "
              f"{files:>6} {mb:>7.1f}", flush=True)

    print(f"{'requests':>8} {'seconds':>8} {'RSS MB':>8} {'HWM MB':>8} {'threads':>7} {'fds':>5} {'files':>6} "
          f"{'tmp MB':>7}", flush=True)
    sent = 0
    lock = threading.Lock()

    def one(i: int) -> None:
        with lock:
            api, data = traffic.next(i)
        try:
            outcome = f"{api} {traffic.call(api, data)}"
        except Exception as e:  # noqa: BLE001  (counted: a dropped connection is a finding too)
            outcome = f"{api} {type(e).__name__}"
        with lock:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    try:
        sample(0)
        with ThreadPoolExecutor(args.concurrency) as pool:
            while sent < args.requests and time.time() - t0 < args.max_seconds and proc.poll() is None:
                batch = min(args.concurrency, args.requests - sent, args.every - sent % args.every)
                list(pool.map(one, range(sent, sent + batch)))
                sent += batch
                if sent % args.every == 0:
                    sample(sent)
        if sent % args.every:
            sample(sent)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    slope = _slope(rows)
    print(f"{sent} requests in {time.time() - t0:.0f} s; RSS {rows[0]['rss_mb']:.0f} -> {rows[-1]['rss_mb']:.0f} MB; "
          f"slope over the second half: {slope if slope is None else round(slope, 1)} MB per 1,000 requests; "
          f"outcomes {outcomes}")
    traceback = "Traceback" in "".join(log)
    if traceback:
        print("the server logged a traceback:\n" + "".join(log)[-3000:])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "model": args.model, "requests": sent, "seconds": round(time.time() - t0, 1), "cpu": _cpu(),
            "cores": os.cpu_count(), "server_threads": args.threads, "server_env": env_extra,
            "concurrency": args.concurrency, "slope_mb_per_1000": slope, "outcomes": outcomes,
            "traceback_logged": traceback, "rows": rows}, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
