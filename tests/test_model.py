"""The network: shapes, gradients, shared weights, locality (tile == whole frame), reach, builders, export.

Tiny networks (width 4-8, 1-3 levels) on small random tensors keep this fast on two shared CPU cores;
the device is a parameter so the same checks run on a GPU where there is one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from duplidog.errors import DuplidogError
from duplidog.model import MODELS, PRESETS, build_from_config, build_model, count_parameters, macs_per_megapixel
from duplidog.model import blocks, msrn
from duplidog.model.analysis import measure_reach
from duplidog.model.blocks import downsample2x, upsample2x
from shotdata import DEVICES

torch.set_num_threads(2)

TINY = dict(width=4, depth=1, levels=2, stages=1, colour_width=4, curve_knots=5)


def bend_curves(model):
    """Give the colour path's curves values other than the identity, so every lookup matters."""
    with torch.no_grad():
        curves = model.colour.curves.values
        curves.add_(0.2 * torch.randn_like(curves))
    return model


def with_running_statistics(model):
    """A batch-normalised network's running statistics moved off their start (mean 0, variance 1) by a few
    training-mode passes, so eval mode applies a real scale and offset per channel; then eval mode."""
    if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        parameter = next(model.parameters())
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(3.0 * torch.rand(2, model.stacked_channels, 32, 32, device=parameter.device) - 1.0)
    return model.eval()


def tolerance(device: str) -> float:
    return 1e-5 if device == "cpu" else 1e-4


