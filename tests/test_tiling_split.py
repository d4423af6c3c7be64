"""Split tiling (issue 12.3): MSRN's coarse levels run once over the frame and only its finest level in
tiles, overlapping by the finest level's reach as measured on the frame. Tiny networks, small frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from duplidog.core.apply import REACH_THRESHOLD, apply_model, measure_tile_reach, plan_run
from duplidog.model import build_model
from duplidog.model.analysis import measure_tile_reach as measure_on_pictures

TINY = dict(width=4, depth=1, colour_width=4, curve_knots=5)


def tiny(seed=0, out_channels=3, **settings):
    """A tiny MSRN whose head is not scaled down (as a trained one's is not), so tiles have something to get wrong."""
    torch.manual_seed(seed)
    net = build_model(preset="small", out_channels=out_channels, **{**TINY, **settings}).eval()
    with torch.no_grad():
        net.head.weight.mul_(100.0)
    return net


def picture(height, width, channels=3, seed=0):
    """Smooth structure plus grain, 0..1 like a display-referred plate."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 6, height), torch.linspace(0, 9, width), indexing="ij")
    base = torch.stack([torch.sin(x + c) * torch.cos(y * (c + 1)) for c in range(channels)])[None] * 0.4 + 0.5
    return base + 0.05 * torch.randn(1, channels, height, width, generator=g)


@pytest.mark.parametrize("settings", [
    {}, {"out_channels": 1}, {"out_channels": 1, "output_activation": "sigmoid"}, {"recurrent": "none"},
    {"levels": 1}, {"out_channels": 1, "refine_levels": False}, {"guide_on_base": False},
])
def test_the_finest_pass_of_the_coarse_pass_is_the_network(settings):
    net = tiny(**settings)
    x = picture(48, 80, seed=1)
    with torch.no_grad():
        expected = net(x)
        parts = net.coarse_pass(x)
        split = net.finest_pass(parts)
    assert torch.allclose(split, expected, atol=1e-6, rtol=0), (split - expected).abs().max()
    if parts["hidden"] is not None:
        assert parts["hidden"].shape[-1] * net.finest_size_multiple == x.shape[-1]
    assert net.finest_size_multiple == 4
    assert net.reach_bound(1) < net.reach_bound() or net.levels == 1


def test_the_finest_levels_bound_is_a_one_level_networks_reach():
    net = tiny()
    one_level = build_model(preset="small", **{**TINY, "levels": 1})
    assert net.reach_bound(1) == one_level.reach_bound()


@pytest.mark.parametrize("out_channels,tile,ensemble,scale", [(3, 16, 1, 1), (3, 40, 2, 1), (1, 40, 1, 1), (3, 40, 1, 2)])
def test_split_tiles_equal_the_whole_frame_everywhere(out_channels, tile, ensemble, scale):
    net = tiny(out_channels=out_channels, output_activation="sigmoid" if out_channels == 1 else "none", scale=scale)
    image = picture(112, 176, seed=2)
    plan = plan_run(net, tuple(image.shape), tile, device="cpu")
    assert plan.split and plan.grid is not None and len(plan.grid) > 1
    whole = apply_model(net, image, tile="none", ensemble=ensemble)
    tiled = apply_model(net, image, tile=tile, ensemble=ensemble)  # the reach measured on this frame
    difference = (whole - tiled).abs()
    assert difference.max().item() <= 1e-3, f"worst at {divmod(int(difference.amax(1).argmax()), 176 * scale)}"
    for edge in (difference[..., 0, :], difference[..., -1, :], difference[..., :, 0], difference[..., :, -1]):
        assert edge.max().item() <= 1e-3
    if ensemble == 1:
        bound = apply_model(net, image, tile=tile, ensemble=1, tile_reach=int(np.ceil(net.reach_bound(1))))
        assert (whole - bound).abs().max().item() <= 1e-5  # with the analytic bound: exact to float rounding


def test_the_measured_reach_is_short_and_an_understated_one_is_caught():
    net = tiny()
    image = picture(112, 176, seed=3)
    reach = measure_tile_reach(net, image)
    assert reach is not None and 0 < reach < net.reach_bound(1)
    whole = apply_model(net, image, tile="none")
    assert (whole - apply_model(net, image, tile=48, tile_reach=reach)).abs().max().item() <= 1e-3
    # The comparison can fail: tiles that overlap by less than the reach blend inexact pixels.
    assert (whole - apply_model(net, image, tile=48, tile_reach=0)).abs().max().item() > 1e-3


def test_the_reach_is_where_the_windows_error_falls_below_the_threshold():
    net = tiny()
    probes = [picture(128, 128, seed=s) for s in range(2)]
    reach = measure_on_pictures(net, probes, REACH_THRESHOLD, window=64)
    stricter = measure_on_pictures(net, probes, REACH_THRESHOLD / 1000, window=64)
    assert reach is not None and stricter is not None and reach < stricter  # a weaker influence reaches further
    assert measure_on_pictures(net, probes, 0.0, window=64) is None  # rounding never settles at zero: unknown


def test_chunks_of_a_tiled_shot_tile_alike_and_the_summary_says_how(tmp_path):
    from duplidog import colour
    from duplidog.infer import infer_frames
    from duplidog.core.modelstore import save_model
    from shotdata import PLAN_FRAMES as FRAMES, write_plan_shot

    plan = write_plan_shot(tmp_path, size=(176, 112))
    frames_plan = json.loads(plan.read_text())
    frames_plan["colorspace"] = "display"
    plan.write_text(json.dumps(frames_plan))
    save_model(tmp_path / "model", tiny(), {"input_channels": ["R", "G", "B"], "output_channels": ["R", "G", "B"],
                                            "colorspace": colour.describe("display")})
    settings = {"tile": 40, "device": "cpu"}
    one = infer_frames(tmp_path / "model", plan, None, str(tmp_path / "one/o.%04d.exr"), settings)
    infer_frames(tmp_path / "model", plan, FRAMES[:2], str(tmp_path / "two/o.%04d.exr"), settings)
    last = infer_frames(tmp_path / "model", plan, FRAMES[2:], str(tmp_path / "two/o.%04d.exr"), settings)
    tiling = one["tiling"]
    assert tiling["split"] and tiling["reach_source"] == "measured" and tiling["tiles"] > 1
    assert last["tiling"] == tiling  # measured on the shot's first frame, not the chunk's
    from duplidog import imageio

    for frame in FRAMES:
        assert np.array_equal(imageio.read_pixels(tmp_path / f"one/o.{frame}.exr"),
                              imageio.read_pixels(tmp_path / f"two/o.{frame}.exr")), frame
