import io

import pytest
import torch

from mnist_diffusion.config import ModelConfig
from mnist_diffusion.models import available, build_model, count_parameters


@pytest.mark.parametrize("name", sorted(available()))
@pytest.mark.parametrize("batch", [1, 3, 5])
def test_shapes_for_odd_batches(name, batch):
    model = build_model(ModelConfig(name=name, base_dim=16, channel_mults=(1, 2, 2), num_res_blocks=1))
    x = torch.randn(batch, 1, 28, 28)
    t = torch.randint(0, 1000, (batch,))
    assert model(x, t).shape == (batch, 1, 28, 28)


@pytest.mark.parametrize("name", sorted(available()))
def test_conditional_models_use_labels(name):
    model = build_model(ModelConfig(name=name, base_dim=16, channel_mults=(1, 2), num_res_blocks=1, num_classes=10))
    for p in model.parameters():  # zero-initialised output layers would hide the label's effect
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([1, 2, 3])
    a = model(x, t, torch.tensor([0, 1, 2]))
    b = model(x, t, torch.tensor([5, 6, 7]))
    null = model(x, t)  # no label = the null token
    assert a.shape == (3, 1, 28, 28)
    assert not torch.allclose(a, b)
    assert torch.allclose(null, model(x, t, torch.full((3,), 10)))


@pytest.mark.parametrize("name", sorted(available()))
def test_state_dict_round_trip(name):
    cfg = ModelConfig(name=name, base_dim=16, channel_mults=(1, 2), num_res_blocks=1)
    a = build_model(cfg)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = build_model(cfg)
    b.load_state_dict(torch.load(buf, weights_only=True))
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3, 700])
    for p in a.parameters():
        torch.nn.init.normal_(p, std=0.02)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert torch.equal(a(x, t), b(x, t))


@pytest.mark.parametrize("mults", [(1,), (1, 2), (1, 2, 2), (1, 2, 2, 2)])
def test_patch_network_at_every_depth(mults):
    """unet_p2 starts at 14x14: its levels are 14, 7, 4, 2 and the upsampling meets each skip's size."""
    model = build_model(ModelConfig(name="unet_p2", base_dim=8, channel_mults=mults, num_res_blocks=1))
    sizes = []
    hook = lambda m, i, o: sizes.append(o.shape[-1])  # noqa: E731
    for blocks in model.down:
        blocks[0].register_forward_hook(hook)
    assert model(torch.randn(2, 1, 28, 28), torch.tensor([0, 999])).shape == (2, 1, 28, 28)
    assert sizes == [14, 7, 4, 2][:len(mults)]


def test_patch_network_output_pixels_come_from_their_own_channels():
    """The last layer's 4 channels at (i, j) become the 2x2 pixels at (2i..2i+1, 2j..2j+1) in raster
    order, the inverse of the stem's unshuffle (a bias per channel shows where each one lands)."""
    model = build_model(ModelConfig(name="unet_p2", base_dim=8, channel_mults=(1,), num_res_blocks=1))
    with torch.no_grad():
        model.conv_out.bias.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))  # weights stay zero: the output is the bias
    out = model(torch.randn(1, 1, 28, 28), torch.tensor([5]))[0, 0]
    assert torch.equal(out[:2, :2], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert torch.equal(out, out[:2, :2].repeat(14, 14))


def test_decoder_blocks_and_block_norms_cut_the_up_path_and_the_norms():
    """decoder_blocks k: each level's up path has k blocks, reading the level's k deepest skips; block_norms 1:
    one GroupNorm per residual block. The default network keeps its parameter names (checkpoints load)."""
    from mnist_diffusion.config import ConfigError
    cfg = ModelConfig(name="unet_attn", base_dim=8, channel_mults=(1, 2, 2), num_res_blocks=1, num_classes=10)
    full = build_model(cfg)
    assert [len(b) for b in full.up] == [2, 2, 2] and "up.0.1.norm2.weight" in full.state_dict()
    thin = build_model(ModelConfig(**{**cfg.__dict__, "decoder_blocks": 1, "block_norms": 1}))
    assert [len(b) for b in thin.up] == [1, 1, 1]
    norms = lambda m: sum(isinstance(x, torch.nn.GroupNorm) for x in m.modules())  # noqa: E731
    blocks = lambda m: sum(len(b) for b in (*m.down, *m.up)) + 2  # noqa: E731  (+ the two middle blocks)
    assert norms(full) == 2 * blocks(full) + 2 and norms(thin) == blocks(thin) + 2  # + attention's and the output's
    x, t, y = torch.randn(2, 1, 28, 28), torch.tensor([3, 700]), torch.tensor([1, 2])
    assert thin(x, t, y).shape == (2, 1, 28, 28)
    # each level's one block reads the level's deepest skip (its down block's output) beside h from below:
    # 16 + 16 channels at 7x7, 16 (upsampled) + 8 at 28x28
    assert thin.up[0][0].conv1.in_channels == 16 + 16 and thin.up[-1][0].conv1.in_channels == 16 + 8
    with pytest.raises(ConfigError, match="decoder_blocks 3: a level has only num_res_blocks"):
        ModelConfig(**{**cfg.__dict__, "decoder_blocks": 3}).validate()


def test_size_grows_with_base_dim():
    small = count_parameters(build_model(ModelConfig(base_dim=16)))
    big = count_parameters(build_model(ModelConfig(base_dim=32)))
    assert 3.5 < big / small < 4.5  # conv weights scale with channels squared


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model"):
        build_model(ModelConfig(name="resnet9000"))
