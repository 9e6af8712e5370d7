"""benchmark.py and `mnist-diffusion benchmark` with tiny models: the command runs, the JSON has its
keys with positive numbers, comparisons give ratios (or say why they failed), bad options are
one-line errors, the FLOP counter agrees with closed forms. No timing assertions: speed targets live
in docs/BENCHMARKS.md, never in tests."""
import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from mnist_diffusion import benchmark as bench
from mnist_diffusion.cli import main
from mnist_diffusion.data import Split

TINY = ["--model", "unet", "--base-dim", "8", "--batch-size", "8", "--sample-images", "4", "--quick",
        "--threads", "1", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def short_windows(monkeypatch):
    """--quick's settings with windows of one call: these tests check what is measured and how it is
    reported, not the numbers (test_windows_alternate_between_variants checks the windows)."""
    quick = bench.Settings.quick()
    monkeypatch.setattr(bench.Settings, "quick", classmethod(lambda cls: replace(quick, window_seconds=0.01,
                                                                                    peak_seconds=0.01)))


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 and np.isfinite(x)


def test_benchmark_writes_json_with_positive_numbers(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["benchmark", *TINY, "--no-memory", "--json", str(out)]) == 0  # memory: a subprocess (below)
    table = capsys.readouterr().out
    for words in ("parameters", "checkpoint (model + EMA + AdamW)", "training, batch 8",
                  "ddpm", "ddim", "dpmpp", "extrapolated from", "measured"):
        assert words in table
    r = json.loads(out.read_text())
    assert r["format"] == bench.FORMAT
    for key in ("cpu", "cpu_count", "torch", "torch_threads", "device", "device_name", "date"):
        assert key in r["machine"]
    assert r["machine"]["torch_threads"] == 1 and r["machine"]["device"] == "cpu"
    assert r["model"]["base_dim"] == 8 and r["precision"] in ("fp32", "bf16")
    for key in ("parameters", "weights_bytes", "checkpoint_bytes"):
        assert _positive(r[key]), key
    # model + EMA + two AdamW moments: about four copies of the weights
    assert 3 * r["weights_bytes"] < r["checkpoint_bytes"] < 5 * r["weights_bytes"]
    t = r["training"]
    assert t["batch_size"] == 8 and _positive(t["images_per_s"]) and _positive(t["step_ms"])
    assert len(t["windows_images_per_s"]) == bench.Settings.quick().windows
    assert all(_positive(v) for v in t["windows_images_per_s"])
    assert set(r["sampling"]) == {"ddpm", "ddim", "dpmpp"}
    assert [r["sampling"][s]["steps"] for s in ("ddpm", "ddim", "dpmpp")] == [1000, 50, 20]
    assert r["sampling"]["ddpm"]["method"] == "extrapolated" and _positive(r["sampling"]["ddpm"]["step_ms"])
    assert r["sampling"]["dpmpp"]["method"] == "measured" and r["sampling"]["ddim"]["method"] == "measured"
    for e in r["sampling"].values():
        assert e["images"] == 4 and _positive(e["seconds"]) and _positive(e["images_per_s"])
    assert "memory" not in r and "peak memory" not in table
    assert "compare" not in r and r["preset"] is None  # --base-dim replaced the preset's network
    # utilisation: counted FLOPs against this run's matmul peak
    assert "utilisation (counted FLOPs)" in table and "matmul peak" in table
    peak = r["peak"]
    assert peak["matmul_size"] == bench.Settings.quick().peak_size and "failed" not in peak
    assert _positive(peak["bf16_tflops"]) and _positive(peak["fp32_tflops"])
    assert _positive(t["flops_per_image"]) and t["flops_per_step"] == t["flops_per_image"] * 8
    assert t["achieved_tflops"] == pytest.approx(t["images_per_s"] * t["flops_per_image"] / 1e12)
    assert t["share_of_peak_against"] == r["precision"]
    assert 0 < t["share_of_peak"] <= 1
    assert t["share_of_peak"] == pytest.approx(t["achieved_tflops"] / peak[f"{r['precision']}_tflops"])
    assert set(t["share_of_each_peak"]) == {"bf16", "fp32"}


@pytest.mark.system
def test_micro_batch_is_used_and_recorded_and_memory_measured(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["benchmark", *TINY, "--micro-batch", "3", "--no-peak", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "training, batch 8 (3 at a time)" in table and "peak memory, training batch 8 (3 at a time)" in table
    r = json.loads(out.read_text())
    assert r["micro_batch"] == 3
    mem = r["memory"]  # from a fresh process that only trains
    assert "failed" not in mem, mem
    assert mem["batch_size"] == 8
    if os.path.exists("/proc/self/status"):
        assert _positive(mem["peak_rss_bytes"]) and mem["peak_rss_bytes"] >= mem["rss_before_training_bytes"]


def test_no_peak_still_counts_flops(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["benchmark", *TINY, "--no-memory", "--no-peak", "--sampler-steps", "ddpm=2,ddim=2,dpmpp=2",
                 "--json", str(out)]) == 0
    assert "matmul peak not measured: --no-peak" in capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["peak"] is None and _positive(r["training"]["flops_per_image"])
    assert _positive(r["training"]["achieved_tflops"]) and "share_of_peak" not in r["training"]


def test_flop_counter_agrees_with_closed_forms():
    # FlopCounterMode counts 2 FLOPs per multiply-add; backward with input gradients is 2x forward
    M, K, N = 8, 32, 16
    lin, x = torch.nn.Linear(K, N), torch.randn(M, K, requires_grad=True)
    assert bench.count_flops(lambda: lin(x)) == 2 * M * N * K  # the bias add is not counted
    assert bench.count_flops(lambda: lin(x).sum().backward()) == 3 * 2 * M * N * K
    B, C_in, C_out, H, k = 2, 3, 8, 10, 3
    conv, x = torch.nn.Conv2d(C_in, C_out, k, padding=1), torch.randn(B, C_in, H, H, requires_grad=True)
    forward = 2 * B * C_out * H * H * C_in * k * k
    assert bench.count_flops(lambda: conv(x)) == forward
    assert bench.count_flops(lambda: conv(x).sum().backward()) == 3 * forward
    with torch.autocast("cpu", torch.bfloat16):  # the precision does not change the count
        assert bench.count_flops(lambda: conv(x).float().sum().backward()) == 3 * forward
    # attention on CPU runs a kernel torch's table lacks: forward Q K^T and P V, 2 products of 2 b h s^2 d;
    # backward (torch's formula) 5: Q K^T recomputed, as flash attention does, then dP, dV, dQ, dK
    b, h, s, d = 2, 4, 49, 16
    q = torch.randn(b, h, s, d, requires_grad=True)
    attention = lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)  # noqa: E731
    product = 2 * b * h * s * s * d
    assert bench.count_flops(attention) == 2 * product
    assert bench.count_flops(lambda: attention().sum().backward()) == (2 + 5) * product


def test_training_flops_are_forward_and_backward_per_image(tiny):
    cfg = tiny(batch_size=8)
    step = bench.TrainStep(cfg, torch.device("cpu"), 8, None)
    forward = bench.count_flops(step.eval_step(8))
    counted = bench.training_flops(step)
    # backward is 2x forward except for the first layer, which needs no gradient of its input
    assert 2 * forward < counted["flops_per_step"] <= 3 * forward
    assert counted["flops_per_image"] == counted["flops_per_step"] / 8
    half = bench.training_flops(bench.TrainStep(cfg, torch.device("cpu"), 4, None))
    assert half["flops_per_image"] == counted["flops_per_image"]


def test_share_is_taken_against_the_training_precision():
    training = {"images_per_s": 100.0, "flops_per_image": 1e9}  # 0.1 TFLOP/s
    peak = {"matmul_size": 512, "bf16_tflops": 1.0, "fp32_tflops": 0.25}
    u = bench.utilisation(training, peak, "fp32")
    assert u["achieved_tflops"] == pytest.approx(0.1) and u["share_of_peak_against"] == "fp32"
    assert u["share_of_peak"] == pytest.approx(0.4) and u["share_of_each_peak"]["bf16"] == pytest.approx(0.1)
    assert bench.utilisation(training, peak, "bf16")["share_of_peak"] == pytest.approx(0.1)
    failed = bench.utilisation(training, {**peak, "bf16_tflops": None}, "bf16")
    assert failed["share_of_peak"] is None and set(failed["share_of_each_peak"]) == {"fp32"}
    assert bench.utilisation(training, None, "bf16") == {"achieved_tflops": pytest.approx(0.1)}


def test_sampler_steps_and_full_sampling(tmp_path):
    out = tmp_path / "b.json"
    assert main(["benchmark", *TINY, "--no-memory", "--sampler-steps", "ddpm=30,ddim=7", "--full-sampling",
                 "--json", str(out)]) == 0
    s = json.loads(out.read_text())["sampling"]
    assert (s["ddpm"]["steps"], s["ddim"]["steps"], s["dpmpp"]["steps"]) == (30, 7, 20)
    assert all(e["method"] == "measured" for e in s.values())


def test_compare_reports_ratios(tmp_path, capsys, monkeypatch):
    # a real torch.compile takes a minute even for a tiny model; the identity stands in for it here
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)
    out = tmp_path / "b.json"
    assert main(["benchmark", *TINY, "--no-memory", "--no-peak", "--sampler-steps", "ddpm=2,ddim=2,dpmpp=2",
                 "--compare", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "train B/A" in table and "compilation included" in table
    c = json.loads(out.read_text())["compare"]
    assert set(c) == {"precision", "channels_last", "compile"}
    assert c["precision"]["a"] == "fp32" and "bf16" in c["precision"]["b"]
    for entry in c.values():
        assert _positive(entry["train_ratio"]) and _positive(entry["sample_eval_ratio"])
        for part in ("train", "sample_eval"):
            assert _positive(entry[part]["a"]["images_per_s"]) and _positive(entry[part]["b"]["images_per_s"])


def _tiny_cfg(tiny):
    return tiny(batch_size=8)


def test_compile_failure_is_a_result_not_a_crash(tiny, monkeypatch):
    def broken(model, **kw):
        raise RuntimeError("no C++ compiler here\nsecond line")
    monkeypatch.setattr(torch, "compile", broken)
    c = bench.compare(_tiny_cfg(tiny), torch.device("cpu"), 8, None, bench.Settings.quick(), ("compile",))
    assert c["compile"]["train_ratio"] is None
    assert c["compile"]["failed"] == "b: RuntimeError: no C++ compiler here"


def test_compile_failing_at_first_call_is_reported(tiny, monkeypatch):
    class Lazy(torch.nn.Module):  # torch.compile fails lazily, at the first forward
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, *a):
            raise RuntimeError("backend exploded")
    monkeypatch.setattr(torch, "compile", lambda model, **kw: Lazy(model))
    c = bench.compare(_tiny_cfg(tiny), torch.device("cpu"), 8, None, bench.Settings.quick(), ("compile",))
    assert c["compile"]["train_ratio"] is None and "backend exploded" in c["compile"]["failed"]
    assert _positive(c["compile"]["train"]["a"]["images_per_s"])  # A still measured


def test_compile_that_works_gives_a_ratio(tiny, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)  # stands in for a working compiler
    c = bench.compare(_tiny_cfg(tiny), torch.device("cpu"), 8, None, bench.Settings.quick(), ("compile",))
    assert _positive(c["compile"]["train_ratio"]) and c["compile"]["b"] == "torch.compile"


def test_windows_alternate_between_variants():
    calls = []
    settings = bench.Settings(warmup_steps=2, windows=3, window_seconds=1e-9, max_window_steps=1)

    def boom():
        raise RuntimeError("boom")
    out = bench.interleaved_windows({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"),
                                     "c": boom}, torch.device("cpu"), settings)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3  # warm-up, then A B A B A B
    assert out["c"] == {"failed": "RuntimeError: boom"}
    assert len(out["a"]["seconds_per_call"]) == 3 and out["a"]["warmup_calls"] == 2


def test_checkpoint_bytes_match_a_real_training_checkpoint(tiny, tmp_path):
    from mnist_diffusion.training import train

    from conftest import finished
    cfg = tiny(batch_size=8, max_steps=2)
    rng = np.random.default_rng(0)
    data = Split(rng.integers(0, 256, (32, 28, 28), dtype=np.uint8), rng.integers(0, 10, 32, dtype=np.uint8))
    result = train(finished(cfg), data, tmp_path / "run", progress=False, log=lambda _m: None)
    step = bench.TrainStep(cfg, torch.device("cpu"), 8, None)
    step()
    step()
    real = result.checkpoint.stat().st_size
    assert abs(bench.saved_bytes(step.checkpoint_state()) - real) <= 0.01 * real
    assert set(step.checkpoint_state()) == set(torch.load(result.checkpoint, weights_only=True))


@pytest.mark.system
def test_memory_probe_in_a_subprocess(tiny):
    mem = bench.peak_memory(_tiny_cfg(tiny), torch.device("cpu"), 4, None, bench.Settings.quick())
    assert "failed" not in mem, mem
    assert mem["steps"] == bench.Settings.quick().memory_steps and _positive(mem["peak_rss_bytes"])


@pytest.mark.parametrize("argv, words", [
    (["--compare", "precision,speed"], "--compare precision,speed: choose from precision, channels_last, compile"),
    (["--sampler-steps", "ddpm=0"], "expected a positive integer"),
    (["--sampler-steps", "euler=10"], "expected NAME=STEPS with NAME one of ddpm, ddim, dpmpp"),
    (["--model", "nope"], "unknown model 'nope'"),
    (["--batch-size", "0"], "expected a positive integer"),
    (["--preset", "huge"], "invalid choice"),
])
def test_bad_options_are_one_line_errors(argv, words, capsys):
    try:
        code = main(["benchmark", *TINY, "--no-memory", *argv])
    except SystemExit as e:  # argparse rejects it at parse time
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].count("error") == 1


def test_json_path_is_checked_before_measuring(tmp_path, capsys):
    assert main(["benchmark", *TINY, "--json", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a directory" in err and len(err.strip().splitlines()) == 1 and "building" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_missing_cuda_is_a_one_line_error(capsys):
    assert main(["benchmark", *TINY[:-2], "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_model_options_resolve_like_train():
    from mnist_diffusion.config import preset

    from mnist_diffusion.rundir import run_config

    def cfg(preset=None, model=None, base_dim=None, micro_batch=None):
        return bench.resolve_config(preset, model, base_dim, micro_batch)
    assert cfg() == run_config(None, output_dir="x")[0]  # what `train` would run
    assert cfg(preset="quick", model="unet_attn", base_dim=16) == run_config(
        "quick", output_dir="x", values={"model.name": "unet_attn", "model.base_dim": 16})[0]
    assert cfg(preset="quick", micro_batch=16).train.micro_batch == 16
    assert cfg(preset="quick").model == preset("quick").model
    assert cfg(preset="quick", base_dim=16).model.base_dim == 16
    assert cfg(preset="quick", base_dim=16).model.num_res_blocks == preset("quick").model.num_res_blocks
    assert cfg(model="unet", base_dim=8).model.base_dim == 8


def test_more_sampler_steps_than_the_model_has_are_refused_before_any_work(tiny, monkeypatch, capsys):
    """ddim=1000 on a model of T = 50 used to time 50 steps and report them as asked: now one line
    naming the sampler, the steps asked and the model's T, before anything is built or timed."""
    def no_work(*a, **kw):
        raise AssertionError("the benchmark started working")
    monkeypatch.setattr(bench, "TrainStep", no_work)
    monkeypatch.setattr(bench, "machine_info", no_work)
    with pytest.raises(bench.BenchmarkError, match=r"ddim=1000: .*50 timesteps.*at most 50"):
        bench.run(tiny(), torch.device("cpu"), sampler_steps={"ddim": 1000})
    with pytest.raises(bench.BenchmarkError, match=r"ddpm=51"):
        bench.sampling_times(torch.nn.Identity(), tiny(), torch.device("cpu"), None, bench.Settings.quick(),
                             {"ddpm": 51})
    # through the command line, as the probe did it: the tiny preset has T = 50
    assert main(["benchmark", *TINY, "--preset", "tiny", "--no-memory", "--sampler-steps", "dpmpp=20,ddim=1000"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "building" not in err, err
    assert "ddim=1000" in err and "50 timesteps" in err and "at most 50" in err, err