@pytest.fixture(autouse=True)
def exact_gpu_maths():
    """TF32 would make tile-vs-whole comparisons on a GPU differ by more than rounding."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [(3, 3), (3, 1), (4, 4), (1, 3)])
@pytest.mark.parametrize("size", [(16, 16), (8, 24)])
def test_output_shapes_for_channel_combinations(device, channels, size):
    cin, cout = channels
    torch.manual_seed(0)
    model = build_model(in_channels=cin, out_channels=cout, **TINY).to(device)
    x = torch.rand(2, cin, *size, device=device)
    y = model(x)
    assert y.shape == (2, cout, *size)
    levels = model(x, all_levels=True)
    assert [tuple(t.shape) for t in levels] == [(2, cout, size[0] // 2, size[1] // 2), (2, cout, *size)]
    assert torch.equal(levels[-1], y)
    assert model.residual == (cin == cout)


def test_three_levels_come_coarse_to_fine():
    model = build_model(**{**TINY, "levels": 3})
    outputs = model(torch.rand(1, 3, 32, 16), all_levels=True)
    assert [tuple(t.shape[-2:]) for t in outputs] == [(8, 4), (16, 8), (32, 16)]


def test_sizes_not_a_multiple_are_refused():
    model = build_model(**TINY)
    assert model.size_multiple == 4
    with pytest.raises(ValueError, match="size_multiple"):
        model(torch.rand(1, 3, 16, 18))


@pytest.mark.parametrize("block", ["res", "msrb"])
def test_every_parameter_gets_a_gradient(block):
    torch.manual_seed(0)
    model = build_model(block=block, **TINY)
    outputs = model(torch.rand(2, 3, 16, 16), all_levels=True)
    sum(o.square().mean() for o in outputs).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_residual_network_starts_near_the_identity():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    residual = build_model(**TINY)
    assert (residual(x) - x).abs().mean() < 0.05 * x.abs().mean()
    direct = build_model(in_channels=3, out_channels=1, **TINY)
    assert not direct.residual and direct(x).shape == (2, 1, 32, 32)
    forced = build_model(residual=False, **TINY)
    assert (forced(x) - x).abs().mean() > 0.2 * x.abs().mean()  # the check above can fail


def test_curves_start_as_the_identity_learn_a_tone_curve_and_extend_their_end_segments():
    torch.manual_seed(0)
    curves = blocks.ChannelCurves(2, knots=17, low=0.0, high=1.0)
    x = torch.rand(4096, 2, 1, 1)
    assert torch.allclose(curves(x), x, atol=1e-6)
    wanted = lambda v: torch.cat([v[:, :1] ** 2, 0.5 * v[:, 1:] + 0.1], 1)  # noqa: E731
    optimizer = torch.optim.Adam(curves.parameters(), lr=0.02)
    for step in range(300):
        optimizer.param_groups[0]["lr"] = 0.02 * (1 - step / 300)
        optimizer.zero_grad()
        (curves(x) - wanted(x)).abs().mean().backward()
        optimizer.step()
    probe = torch.linspace(0, 1, 101).view(-1, 1, 1, 1).repeat(1, 2, 1, 1)
    with torch.no_grad():
        assert (curves(probe) - wanted(probe)).abs().max() < 5e-3
        outside = torch.tensor([-0.5, 2.0]).view(-1, 1, 1, 1).repeat(1, 2, 1, 1)
        # Past the last knot the line through the last two goes on: 1 + 2 * (2 - 1) for v ** 2 ...
        assert torch.allclose(curves(outside)[:, 1, 0, 0], 0.5 * outside[:, 1, 0, 0] + 0.1, atol=1e-2)
        assert abs(float(curves(outside)[1, 0]) - (1.0 + (1 - (15 / 16) ** 2) * 16 * 1.0)) < 0.05


def test_the_colour_path_keeps_the_inputs_memory_format():
    # Training feeds channels_last batches: an NCHW base from the colour path would turn every later
    # convolution NCHW (a step took half as long again on the CPU).
    network = build_model(**TINY)
    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert network.colour(x).is_contiguous(memory_format=torch.channels_last)
        assert all(level.is_contiguous(memory_format=torch.channels_last) for level in network(x, all_levels=True))
        plain = torch.rand(2, 3, 32, 32)
        assert torch.allclose(network(plain), network(plain.contiguous(memory_format=torch.channels_last)), atol=1e-6)


def test_the_colour_path_carries_a_residual_network_input_and_adds_no_reach():
    torch.manual_seed(0)
    plain = build_model(**{**TINY, "colour_width": 0, "curve_knots": 0})
    coloured = build_model(**TINY)
    assert plain.colour is None and coloured.colour is not None and coloured.reach == plain.reach
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert (coloured.colour(x) - x).abs().max() < 0.01  # curves and matrix start as the identity
    with pytest.raises(DuplidogError, match="curve_range"):
        build_model(**TINY, curve_range=[1.0, 0.0])


def test_one_set_of_weights_serves_every_level():
    counts = {levels: count_parameters(build_model(**{**TINY, "levels": levels})) for levels in (1, 2, 3)}
    assert len(set(counts.values())) == 1, counts
    model = build_model(**{**TINY, "levels": 3})
    calls = []
    model.stem.register_forward_hook(lambda module, inputs, output: calls.append(tuple(output.shape[-2:])))
    model(torch.rand(1, 3, 16, 16))
    assert calls == [(4, 4), (8, 8), (16, 16)]  # the same stem ran at every level, coarse to fine
    assert not any(re.search(r"level", name) for name, _ in model.named_parameters())


def run_crop(model, frame, top, left, size):
    crop = frame[:, :, top:top + size, left:left + size]
    return model(crop)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("settings", [
    dict(width=4, depth=1, levels=2, stages=1, block="res"),
    dict(width=4, depth=1, levels=3, stages=1, block="msrb"),
    dict(width=4, depth=1, levels=2, stages=1, recurrent="none", in_channels=4, out_channels=1),
    dict(width=4, depth=1, levels=2, stages=1, in_channels=3, out_channels=1, norm="batch", block="msrb"),
])
def test_a_tile_gives_the_whole_frame_values_beyond_reach(device, settings):
    torch.manual_seed(0)
    model = with_running_statistics(build_model(**settings).to(device))
    with torch.no_grad():  # undo the head's near-zero start, so the spatial path's output (and a misaligned
        model.head.weight.mul_(100.0)  # tile's error) is large enough to see
    m, reach = model.size_multiple, model.reach
    size = m * -(-(2 * reach + 3 * m) // m)  # room for `reach` on both sides of a non-empty interior
    frame = torch.rand(1, model.in_channels, size + 4 * m, size + 6 * m, device=device)
    with torch.no_grad():
        whole = model(frame)
        top, left = 2 * m, 3 * m  # an aligned origin, away from every frame edge
        tile = run_crop(model, frame, top, left, size)
        inner = slice(reach + 1, size - reach - 1)
        expected = whole[:, :, top:top + size, left:left + size][:, :, inner, inner]
        assert (tile[:, :, inner, inner] - expected).abs().max() <= tolerance(device)
        # The same check catches a misaligned tile: the pyramid's 2x2 averages then straddle other pixels.
        shifted = run_crop(model, frame, top + 1, left, size)
        moved = whole[:, :, top + 1:top + 1 + size, left:left + size][:, :, inner, inner]
        assert (shifted[:, :, inner, inner] - moved).abs().max() > 1e-4


@pytest.mark.parametrize("settings", [
    dict(width=8, depth=1, levels=2, stages=1, block="res"),
    dict(width=8, depth=1, levels=2, stages=1, block="msrb", kernel_size=5),
    # A matte's logits: the sigmoid adds no reach, but around 0.5 it rounds away the far changes, which
    # are tiny even in float64.
    dict(width=8, depth=1, levels=3, stages=1, in_channels=3, out_channels=1, output_activation="none"),
    dict(width=8, depth=0, levels=1, stages=1, recurrent="none"),
])
def test_reach_is_an_upper_bound_and_not_loose(settings):
    torch.manual_seed(0)
    model = build_model(**settings)
    measured = measure_reach(model)
    assert measured <= model.reach
    assert measured >= 0.7 * model.reach, (measured, model.reach)


def test_measure_reach_sees_a_one_convolution_network():
    class OneConv(nn.Module):
        in_channels, size_multiple, reach = 1, 1, 3

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 7, padding=3)

        def forward(self, x):
            return self.conv(x)

    assert measure_reach(OneConv()) == 3


BANNED_LAYERS = (nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
                 nn.LayerNorm, nn.LocalResponseNorm, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
                 nn.MultiheadAttention, nn.Transformer)


@pytest.mark.parametrize("preset", sorted(PRESETS["msrn"]))
@pytest.mark.parametrize("out_channels", [3, 1])
def test_no_layer_looks_at_the_whole_image(preset, out_channels):
    """Batch norm is allowed only as what eval mode makes it: running statistics, a fixed per-channel affine."""
    model = build_model(preset=preset, in_channels=3, out_channels=out_channels)
    banned = [name for name, module in model.named_modules() if isinstance(module, BANNED_LAYERS)]
    assert banned == []
    norms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    assert all(type(norm) is nn.BatchNorm2d and norm.track_running_stats for norm in norms)
    assert norms  # every preset's blocks are normalised


def test_no_pixel_sees_the_frame_beyond_its_reach():
    """No whole-image statistic anywhere in the network (a mean, a sum, a norm over space, global pooling,
    attention), for every preset's blocks and colour path, upscaling, neighbour frames and a matte:
    rewriting the frame beyond a pixel's reach leaves that pixel's output as it was."""
    variants = {"plain": {}, "scale 2": dict(scale=2), "temporal 1": dict(temporal_frames=1),
                "matte": dict(out_channels=1, output_activation="sigmoid")}
    for preset in sorted(PRESETS["msrn"]):
        for name, variant in variants.items():
            settings = dict(width=4, depth=1, levels=2, stages=1, **variant)  # a small encoder-decoder
            out_channels = settings.pop("out_channels", 3)
            torch.manual_seed(0)
            model = with_running_statistics(build_model(preset=preset, in_channels=3, out_channels=out_channels,
                                                        **settings))
            with torch.no_grad():  # undo the head's near-zero start, so the spatial path's output shows
                model.head.weight.mul_(100.0)
            m, reach, scale = model.size_multiple, model.reach, model.scale
            margin = m * -(-(reach + 2 * m) // m)
            kept, cut = margin, 2 * margin  # columns [0, kept) keep their outputs when those from ``cut`` on change
            frame = torch.rand(1, model.stacked_channels, 2 * m, cut + 4 * m)
            rewritten = frame.clone()
            rewritten[..., cut:] = torch.rand_like(rewritten[..., cut:]) * 20.0 - 5.0
            with torch.no_grad():
                before, after = model(frame), model(rewritten)
            assert before.shape[-1] == frame.shape[-1] * scale, (preset, name)
            unchanged = (after[..., :kept * scale] - before[..., :kept * scale]).abs().max().item()
            changed = (after[..., cut * scale:] - before[..., cut * scale:]).abs().max().item()
            assert unchanged <= 1e-5 and changed > 1e-3, (preset, name, unchanged, changed)


def test_config_is_json_and_rebuilds_the_same_network():
    torch.manual_seed(0)
    model = build_model(preset="small", in_channels=4, out_channels=1, width=6, levels=2).eval()
    config = json.loads(json.dumps(model.config))
    assert config["arch"] == "msrn" and config["preset"] == "small"
    assert config["width"] == 6 and config["levels"] == 2 and config["in_channels"] == 4
    rebuilt = build_from_config(config).eval()
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.config == model.config
    x = torch.rand(1, 4, 16, 16)
    assert torch.equal(rebuilt(x), model(x))
    assert config["guide_on_base"] is True
    legacy = {name: value for name, value in config.items() if name != "guide_on_base"}
    assert build_from_config(legacy).guide_on_base is False  # a card saved before the setting existed


@pytest.mark.parametrize("guide_on_base", [True, False])
def test_the_finest_level_sees_the_colour_path_sharp_when_guided_on_its_base(guide_on_base):
    torch.manual_seed(0)
    model = build_model(preset="small", width=4, depth=1, levels=2, stages=1, guide_on_base=guide_on_base).eval()
    with torch.no_grad():
        model.head.weight.zero_()  # no spatial correction: every level's prediction is its base
        model.colour.mlp[-1].weight.normal_(0.0, 0.5)  # a colour path far from the identity
    seen = []
    model.stem.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0][:, 3:]))
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        colour = model.colour(x)
        model(x)
    sharp = torch.allclose(seen[-1], colour, atol=1e-6)
    assert sharp == guide_on_base
    if not guide_on_base:  # the coarser level's prediction, upsampled
        assert torch.allclose(seen[-1], upsample2x(downsample2x(colour)), atol=1e-5)


def test_the_colour_path_trains_in_float32_under_reduced_precision_autocast():
    torch.manual_seed(0)
    model = build_model(preset="small", width=4, depth=1, levels=2, stages=1)
    with torch.no_grad():
        model.colour.mlp[-1].weight.normal_(0.0, 0.5)  # a colour path far from the identity
    x = torch.rand(2, 3, 16, 16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        outputs, colour = model.training_outputs(x)
    assert colour.dtype == torch.float32 and outputs[-1].dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(colour, model.colour(x), atol=1e-6)  # what inference computes


@pytest.mark.parametrize("refine_levels", [True, False])
def test_a_matte_networks_finer_levels_refine_the_coarser_prediction(refine_levels):
    model = build_model(preset="small", in_channels=3, out_channels=1, width=4, depth=1, levels=3, stages=1,
                        refine_levels=refine_levels).eval()
    with torch.no_grad():
        model.head.weight.zero_()  # every level's own output is the head's bias
        model.head.bias.fill_(0.25)
        levels = model(torch.rand(1, 3, 16, 16), all_levels=True, logits=True)  # a sigmoid's logits add up
    expected = [0.25, 0.5, 0.75] if refine_levels else [0.25, 0.25, 0.25]
    assert [float(level.mean()) for level in levels] == pytest.approx(expected)
    assert build_from_config({k: v for k, v in model.config.items() if k != "refine_levels"}).refine_levels is False


def test_a_matte_network_has_no_colour_path_unless_asked():
    matte = build_model(preset="small", in_channels=3, out_channels=1, width=4, levels=2)
    assert matte.colour is None and matte.config["colour_width"] == 0 and matte.config["curve_knots"] == 0
    assert build_from_config(matte.config).colour is None  # the card rebuilds it so
    asked = build_model(preset="small", in_channels=3, out_channels=1, width=4, levels=2, colour_width=8)
    assert asked.colour is not None
    assert build_model(preset="small", in_channels=3, out_channels=3, width=4, levels=2).colour is not None


def test_networks_are_batch_normalised_a_matte_has_a_sigmoid_output_and_older_cards_keep_what_they_had():
    matte = build_model(preset="small", in_channels=3, out_channels=1, width=4, levels=2)
    assert matte.config["norm"] == "batch" and matte.config["output_activation"] == "sigmoid" and matte.sigmoid_output
    colour_fix = build_model(preset="small", in_channels=3, out_channels=3, width=4, levels=2)
    assert colour_fix.config["norm"] == "batch" and colour_fix.config["output_activation"] == "none"
    rebuilt = build_from_config(matte.config)
    rebuilt.load_state_dict(matte.state_dict())  # running statistics travel with the weights
    assert rebuilt.sigmoid_output
    before = {k: v for k, v in matte.config.items() if k not in ("norm", "output_activation")}  # an older card
    plain = build_from_config(before)
    assert plain.config["norm"] == "none" and not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert not plain.sigmoid_output
    assert build_model(preset="small", in_channels=3, out_channels=1, width=4, levels=2, norm="none").config["norm"] == "none"
    with pytest.raises(DuplidogError, match="norm"):
        build_model(preset="small", in_channels=3, out_channels=1, norm="group")


def test_each_level_keeps_statistics_of_its_own_and_the_scripted_network_reads_them():
    torch.manual_seed(0)
    model = with_running_statistics(build_model(preset="small", in_channels=3, out_channels=1, width=4, depth=1,
                                                levels=3, stages=1))
    norm = model.encoder[0].blocks[0].norm1
    assert isinstance(norm, blocks.LevelBatchNorm) and len(norm.statistics) == 3
    means = [level.running_mean for level in norm.statistics]
    assert not torch.allclose(means[0], means[2])  # the finest level's features are not the coarsest's
    other = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        expected = model(other)
        assert (torch.jit.script(model)(other) - expected).abs().max() < 1e-6
        assert (model.finest_pass(model.coarse_pass(other)) - expected).abs().max() < 1e-5


def test_builders_name_bad_settings():
    with pytest.raises(DuplidogError, match="architecture 'unet'"):
        build_model(arch="unet")
    with pytest.raises(DuplidogError, match="preset 'huge'"):
        build_model(preset="huge")
    with pytest.raises(DuplidogError, match="widht"):
        build_model(widht=8)
    with pytest.raises(DuplidogError, match="odd"):
        build_model(kernel_size=4)
    with pytest.raises(DuplidogError, match="architecture"):
        build_from_config({"arch": "nope"})
    assert MODELS["msrn"] is msrn.MSRN


def test_presets_grow_towards_copycat_scale():
    sizes = {p: build_model(preset=p) for p in ("small", "medium", "large")}
    params = {p: count_parameters(m) for p, m in sizes.items()}
    assert params["small"] < params["medium"] < params["large"]
    assert 100_000 < params["small"] < 1_000_000
    assert 5_000_000 < params["large"] < 9_000_000  # CopyCat's SRN template: ~6.9 M
    macs = macs_per_megapixel(sizes["large"], side=32)
    assert 0.8e12 < macs < 1.6e12  # CopyCat's SRN template: ~1.27 TMAC per megapixel


def test_macs_count_a_known_convolution():
    class OneConv(nn.Module):
        in_channels, size_multiple = 2, 1

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 5, 3, padding=1)

        def forward(self, x):
            return self.conv(x)

    assert macs_per_megapixel(OneConv()) == pytest.approx(1e6 * 2 * 5 * 9)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated, yet Nuke still reads it
def test_traced_and_scripted_networks_keep_height_and_width_dynamic():
    torch.manual_seed(0)
    model = bend_curves(build_model(**TINY)).eval()
    other = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        expected = model(other)
        traced = torch.jit.trace(model, torch.rand(1, 3, 16, 16))
        assert (traced(other) - expected).abs().max() < 1e-6
        scripted = torch.jit.script(model)
        assert (scripted(other) - expected).abs().max() < 1e-6
        assert len(scripted(other, True)) == model.levels


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_onnx_export_keeps_height_and_width_dynamic(tmp_path: Path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = bend_curves(build_model(**TINY)).eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (torch.rand(1, 3, 16, 16),), str(path), opset_version=17, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {2: "h", 3: "w"}, "y": {2: "h", 3: "w"}},
                      dynamo=False)
    other = torch.rand(1, 3, 24, 40)
    result = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": other.numpy()})[0]
    with torch.no_grad():
        assert abs(result - model(other).numpy()).max() < 1e-5


def test_a_sigmoid_matte_network_gives_logits_to_training_and_a_matte_to_everyone_else():
    matte = build_model(preset="small", in_channels=3, out_channels=1, width=4, levels=2, output_activation="sigmoid")
    x = torch.rand(2, 3, 16, 16)
    logits = matte(x, all_levels=True, logits=True)
    outputs = matte(x, all_levels=True)
    for raw, value in zip(logits, outputs):
        assert torch.allclose(torch.sigmoid(raw), value)
    assert torch.allclose(matte(x), outputs[-1])
    assert float(matte(x).min()) > 0 and float(matte(x).max()) < 1
    rebuilt = build_from_config(matte.config)  # the card keeps the activation
    rebuilt.load_state_dict(matte.state_dict())
    assert torch.allclose(rebuilt(x), matte(x))
    scripted = torch.jit.script(matte)  # Nuke's export runs the sigmoid too
    assert torch.allclose(scripted(x), matte(x), atol=1e-6)
    with pytest.raises(DuplidogError, match="output_activation"):
        build_model(preset="small", in_channels=3, out_channels=1, output_activation="softmax")
    with pytest.raises(DuplidogError, match="residual"):
        build_model(preset="small", in_channels=3, out_channels=3, residual=True, output_activation="sigmoid")
