"""experiments/time_curve.py (issue 47): the time-to-quality curve, end to end on the tiny preset (one
variant, one seed, 8 steps, 3 scored points, 20 images each; several variants: the dry run and the
synthetic mean), and its dry run of the real quick-preset
curve. The real curve (quick preset, n = 2,000) is a measurement, run by hand."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _time_curve():
    spec = importlib.util.spec_from_file_location("time_curve", ROOT / "experiments" / "time_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_prints_the_quick_curve_seed_major(tmp_path, capsys):
    tc = _time_curve()
    assert tc.main(["--dry-run", "--runs", str(tmp_path / "runs"), "--budget-seconds", "300"]) == 0
    lines = capsys.readouterr().out.splitlines()
    train = [ln for ln in lines if " train " in ln]
    assert [ln.split("--output-dir ")[1].split()[0].rsplit("/", 1)[1] for ln in train] == \
        ["base-s0", "thin-attn-v-1850-s0", "base-s1", "thin-attn-v-1850-s1"]  # seed-major: the variants share the day
    # 8 points over each recipe's own steps; the recipe's own --save-interval is replaced, not repeated;
    # `base` is the quick preset before issue 47 whatever the preset is today
    assert "--preset quick --dataset mnist --seed 0 --model unet --base-dim 32 --channel-mults 1,2,2 " \
           "--num-res-blocks 1 --prediction eps --max-steps 3200 --save-interval 400 --keep-checkpoints 0 " \
           "--time-limit 5 " in train[0]
    assert "--prediction v --model unet_attn --num-res-blocks 1 --base-dim 16 --channel-mults 1,4,4 " \
           "--max-steps 1850 --save-interval 232 " in train[1]
    assert all(ln.count("--save-interval") == 1 and ln.count("--max-steps") == 1 for ln in train)
    assert sum(" evaluate --run " in ln and "--num-samples 2000" in ln for ln in lines) == 4
    assert not (tmp_path / "runs").exists()  # nothing run, nothing written


@pytest.mark.system
def test_time_curve_end_to_end_then_reuses_finished_runs(tmp_path, mnist, monkeypatch, capsys):
    tc = _time_curve()
    runs, js, png = tmp_path / "runs", tmp_path / "curve.json", tmp_path / "curve.png"
    # --no-lock: the test process may hold /tmp/torch.lock already (the commands would wait for it forever)
    argv = ["--variants", "half-v", "--seeds", "0", "--preset", "tiny", "--steps", "8", "--points", "3",
            "--num-samples", "20", "--runs", str(runs), "--json", str(js), "--figure", str(png), "--no-lock",
            "--final-num-samples", "16"]
    assert tc.main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads(js.read_text())
    assert set(result["machine"]) >= {"cpu", "torch", "threads", "cores"} and result["machine"]["torch"]
    assert result["variants"] == {"half-v": tc.VARIANTS["half-v"]}
    assert result["settings"]["num_samples"] == 20 and result["settings"]["points"] == 3
    assert [(r["variant"], r["seed"]) for r in result["runs"]] == [("half-v", 0)]
    for run in result["runs"]:
        rows = run["rows"]
        # save interval ceil(8 / 3) = 3: steps 3 and 6, and the last step (not a multiple) scored too
        assert [r["step"] for r in rows] == [3, 6, 8]
        assert (Path(run["run"]) / "checkpoints" / "step_0000008.pt").exists()
        seconds = [r["train_seconds"] for r in rows]
        assert 0 < seconds[0] < seconds[1] < seconds[2] == run["train_seconds"]
        for r in rows:
            assert r["n"] == 20 and r["fid"] > 0 and r["fid_floor"] > 0
            assert 0 <= r["recognizable"] <= 1 and 0 <= r["label_accuracy"] <= 1
        assert "--max-steps 8 --save-interval 3 --keep-checkpoints 0" in run["command"]
    for name, mean in result["mean"].items():
        (run,) = [r for r in result["runs"] if r["variant"] == name]
        assert [m["step"] for m in mean] == [3, 6, 8] and all(m["seeds"] == 1 for m in mean)
        assert [m["fid"] for m in mean] == pytest.approx([r["fid"] for r in run["rows"]])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| half-v | 0 | 8 |" in out and "| half-v | mean of 1 | 8 |" in out
    (run,) = result["runs"]
    assert run["final"]["n"] == 16 and result["settings"]["final_num_samples"] == 16
    final = result["final"]["half-v"]
    assert final["fid"] == {"mean": pytest.approx(run["final"]["fid"]), "min": run["final"]["fid"],
                            "max": run["final"]["fid"]} and final["time_ratio"]["mean"] == 1.0
    assert "| half-v | 0 | 1.000 [1.000, 1.000] |" in out

    # a rerun trains and scores nothing: every run and score is reused
    def no_command(*a, **k):
        raise AssertionError(f"a finished run was run again: {a}")

    monkeypatch.setattr(tc.subprocess, "run", no_command)
    png.unlink()
    assert tc.main(argv) == 0
    assert json.loads(js.read_text())["runs"] == result["runs"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # other settings for the same runs are refused, not mixed in
    with pytest.raises(SystemExit, match="other settings"):
        tc.main([*argv[:9], "2", *argv[10:]])  # --points 2


def test_the_final_summary_is_each_variants_mean_spread_and_time_ratio():
    """Time as a ratio of the first variant's, seed by seed (the runs of one seed share a stretch of
    the machine's day), then the seeds' mean; scores as mean, min and max over the seeds."""
    tc = _time_curve()

    def run(variant, seed, seconds, fid, recognizable):
        return {"variant": variant, "seed": seed, "train_seconds": seconds,
                "final": {"fid": fid, "recognizable": recognizable, "label_accuracy": None, "n": 10000}}

    runs = [run("base", 0, 1000, 0.17, 0.97), run("thin", 0, 450, 0.19, 0.96),
            run("base", 1, 1200, 0.19, 0.97), run("thin", 1, 500, 0.17, 0.98)]
    summary = tc.final_summary(runs, ["base", "thin"])
    assert summary["base"]["time_ratio"] == {"mean": 1.0, "min": 1.0, "max": 1.0}
    thin = summary["thin"]
    assert thin["time_ratio"]["mean"] == pytest.approx((0.45 + 500 / 1200) / 2, abs=1e-4)
    assert (thin["time_ratio"]["min"], thin["time_ratio"]["max"]) == (pytest.approx(500 / 1200, abs=1e-4), 0.45)
    assert thin["fid"] == {"mean": pytest.approx(0.18), "min": 0.17, "max": 0.19} and thin["seeds"] == [0, 1]
    assert "label_accuracy" not in thin  # none measured (an unlabelled model)


def test_two_seed_mean_and_figure(tmp_path):
    """The seeds' mean is taken at the steps every seed has (a budget may stop one seed earlier), and
    the figure draws each seed and the mean."""
    tc = _time_curve()

    def run(variant, seed, steps, secs, fids):
        return {"variant": variant, "seed": seed, "rows": [
            {"step": s, "train_seconds": t, "fid": f, "recognizable": 1 - f / 10, "label_accuracy": None,
             "fid_floor": 0.11, "n": 2000} for s, t, f in zip(steps, secs, fids)]}

    runs = [run("base", 0, [400, 800, 1200], [80, 160, 240], [3.0, 1.0, 0.5]),
            run("base", 1, [400, 800], [90, 170], [2.0, 0.8]),
            run("half-v", 0, [200, 400], [40, 80], [4.0, 2.0]),
            run("half-v", 1, [200, 400], [44, 84], [3.0, 1.5])]
    mean = {v: tc.mean_rows([r for r in runs if r["variant"] == v]) for v in ("base", "half-v")}
    assert [(m["step"], m["seeds"], m["train_seconds"], m["fid"]) for m in mean["base"]] == \
        [(400, 2, 85.0, 2.5), (800, 2, 165.0, 0.9)]
    assert mean["base"][0]["label_accuracy"] is None and mean["half-v"][1]["fid"] == pytest.approx(1.75)
    result = {"runs": runs, "mean": mean, "settings": {"num_samples": 2000},
              "machine": {"cpu": "test CPU", "threads": 2, "torch": "2.x"}}
    png = tc.plot(result, tmp_path / "f.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
