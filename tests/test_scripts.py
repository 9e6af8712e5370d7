"""The tools in scripts/ and the measurements in experiments/ (behind docs/RESULTS.md), on tiny models: they
must run, write what they say, and (sampler_table --resume) keep finished rows."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mnist_diffusion.data import Split
from mnist_diffusion.training import train
from conftest import finished, tiny_config

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS, EXPERIMENTS = ROOT / "scripts", ROOT / "experiments"  # maintained tools; measurements behind the docs


def _script(name):
    path = SCRIPTS / f"{name}.py" if (SCRIPTS / f"{name}.py").exists() else EXPERIMENTS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mnist_checkpoints(tmp_path_factory, mnist):
    """Two checkpoints of two steps on 64 real digits: "uncond" and "cond" (10 classes)."""
    root = tmp_path_factory.mktemp("scripts")
    data = Split(mnist["train"].images[:64], mnist["train"].labels[:64])
    out = {}
    for name, cfg in (("uncond", tiny_config(max_steps=2, sample_interval=100)),
                      ("cond", tiny_config(max_steps=2, sample_interval=100).replace(model={"num_classes": 10}))):
        train(finished(cfg), data, root / name, progress=False, log=lambda s: None)
        out[name] = str(root / name / "checkpoints" / "last.pt")
    return out


def test_sampler_table_resume_keeps_finished_rows(mnist_checkpoints, tmp_path):
    table = _script("sampler_table")
    js, md = tmp_path / "t.json", tmp_path / "t.md"
    common = ["--checkpoint", mnist_checkpoints["uncond"], "--num-images", "12", "--timing-images", "4",
              "--device", "cpu", "--json", str(js), "--output", str(md)]
    assert table.main(common + ["--samplers", "ddim,dpmpp", "--steps", "2,3"]) == 0
    first = json.loads(js.read_text())["rows"]
    assert [(r["sampler"], r["steps"]) for r in first] == [("ddim", 2), ("ddim", 3), ("dpmpp", 2), ("dpmpp", 3)]
    assert all(r["fid"] > 0 and r["fid_floor"] >= 0 and 0 <= r["recognizable"] <= 1 for r in first)

    # a second invocation adds DDPM; the four finished rows come back unchanged (not re-timed)
    assert table.main(common + ["--samplers", "ddpm", "--steps", "2", "--resume"]) == 0
    rows = json.loads(js.read_text())["rows"]
    assert [(r["sampler"], r["steps"]) for r in rows][0] == ("ddpm", 2)
    assert rows[1:] == first
    assert "| ddpm | 2 |" in md.read_text() and "| dpmpp | 3 |" in md.read_text()

    with pytest.raises(SystemExit, match="other settings"):
        table.main(common[:2] + ["--num-images", "13"] + common[4:] + ["--samplers", "ddim", "--steps", "2",
                                                                        "--resume"])


def test_guidance_table(mnist_checkpoints, tmp_path):
    guidance = _script("guidance_table")
    js = tmp_path / "g.json"
    assert guidance.main(["--checkpoint", mnist_checkpoints["cond"], "--unconditional", mnist_checkpoints["uncond"],
                          "--weights", "0,2", "--num-images", "12", "--steps", "3", "--device", "cpu",
                          "--json", str(js), "--output", str(tmp_path / "g.md")]) == 0
    r = json.loads(js.read_text())
    assert [row["guidance"] for row in r["rows"]] == [0.0, 2.0]
    assert all(0 <= row["label_accuracy"] <= 1 and row["fid"] > 0 for row in r["rows"])
    assert r["unconditional"]["fid"] > 0 and r["target"] == 0.97
    assert "| unconditional |" in (tmp_path / "g.md").read_text()
    with pytest.raises(SystemExit, match="not class-conditional"):
        guidance.main(["--checkpoint", mnist_checkpoints["uncond"], "--num-images", "12", "--device", "cpu"])


def test_profile_step_lists_operators_for_both_precisions(tmp_path):
    prof = _script("profile_step")
    js = tmp_path / "p.json"
    assert prof.main(["--base-dim", "8", "--batch-size", "4", "--steps", "2", "--warmup", "1", "--top", "5",
                      "--json", str(js), "--output", str(tmp_path / "p.md")]) == 0
    r = json.loads(js.read_text())
    for name in ("fp32", "bf16"):
        ops = r[name]["ops_ms_per_step"]
        assert r[name]["wall_ms_per_step"] > 0 and any(k.startswith("aten::conv") for k in ops)
    casts = [r[name]["calls_per_step"].get("aten::_to_copy", 0) for name in ("fp32", "bf16")]
    assert casts[1] > casts[0]  # autocast's casts show up in the bf16 step only
    assert "| operator |" in (tmp_path / "p.md").read_text()


def test_shape_bench_times_every_variant_and_counts_their_flops(tmp_path, capsys):
    bench = _script("shape_bench")
    js = tmp_path / "s.json"
    assert bench.main(["--variants", "unet,fused,p2-48", "--batch-size", "4", "--quick", "--json", str(js)]) == 0
    r = json.loads(js.read_text())
    rows = {row["variant"]: row for row in r["rows"]}
    assert set(rows) == {"unet", "fused", "p2-48"} and all(row["images_per_s"] > 0 for row in rows.values())
    assert rows["fused"]["gflop_per_image"] == rows["unet"]["gflop_per_image"]  # the same network
    assert rows["fused"]["parameters"] == rows["unet"]["parameters"]
    assert rows["p2-48"]["gflop_per_image"] < 0.7 * rows["unet"]["gflop_per_image"]  # levels from 14x14
    assert 0 < r["batch_draw"]["share_of_first_step"] < 1 and r["peak"]["bf16_tflops"] > 0
    assert "p2-48" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown variant"):
        bench.main(["--variants", "unet,nope"])


def test_average_ema_is_the_mean_of_the_snapshots_and_refuses_other_runs(tmp_path, mnist, capsys):
    import torch

    from mnist_diffusion import checkpoint as ckpt_io
    avg = _script("average_ema")
    data = Split(mnist["train"].images[:64], mnist["train"].labels[:64])
    run = tmp_path / "run"
    train(finished(tiny_config(max_steps=4, epochs=100, save_interval=2, sample_interval=100)), data, run,
          progress=False, log=lambda s: None)
    s2, s4 = (ckpt_io.load(run / "checkpoints" / f"step_{s:07d}.pt") for s in (2, 4))
    assert avg.main([str(run), "2,4", "--output", str(tmp_path / "avg.pt")]) == 0
    out = ckpt_io.load(tmp_path / "avg.pt")
    last = ckpt_io.load(run / "checkpoints" / "last.pt")
    for k, v in out["ema"].items():
        torch.testing.assert_close(v, ((s2["ema"][k].double() + s4["ema"][k].double()) / 2).to(v.dtype))
    assert any(not torch.equal(out["ema"][k], last["ema"][k]) for k in out["ema"])
    assert all(torch.equal(out["model"][k], last["model"][k]) for k in out["model"]) and out["step"] == 4
    # one snapshot: its EMA exactly; the output draws through the library like any checkpoint
    assert avg.main([str(run), "4", "--output", str(tmp_path / "one.pt")]) == 0
    one = ckpt_io.load(tmp_path / "one.pt")
    assert all(torch.equal(one["ema"][k], last["ema"][k]) for k in one["ema"])
    import mnist_diffusion as md
    assert md.load(tmp_path / "avg.pt", device="cpu").sample(2, steps=2, seed=0).shape[0] == 2
    # a snapshot of another run, a missing step, and the run's own last.pt as output are refused
    other = tmp_path / "other"
    train(finished(tiny_config(max_steps=2, epochs=100, save_interval=2, sample_interval=100, lr=1e-3)), data, other,
          progress=False, log=lambda s: None)
    (run / "checkpoints" / "step_0000002.pt").write_bytes((other / "checkpoints" / "step_0000002.pt").read_bytes())
    capsys.readouterr()
    assert avg.main([str(run), "2,4", "--output", str(tmp_path / "bad.pt")]) == 1
    assert avg.main([str(run), "3", "--output", str(tmp_path / "bad.pt")]) == 1
    assert "not from the same run" in capsys.readouterr().err and not (tmp_path / "bad.pt").exists()
    with pytest.raises(SystemExit):
        avg.main([str(run), "4", "--output", str(run / "checkpoints" / "last.pt")])


@pytest.mark.system
def test_gpu_check_dry_path_on_cpu(tmp_path, mnist):
    """scripts/gpu_check.sh, the command meant for a CUDA machine, on its CPU path with tiny sizes:
    every stage runs and the one JSON holds each stage's seconds and the numbers."""
    import json
    import os
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PY": sys.executable, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(["bash", str(root / "scripts" / "gpu_check.sh"), "--device", "cpu", "--dry", "--out",
                        str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["device"] == "cpu" and report["dry"] is True
    assert set(report["seconds"]) == {"data", "benchmark", "train", "evaluate"}
    assert report["training"]["steps"] == 4 and report["evaluate"]["n"] == 64
    assert report["benchmark"]["compare"]["precision"]["train"] > 0


