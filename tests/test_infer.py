"""apply_model: tiled output equals whole-frame output everywhere (edges and corners included), and the
frame-level runner moves only tiles to the device, never clamps, and restores the network's mode."""

from __future__ import annotations

import pytest
import torch

from duplidog.errors import DuplidogError
from duplidog.infer.runner import apply_model, plan_run
from standin_model import TinyPyramid

torch.set_num_threads(2)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
    ["mps"] if torch.backends.mps.is_available() else []
)


@pytest.fixture(scope="module")
def net():
    return TinyPyramid(3, 3, width=4).eval()


def frame(height, width, channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    # Scene-like values: mostly 0..1, with some well above 1 and some negative, to catch any clamp.
    return torch.randn(1, channels, height, width, generator=g) * 2.0 + 0.5


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("height,width,tile", [
    (563, 1000, 128), (563, 1000, 200), (2000, 37, 64), (2000, 37, 100), (97, 131, 48), (5, 3, 48),
])
def test_tiled_equals_whole_frame_everywhere(net, device, height, width, tile):
    image = frame(height, width)
    whole = apply_model(net, image, tile="none", device=device, precision="fp32")
    tiled = apply_model(net, image, tile=tile, device=device, precision="fp32")
    assert whole.shape == tiled.shape == (1, 3, height, width)
    assert whole.device.type == tiled.device.type == "cpu" and tiled.dtype == torch.float32
    difference = (whole - tiled).abs()
    assert difference.max().item() <= 1e-3, f"worst at {divmod(int(difference.amax(1).argmax()), width)}"
    # The frame's border rows and columns in particular (where a Hann window would fade to zero).
    for edge in (difference[..., 0, :], difference[..., -1, :], difference[..., :, 0], difference[..., :, -1]):
        assert edge.max().item() <= 1e-3
    net.to("cpu")


def test_the_exactness_test_catches_an_understated_reach():
    """With the reach understated, tile seams blend inexact pixels: the comparison above must notice."""
    liar = TinyPyramid(3, 3, width=4).eval()
    true_reach = liar.reach
    image = frame(300, 300, seed=3)
    whole = apply_model(liar, image, tile="none")
    liar.reach = 2
    tiled = apply_model(liar, image, tile=32, overlap=8)
    assert (whole - tiled).abs().max().item() > 1e-3
    liar.reach = true_reach


def test_nothing_is_clamped_and_output_channels_follow_the_model():
    matte_net = TinyPyramid(3, 1, width=4).eval()
    image = frame(90, 70) * 100.0  # scene-linear highlights far above 1
    out = apply_model(matte_net, image, tile=48)
    assert out.shape == (1, 1, 90, 70)
    assert out.max().item() > 1.0 and out.min().item() < 0.0


def test_auto_runs_whole_frame_within_the_cpu_budget_and_tiles_beyond_it(net):
    image = frame(301, 517)
    small = plan_run(net, tuple(image.shape), "auto", cpu_pixel_budget=10_000_000)
    assert small.grid is None
    tight = plan_run(net, tuple(image.shape), "auto", cpu_pixel_budget=20_000, batch_size=4)
    assert tight.grid is not None and len(tight.grid) > 1
    assert tight.grid.tile_height * tight.grid.tile_width * tight.batch_size <= 20_000 or tight.batch_size == 1
    whole = apply_model(net, image, tile="none")
    auto = apply_model(net, image, tile="auto", cpu_pixel_budget=20_000)
    assert (whole - auto).abs().max().item() <= 1e-3


def test_training_mode_is_restored_and_gradients_are_not_recorded(net):
    net.train()
    out = apply_model(net, frame(40, 40), tile=48)
    assert net.training and not out.requires_grad
    net.eval()


def test_bad_arguments_are_clear(net):
    with pytest.raises(DuplidogError, match="infer.tile"):
        apply_model(net, frame(40, 40), tile="huge")
    with pytest.raises(DuplidogError, match="infer.precision"):
        apply_model(net, frame(40, 40), precision="int8")
    with pytest.raises(ValueError, match=r"\(1, C, H, W\)"):
        apply_model(net, torch.zeros(3, 40, 40))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_reduced_precision_on_gpu_stays_close_to_fp32(net):
    image = frame(563, 1000)
    reference = apply_model(net, image, tile="none", precision="fp32", device="cpu")
    for tile in ("none", 128):
        fast = apply_model(net, image, tile=tile, precision="auto", device="cuda")
        assert fast.device.type == "cpu"
        assert (fast - reference).abs().max().item() < 0.1
    net.to("cpu")
