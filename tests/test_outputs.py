"""outputs.py: the one guard every writer goes through. Each case is a way a command lost a user's
files before the guard (a hostile probe's findings), run through the real CLI: the command is refused
in one line, exit 2, and every byte that was there is still there."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mnist_diffusion.cli import main
from mnist_diffusion.config import ConfigError
from mnist_diffusion.outputs import check_folder, folder_kind
from mnist_diffusion.pretrained import DIR as SHIPPED

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / "tiny_cond.pt"  # a fixed tiny conditional checkpoint
TRAIN = ["--preset", "tiny", "--max-steps", "2", "--sample-interval", "0", "--precision", "fp32", "--no-progress"]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, args, *words) -> str:
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    return err


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "model"
    assert main(["export", "--checkpoint", str(GOLDEN), "--output", str(out), "--no-samples"]) == 0
    return out


def test_folder_kinds_are_told_by_their_markers(tmp_path, exported):
    assert folder_kind(tmp_path / "missing") == "empty" and folder_kind(tmp_path) == "empty"
    assert folder_kind(exported) == "model" and folder_kind(SHIPPED / "mnist") == "model"
    (tmp_path / "mine.txt").write_text("x")
    assert folder_kind(tmp_path) is None
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".lock").write_text("")
    assert folder_kind(run) == "run"  # a run stopped before its config: only a run's own names
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "fifo-run").mkdir()
    os.mkfifo(tmp_path / "fifo-run" / "config.json")  # a marker that is a FIFO is never read (it would block)
    assert folder_kind(tmp_path / "fifo-run") == "run"


def test_train_and_distill_never_write_into_a_model_folder(tmp_path, capsys, exported, mnist):
    """Finding 1: train/distill --output-dir onto an exported or shipped model folder overwrote its
    config.json (the model no longer loaded)."""
    before, shipped = snapshot(exported), snapshot(SHIPPED / "mnist")
    refused(capsys, ["train", *TRAIN, "--output-dir", exported], "holds a model folder")
    refused(capsys, ["train", *TRAIN, "--output-dir", SHIPPED / "mnist"], "inside the installed package")
    refused(capsys, ["distill", "--teacher", GOLDEN, "--pairs", "8", "--teacher-steps", "2", "--max-steps", "1",
                     "--no-progress", "--output-dir", exported], "holds a model folder")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    refused(capsys, ["train", *TRAIN, "--output-dir", tmp_path / "mine"], "not written by train or distill",
            "thesis.tex")
    assert snapshot(exported) == before and snapshot(SHIPPED / "mnist") == shipped
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["thesis.tex"]  # no .lock, no checkpoints/


def test_onnx_export_writes_only_its_own_folders(tmp_path, capsys, exported):
    """Finding 2: export --format onnx overwrote a user's model.onnx / plan.json and wrote into a
    shipped folder, the checkout root or another export."""
    pytest.importorskip("onnxruntime")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "model.onnx").write_bytes(b"my own network")
    (mine / "plan.json").write_text('{"my": "plan"}')
    before = snapshot(mine)
    base = ["export", "--format", "onnx", "--dtype", "fp32", "--checkpoint", GOLDEN, "--output"]
    refused(capsys, [*base, mine], "not written by export --format onnx")
    refused(capsys, [*base, exported], "holds a model folder")
    refused(capsys, [*base, SHIPPED / "mnist-fast"], "inside the installed package")
    refused(capsys, [*base, HERE.parent], "not written by export --format onnx")  # the checkout root
    assert snapshot(mine) == before
    ours = tmp_path / "onnx"
    assert main([str(a) for a in [*base, ours]]) == 0 and folder_kind(ours) == "onnx"
    assert main([str(a) for a in [*base, ours]]) == 0  # its own folder: rewritten
    (ours / "model.onnx").write_bytes(b"swapped by hand")  # not the network plan.json records
    refused(capsys, [*base, ours], "not the network plan.json records")
    assert (ours / "model.onnx").read_bytes() == b"swapped by hand"


def test_a_file_output_never_lands_in_the_package_or_a_model_folder(tmp_path, capsys, exported):
    for target in (SHIPPED / "mnist" / "samples.png", SHIPPED.parent / "grid.png", exported / "samples.png"):
        before = target.read_bytes() if target.exists() else None
        refused(capsys, ["sample", "--checkpoint", GOLDEN, "--steps", "2", "--num-images", "2", "--output", target],
                "write somewhere else")
        assert (target.read_bytes() if target.exists() else None) == before


def test_show_intermediate_writes_only_a_folder_of_grids(tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    refused(capsys, ["sample", "--checkpoint", GOLDEN, "--sampler", "ddim", "--steps", "2", "--num-images", "2",
                     "--output", tmp_path / "g.png", "--show-intermediate", tmp_path / "notes"], "todo.txt")
    assert not (tmp_path / "g.png").exists()


def test_check_folder_refuses_the_current_folder_for_a_swapped_kind(tmp_path, monkeypatch):
    """`web --output .` used to fail half-way with "Device or resource busy" (the current folder
    cannot be renamed aside); a folder that holds the current one would leave the shell in a
    deleted directory."""
    monkeypatch.chdir(tmp_path)
    for target in (".", str(tmp_path), str(tmp_path.parent)):
        with pytest.raises(ConfigError, match="the current folder"):
            check_folder(target, "site")
    with pytest.raises(ConfigError, match="is empty"):
        check_folder("", "run", "--output-dir")
    assert check_folder("sub", "site") == tmp_path / "sub"
    assert check_folder(".", "run", "--output-dir") == tmp_path  # a run writes in place: an empty folder is fine


def _fifo_command_ends(tmp_path, *args) -> subprocess.CompletedProcess:
    start = time.time()
    r = subprocess.run([sys.executable, "-m", "mnist_diffusion", *map(str, args)], capture_output=True, text=True,
                       timeout=120)
    assert time.time() - start < 120
    return r


@pytest.mark.system
def test_a_fifo_as_train_config_or_export_metrics_is_refused_not_read(tmp_path):
    """Finding 5: `train --config FIFO` and `export --metrics FIFO` blocked forever."""
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    for args in (["train", "--config", fifo, "--output-dir", tmp_path / "run", "--dry-run"],
                 ["export", "--checkpoint", GOLDEN, "--metrics", fifo, "--output", tmp_path / "m"]):
        r = _fifo_command_ends(tmp_path, *args)
        assert r.returncode == 2 and "not a regular file" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.system
def test_web_rebuild_keeps_the_users_files_and_writes_through_a_link(tmp_path, capsys):
    """Finding 3: a rebuild deleted files the user added to the site (a CNAME, an about.html); a
    symlinked --output was replaced by a directory and a stale .NAME.old-* left beside it."""
    pytest.importorskip("onnxruntime")
    from mnist_diffusion.website import find_runtime
    try:
        find_runtime()
    except ConfigError:
        pytest.skip("onnxruntime-web not installed here (npm ci --prefix web)")
    real = tmp_path / "real"
    link = tmp_path / "site"
    web = ["web", "--checkpoint", GOLDEN]
    assert main([*map(str, web), "--output", str(real)]) == 0
    (real / "CNAME").write_text("digits.example.org\n")
    (real / "extra").mkdir()
    (real / "extra" / "about.html").write_text("<p>mine</p>")
    link.symlink_to(real)
    assert main([*map(str, web), "--output", str(link)]) == 0
    out = capsys.readouterr().out
    assert "kept 2 files it did not write" in out
    assert link.is_symlink() and (link / "index.html").is_file()  # written through the link
    assert (real / "CNAME").read_text() == "digits.example.org\n"
    assert (real / "extra" / "about.html").read_text() == "<p>mine</p>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real", "site"]  # no .site.old-* or stage left
    assert "CNAME" not in json.loads((real / "site.json").read_text())["files"]
    # the page's own files are the build's: a hand edit of index.html is replaced, the user's kept
    (real / "index.html").write_text("edited")
    assert main([*map(str, web), "--output", str(real)]) == 0
    assert (real / "index.html").read_text() != "edited" and (real / "CNAME").exists()
    shutil.rmtree(real)


def test_web_outside_a_checkout_says_what_to_install(tmp_path, monkeypatch):
    """`web` run where no web/ folder exists (a pip-installed package) named `npm ci --prefix web`,
    which such a user has no folder for: it says what to install, at the pinned version, and how
    to pass it."""
    from mnist_diffusion import website
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(website, "REPO_RUNTIME", tmp_path / "no" / "web" / "node_modules" / "onnxruntime-web")
    with pytest.raises(ConfigError) as e:
        website.find_runtime()
    msg = str(e.value)
    assert f"npm install onnxruntime-web@{website.ORT_WEB_VERSION}" in msg and "--runtime" in msg
    assert "--prefix web" not in msg