@pytest.mark.parametrize("task, extra", [("completion", ["--presets", "left", "--jump-length", "2", "--resample", "2"]),
                                         ("translation", ["--strengths", "0.5,1"])])
def test_editing_benchmark(tmp_path, mnist, task, extra):
    import json
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("editing_benchmark", root / "experiments" / "editing_benchmark.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = [task, "--model", str(root / "tests" / "golden" / "tiny_cond.pt"), "--num-images", "8", "--steps", "4",
            "--batch-size", "8", "--json", str(tmp_path / "e.json"), "--output", str(tmp_path / "e.md"), *extra]
    assert bench.main(argv) == 0
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    if task == "completion":
        assert [r["method"] for r in rows] == ["replacement", "repaint"]
        assert all(0 <= r["class_agreement"] <= 1 and r["masked_mse"] >= 0 for r in rows)
    else:
        assert [r["strength"] for r in rows] == [0.5, 1.0] and all(0 <= r["pixel_distance"] <= 1 for r in rows)
    assert (tmp_path / "e.md").read_text().count("\n|") >= len(rows) + 1
    assert bench.main(argv) == 0  # a second run keeps the finished rows


def test_the_option_tables_in_the_docs_are_made_from_the_parser(capsys):
    """docs/SAMPLERS.md's table of `sample` options is the parser's (scripts/option_tables.py)."""
    tables = _script("option_tables")
    assert tables.main(["--check"]) == 0, capsys.readouterr().err
    text = tables.table("sample")
    assert "| `--sampler {ddpm,ddim,dpmpp,euler,heun}` |" in text and "| `--no-clip` * |" in text
    assert "--help-all" not in text and all(row.startswith("| `--") for row in text.splitlines()[2:])


