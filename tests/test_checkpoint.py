import os
import pickle
import random

import pytest
import torch

from mnist_diffusion import checkpoint as ckpt_io
from mnist_diffusion.checkpoint import CheckpointError


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/mnist-diffusion-pwned",))


def test_atomic_save_round_trip(tmp_path):
    obj = {"format": ckpt_io.FORMAT, "a": torch.arange(5), "step": 3, "config": {}, "model": {}}
    ckpt_io.atomic_save(obj, tmp_path / "x.pt")
    back = torch.load(tmp_path / "x.pt", weights_only=True)
    assert torch.equal(back["a"], obj["a"]) and back["step"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # no temp file left behind


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pt"
    ckpt_io.atomic_save({"v": 1}, target)
    before = target.read_bytes()

    def boom(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt_io.atomic_save({"v": 2}, target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = "/tmp/mnist-diffusion-pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    p = tmp_path / "evil.pt"
    with open(p, "wb") as f:
        pickle.dump({"format": ckpt_io.FORMAT, "x": _Evil()}, f)
    torch.save({"format": ckpt_io.FORMAT, "x": _Evil()}, tmp_path / "evil2.pt")
    for path in (p, tmp_path / "evil2.pt"):
        with pytest.raises(CheckpointError, match="refused|not a readable"):
            ckpt_io.load(path)
    assert not os.path.exists(marker)


# b".": a lone pickle STOP opcode, which the unpickler fails on with IndexError
@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b".", random.Random(0).randbytes(4096)])
def test_garbage_is_a_clear_error(tmp_path, content):
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.pt"):
        ckpt_io.load(p)


def test_truncated_checkpoint(tmp_path):
    p = tmp_path / "t.pt"
    ckpt_io.atomic_save({"format": ckpt_io.FORMAT, "model": {"w": torch.zeros(1000)}, "config": {}, "step": 1}, p)
    p.write_bytes(p.read_bytes()[:-500])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        ckpt_io.load(p)


def test_foreign_checkpoint(tmp_path):
    p = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, p)
    with pytest.raises(CheckpointError, match="not an mnist-diffusion checkpoint"):
        ckpt_io.load(p)


def test_missing_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        ckpt_io.load(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="directory"):
        ckpt_io.load(tmp_path)


@pytest.mark.system
def test_a_garbage_pickle_is_one_line_without_torchs_own_notes(tmp_path):
    """A pickle torch does not expect (protocol 4, no checkpoint inside) is one line naming the file,
    without torch's warning that asks to "please file an issue" (about torch, not the user's file)."""
    import subprocess
    import sys
    p = tmp_path / "g.pt"
    with open(p, "wb") as f:
        pickle.dump({"x": 1}, f, protocol=4)
    r = subprocess.run([sys.executable, "-m", "mnist_diffusion", "sample", "--checkpoint", str(p), "--output",
                        str(tmp_path / "x.png")], capture_output=True, text=True)
    assert r.returncode == 2 and "g.pt" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "file an issue" not in r.stderr, r.stderr


def test_a_mismatch_names_the_setting_that_differs():
    """A class-count mismatch used to suggest --base-dim; the message names what differs."""
    from mnist_diffusion.config import ModelConfig
    from mnist_diffusion.models import build_model
    small = dict(name="unet", base_dim=8, channel_mults=(1, 2), num_res_blocks=1)
    ten = build_model(ModelConfig(**small, num_classes=10), 50).state_dict()
    with pytest.raises(CheckpointError, match="weights are for 10 classes, the config says 5"):
        ckpt_io.load_state(build_model(ModelConfig(**small, num_classes=5), 50), ten, "m")
    with pytest.raises(CheckpointError, match="base width"):
        ckpt_io.load_state(build_model(ModelConfig(**{**small, "base_dim": 16}, num_classes=10), 50), ten, "m")
