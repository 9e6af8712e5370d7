"""Rebuild the golden fixture that pins the CLI's outputs across refactors (tests/test_golden.py).

    PYTHONPATH=src python tests/golden/make_golden.py

Trains a tiny class-conditional checkpoint on 256 MNIST images (30 steps, fp32, CPU), then records
what `sample --npz` draws from it with each sampler and with guidance, and what `evaluate --json`
reports. The files were made once, before the library refactor (issue 16), and are committed:
rerunning this script replaces them, so only do that for an intended change of output, and say so.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
# every golden run: (name, extra sample options)
SAMPLE_RUNS = {
    "ddpm": ["--sampler", "ddpm", "--num-images", "6"],
    "ddpm-respaced": ["--sampler", "ddpm", "--steps", "7", "--num-images", "6"],
    "ddim": ["--sampler", "ddim", "--steps", "10", "--eta", "0.3", "--num-images", "6"],
    # the ODE solver on the log-SNR grid, guided at every step: the defaults when the golden files
    # were made (dpmpp now defaults to eta 2, or 0.5 with guidance, on the capped grid, guiding only
    # at noise levels 0.3-5, with a corrector step: issue 20)
    "dpmpp": ["--sampler", "dpmpp", "--steps", "8", "--eta", "0", "--spacing", "logsnr", "--num-images", "6"],
    "guided": ["--sampler", "dpmpp", "--steps", "8", "--eta", "0", "--spacing", "logsnr", "--label", "all", "--nrow",
               "2", "--guidance", "0.5", "--guidance-interval", "0,inf", "--corrector", "0"],
    "label7": ["--sampler", "ddim", "--steps", "5", "--label", "7", "--num-images", "4", "--guidance", "2"],
}
EVALUATE_OPTIONS = ["--sampler", "ddim", "--steps", "5", "--guidance", "0.5", "--num-samples", "40",
                    "--noise-mse-images", "50", "--seed", "3"]
COMMON = ["--device", "cpu", "--precision", "fp32", "--no-progress", "--batch-size", "4"]


def sample_args(name: str, checkpoint: Path, out: Path) -> list[str]:
    return ["sample", "--checkpoint", str(checkpoint), *SAMPLE_RUNS[name], *COMMON, "--seed", "11",
            "--output", str(out / f"{name}.png"), "--npz", str(out / f"{name}.npz")]


def evaluate_args(checkpoint: Path, out: Path) -> list[str]:
    return ["evaluate", "--checkpoint", str(checkpoint), *EVALUATE_OPTIONS, *COMMON, "--json", str(out / "evaluate.json")]


def comparable(report: dict) -> dict:
    """The evaluate JSON without what names the files (paths differ between runs)."""
    return {k: v for k, v in report.items() if k != "checkpoint"}


def main() -> int:
    from mnist_diffusion.cli import main as cli

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = {
            "model": {"name": "unet", "base_dim": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "num_classes": 10},
            "diffusion": {"timesteps": 50, "schedule": "cosine"},
            "train": {"epochs": 1, "max_steps": 30, "subset": 256, "batch_size": 16, "lr": 2e-3, "warmup_steps": 0,
                      "num_samples": 4, "sample_interval": 30, "save_interval": 30, "precision": "fp32",
                      "device": "cpu"},
        }
        (tmp / "config.json").write_text(json.dumps(config))
        assert cli(["train", "--config", str(tmp / "config.json"), "--output-dir", str(tmp / "run"),
                    "--no-progress"]) == 0
        # sampling needs no optimizer state: without it the committed file is half the size
        ckpt = torch.load(tmp / "run" / "checkpoints" / "last.pt", weights_only=True)
        del ckpt["optimizer"]
        torch.save(ckpt, HERE / "tiny_cond.pt")
    for name in SAMPLE_RUNS:
        assert cli(sample_args(name, HERE / "tiny_cond.pt", HERE)) == 0
        (HERE / f"{name}.png").unlink()
    assert cli(evaluate_args(HERE / "tiny_cond.pt", HERE)) == 0
    report = json.loads((HERE / "evaluate.json").read_text())
    (HERE / "evaluate.json").write_text(json.dumps(comparable(report), indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