def test_report_table_reads_evaluate_reports(tmp_path, capsys):
    report_table = _script("report_table")
    base = {"n": 2000, "fid": 1.2345, "fid_floor": 0.11, "precision": 0.7, "recall": 0.8, "recognizable": 0.9,
            "class_entropy": 0.99, "step": 3200}
    (tmp_path / "b.json").write_text(json.dumps({**base, "label_accuracy": 0.95, "sampler": {
        "sampler": "dpmpp", "steps": 20, "eta": 0.0, "spacing": "logsnr-capped", "guidance": 0.5,
        "labels": "balanced (image i ...)"}}))
    (tmp_path / "a.json").write_text(json.dumps({**base, "fid": 2.0, "sampler": {
        "sampler": "dpmpp", "steps": 20, "eta": 1.0, "guidance": 1.0, "autoguide": "x.pt", "autoguide_step": 800}}))
    out = tmp_path / "t.md"
    assert report_table.main([str(tmp_path / "b.json"), str(tmp_path / "a.json"), "--output", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert rows[2] == ("| a | dpmpp 20, eta 1, W 1, autoguide step 800 | 3200 | 2,000 | 2.000 | 0.110 | "
                       "0.700 / 0.800 | 0.900 | 0.990 | - |")
    assert rows[3].startswith("| b | dpmpp 20 logsnr-capped, W 0.5, balanced | 3200 | 2,000 | 1.234 |") and rows[3].endswith("0.950 |")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(SystemExit, match="not the report"):
        report_table.main([str(tmp_path / "c.json")])


def test_cluster_purity(tmp_path, mnist, monkeypatch):
    cluster_purity = _script("cluster_purity")
    from mnist_diffusion.data import Split
    small = {"train": Split(mnist["train"].images[:600], mnist["train"].labels[:600])}
    monkeypatch.setattr(cluster_purity, "prepare", lambda *a, **k: small)
    out = tmp_path / "p.json"
    assert cluster_purity.main(["--clusters", "2,10", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["clusters"] for r in rows] == [2, 10] and rows[1]["purity"] > rows[0]["purity"] > 0.11
    assert rows[1]["smallest"] >= 1 and rows[0]["largest"] + rows[0]["smallest"] == 600
    assert cluster_purity.purity(np.array([0, 0, 1, 1]), np.array([3, 3, 3, 4])) == 0.75
    with pytest.raises(SystemExit, match="integers"):
        cluster_purity.main(["--clusters", "ten"])


def test_report_table_never_writes_over_a_report(tmp_path):
    report_table = _script("report_table")
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"n": 10, "fid": 1.0}))
    with pytest.raises(SystemExit, match="one of the reports"):
        report_table.main([str(report), "--output", str(report)])
    assert json.loads(report.read_text()) == {"n": 10, "fid": 1.0}


def test_few_step_screen_reproduces_the_library(mnist_checkpoints, tmp_path):
    """experiments/few_step_screen.py: its variant on the library's grid draws the very images the library
    draws with the same options (so its baseline rows equal `evaluate`'s), a guidance band over every
    noise level is no band, and each variant's row has its network evaluations counted."""
    import torch

    import mnist_diffusion as md
    from mnist_diffusion.evaluation import balanced_labels
    from mnist_diffusion.config import SamplingConfig
    from mnist_diffusion.sampling import generate, plan
    screen = _script("few_step_screen")
    diff = md.load(mnist_checkpoints["cond"], device="cpu")
    labels = torch.as_tensor(balanced_labels(6, 10))
    # 8 steps: a tiny model's x0 is saturated at high noise, and with fewer every other step is a switch
    lib = generate(diff, 6, plan(diff, SamplingConfig(sampler="dpmpp", steps=8, guidance=0.5)), labels=labels, batch_size=3)
    # the library takes first-order steps where guidance switches on or off (the screen's reset=1) and,
    # with guidance, a linear corrector (corr=1)
    variant = "sde:grid=logsnr-capped:eta=0.5:glo=0.3:ghi=5:n=8:reset=1"
    kind, seq, etas, restarts, nfe, band, reset, corrector = screen.plan(diff.schedule, variant + ":corr=1")
    assert band == (0.3, 5.0) and etas == [0.5] * 8 and reset and corrector == 1
    assert np.array_equal(screen.draw(diff, kind, seq, etas, restarts, nfe, 6, 0.5, labels, 3, band, reset, 1), lib)
    assert not np.array_equal(screen.draw(diff, kind, seq, etas, restarts, nfe, 6, 0.5, labels, 3, band, False, 1),
                              lib)
    # corr=K is the library's corrector K (0 = none), and each changes the images
    for k in (0, 2):
        other = generate(diff, 6, plan(diff, SamplingConfig(sampler="dpmpp", steps=8, guidance=0.5, corrector=k)), labels=labels,
                         batch_size=3)
        assert screen.plan(diff.schedule, variant + f":corr={k}")[-1] == k
        assert np.array_equal(screen.draw(diff, kind, seq, etas, restarts, nfe, 6, 0.5, labels, 3, band, reset, k),
                              other)
        assert not np.array_equal(other, lib)
    with pytest.raises(ValueError, match="corr must be"):
        screen.plan(diff.schedule, "restart:ilo=2:ihi=1:corr=1")
    # skip=1: the same number of points, all on the capped grid below T-1 (n + 1 points, T-1 dropped)
    full = screen.plan(diff.schedule, "sde:grid=cap20:n=5")[1]
    skipped = screen.plan(diff.schedule, "sde:grid=cap20:n=4:skip=1")[1]
    assert full[0] == diff.schedule.timesteps - 1 and skipped == full[1:] and len(skipped) == 4
    with pytest.raises(ValueError, match="skip must be 0 or 1"):
        screen.plan(diff.schedule, "sde:skip=2")
    out = tmp_path / "screen.json"
    with pytest.raises(SystemExit, match="eta must be"):
        screen.main(["--model", mnist_checkpoints["cond"], "--variants", "sde:eta=-1"])
    screen.main(["--model", mnist_checkpoints["cond"], "--num-images", "12", "--batch-size", "6", "--guidance", "0.5",
                 "--json", str(out), "--variants",
                 "sde:grid=cap20:eta=0.5:n=4,sde:grid=cap20:eta=0.5:n=4:glo=0:ghi=inf,ode3:grid=karras7:n=4,"
                 "heun:grid=cap20:n=4"])
    rows = json.loads(out.read_text())
    assert list(rows) == ["sde:grid=cap20:eta=0.5:n=4", "sde:grid=cap20:eta=0.5:n=4:glo=0:ghi=inf",
                          "ode3:grid=karras7:n=4", "heun:grid=cap20:n=4"]
    assert rows["sde:grid=cap20:eta=0.5:n=4"]["fid"] == rows["sde:grid=cap20:eta=0.5:n=4:glo=0:ghi=inf"]["fid"]
    heun = rows.pop("heun:grid=cap20:n=4")
    assert all(r["nfe"] == 8 and len(r["seq"]) == 4 and r["fid"] > 0 for r in rows.values())  # guided: 2 per step
    assert heun["nfe"] == 2 * (4 + 3) and heun["fid"] > 0  # Heun: a second evaluation on each of the 3 steps


def test_make_pretrained_rescore_rewrites_the_card_not_the_weights(tmp_path, mnist, monkeypatch, capsys):
    import shutil

    from mnist_diffusion.cli import main
    from mnist_diffusion.pretrained import PRETRAINED
    mp = _script("make_pretrained")
    shipped = Path(mp.ROOT) / "src" / "mnist_diffusion" / "pretrained_models" / "mnist"
    out, runs = tmp_path / "models", tmp_path / "runs"
    shutil.copytree(shipped, out / "mnist")
    before = (out / "mnist" / "README.md").read_text()
    report = runs / "mnist" / "rescore.json"
    report.parent.mkdir(parents=True)
    # a real report of the shipped weights, small (the script itself asks for N_EVAL images)
    assert main(["evaluate", "--pretrained", "mnist", "--guidance", "0.5", "--sampler", "dpmpp", "--steps", "20",
                 "--num-samples", "10", "--noise-mse-images", "10", "--seed", "0", "--no-progress",
                 "--json", str(report)]) == 0
    with pytest.raises(SystemExit, match="not a 10,000-image report of the shipped mnist"):
        mp.main(["--rescore", "mnist", "--runs", str(runs), "--output", str(out)])
    monkeypatch.setattr(mp, "N_EVAL", 10)
    assert mp.main(["--rescore", "mnist", "--runs", str(runs), "--output", str(out)]) == 0
    assert PRETRAINED["mnist"]["sha256"] in capsys.readouterr().out
    card, r = (out / "mnist" / "README.md").read_text(), json.loads(report.read_text())
    assert card.split("## Evaluation")[0] == before.split("## Evaluation")[0]
    assert f"| {r['fid']:.3f} |" in card and "n = 10 images (dpmpp, 20 steps" in card
    assert "`mnist-diffusion evaluate --pretrained mnist --sampler dpmpp --steps 20 --guidance 0.5" in card
    for f in ("model.safetensors", "config.json", "scheduler_config.json"):
        assert (out / "mnist" / f).read_bytes() == (shipped / f).read_bytes()
    with pytest.raises(SystemExit):
        mp.main(["--rescore", "--pin", "mnist"])
    assert "nothing to --pin" in capsys.readouterr().err
    # the right identity with a bad number: one line, and nothing in the folder touched (samples.png too)
    files = {f.name: f.read_bytes() for f in (out / "mnist").iterdir()}
    for bad in ({"fid": "low"}, {"recall": None}):
        report.write_text(json.dumps({**r, **bad}))
        with pytest.raises(SystemExit, match=r"must be a number, got .*; delete it to rescore"):
            mp.main(["--rescore", "mnist", "--runs", str(runs), "--output", str(out)])
        assert {f.name: f.read_bytes() for f in (out / "mnist").iterdir()} == files
