"""Training: losses, data order, resume, signals, budgets and the saved model, on a tiny real shot.

The shot is ingested and pooled with the real stages (``tests/trainshot.py``); the network is a real
MSRN cut down to a few hundred parameters, so every ``train`` call takes a second or two on the CPU.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from duplidog.core.card import read_card
from duplidog.core.layout import list_checkpoints
from duplidog.errors import DuplidogError
from duplidog.train import checkpoint as ckpt
from duplidog.train.data import DeviceBatches, EpochPlan, StreamedBatches, dihedral
from duplidog.train.losses import LossMix, TERMS, downsample_to, ms_ssim
from duplidog.train.monitor import ConvergenceMeter
from duplidog.train.schedule import lr_factor

from shotdata import DEVICES
from trainshot import build_tiny_shot, final_state, with_train

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shot(tmp_path_factory):
    return build_tiny_shot(tmp_path_factory.mktemp("trainshot"))


def run(shot, work: Path, **train):
    from duplidog.train import train as train_fn

    return train_fn(shot["pool"], shot["plan"], shot["manifest"], work / "model", work / "train",
                    with_train(shot["config"], **train))


# -- losses ------------------------------------------------------------------------------------------------

def fake_vgg_weights(path: Path) -> Path:
    """A file shaped like torchvision's VGG19 weights (features only, random values)."""
    import torchvision

    with torch.device("meta"):
        features = torchvision.models.vgg19().features
    generator = torch.Generator().manual_seed(0)
    state = {f"features.{k}": torch.randn(v.shape, generator=generator) * 0.02 for k, v in features.state_dict().items()}
    torch.save(state, path)
    return path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("term", sorted(TERMS))
def test_each_loss_is_finite_with_gradients(term, device, tmp_path):
    vgg = str(fake_vgg_weights(tmp_path / "vgg19.pth")) if term == "vgg" else ""
    mix = LossMix({term: 1.0}, border=2, vgg19_weights=vgg, logits=term == "bce").to(device)  # bce: on logits
    generator = torch.Generator().manual_seed(1)
    channels = 1 if term == "dice" else 3  # dice: mattes only, which the source's channel count tells
    source = torch.rand(2, 3, 32, 32, generator=generator).to(device) if term == "dice" else None
    target = torch.rand(2, channels, 32, 32, generator=generator).to(device)
    fine = (target + 0.1 * torch.randn(2, channels, 32, 32, generator=generator).to(device)).requires_grad_()
    coarse = torch.rand(2, channels, 16, 16, generator=generator).to(device).requires_grad_()
    total, parts = mix([coarse, fine], target, input_size=32, source=source)
    assert torch.isfinite(total) and total.item() > 0
    total.backward()
    for output in (coarse, fine):
        assert output.grad is not None and torch.isfinite(output.grad).all() and output.grad.abs().sum() > 0
    assert set(parts) == {term}


def test_the_squared_term_is_the_weighted_mean_squared_error():
    from duplidog.train.losses import squared_loss

    target = torch.zeros(1, 3, 4, 4)
    prediction = target.clone()
    prediction[..., 0, 0] = 0.5  # one pixel half painted out
    weights = torch.ones(1, 1, 4, 4)
    weights[..., 0, 0] = 31.0  # as change_weights marks a changed pixel
    assert squared_loss(prediction, target).item() == pytest.approx(0.25 / 16)
    assert squared_loss(prediction, target, weights).item() == pytest.approx(31 * 0.25 / (31 + 15))


def test_dice_scores_a_mattes_overlap_and_leaves_other_networks_alone():
    from duplidog.train.losses import dice_loss

    matte = torch.zeros(1, 1, 16, 16)
    matte[..., 4:12, 4:12] = 1.0
    assert dice_loss(matte, matte).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(1.0 - matte, matte).item() > 0.95  # no overlap at all
    half = matte.clone()
    half[..., 8:12, :] = 0.0
    assert 0.2 < dice_loss(half, matte).item() < 0.5
    mix = LossMix({"charbonnier": 1.0, "dice": 1.0}, border=0)
    rgb = torch.rand(1, 3, 16, 16)
    _, parts = mix([rgb * 0.5], rgb, input_size=16, source=rgb)
    assert parts["dice"] == 0.0 and parts["charbonnier"].item() > 0  # a colour fix is not a matte
    _, parts = mix([half], matte, input_size=16, source=rgb)
    assert parts["dice"].item() == pytest.approx(dice_loss(half, matte).item())


def test_border_is_excluded_from_the_loss():
    border = 3
    target = torch.rand(2, 3, 16, 16)
    fine = target.clone()
    fine[..., :border, :] = 10.0  # garbage in the context border only
    fine[..., :, -border:] = -10.0
    coarse = downsample_to(target, (8, 8)).clone()
    coarse[..., :1, :] = 5.0  # the border at half resolution is ceil(3 / 2) = 2 pixels
    mix = LossMix({"l1": 1.0, "gradient": 1.0, "ms_ssim": 1.0, "frequency": 1.0}, border=border)
    total, _ = mix([coarse, fine], target, input_size=16)
    assert total.item() == pytest.approx(0.0, abs=1e-6)
    fine[..., border, border] += 1.0  # one pixel just inside the border counts
    total, parts = mix([coarse, fine], target, input_size=16)
    assert parts["l1"].item() > 0 and total.item() > 0


def test_pyramid_targets_are_averaged_like_the_network():
    from duplidog.model import build_model

    model = build_model("msrn", "small", 3, 3, levels=3, stages=1, width=4, depth=0)
    target = torch.rand(1, 3, 32, 32)
    outputs = model(target, all_levels=True)
    assert [tuple(o.shape[-2:]) for o in outputs] == [(8, 8), (16, 16), (32, 32)]
    # The network's own pyramid of its input: 2x2 means per level.
    expected = torch.nn.functional.avg_pool2d(torch.nn.functional.avg_pool2d(target, 2), 2)
    assert torch.allclose(downsample_to(target, (8, 8)), expected, atol=1e-6)


def test_ms_ssim_is_one_for_identical_images_and_drops_with_noise():
    x = torch.rand(1, 3, 64, 64)
    assert ms_ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert ms_ssim(x, x + 0.2 * torch.randn_like(x)).item() < 0.9


def test_vgg_absent_is_a_clear_error(shot, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    losses = {**shot["config"]["train"]["losses"], "vgg": 0.1}
    with pytest.raises(DuplidogError, match="vgg19-dcbb9e9d.pth.*train.vgg19_weights"):
        run(shot, tmp_path, losses=losses)
    with pytest.raises(DuplidogError, match=str(tmp_path / "nowhere.pth")):
        run(shot, tmp_path, losses=losses, vgg19_weights=str(tmp_path / "nowhere.pth"))


# -- schedule, convergence, data order ---------------------------------------------------------------------

def test_curves_take_their_own_step_without_weight_decay_and_span_the_pool():
    from duplidog.model import build_model
    from duplidog.train.data import value_range
    from duplidog.train.setup import parameter_groups

    model = build_model(preset="small")
    weights, curves = parameter_groups(model, 1e-3, 1e-4, 10.0)
    assert curves["params"] == [model.colour.curves.values]
    assert curves["lr"] == pytest.approx(1e-2) and curves["weight_decay"] == 0.0 and weights["weight_decay"] == 1e-4
    assert len(weights["params"]) + 1 == len(list(model.parameters()))
    import zarr

    values = np.linspace(-0.1, 2.0, 6 * 3 * 4 * 4, dtype=np.float32).reshape(6, 3, 4, 4)
    group = zarr.group(zarr.storage.MemoryStore())
    group.create_array("source", data=values, chunks=(1, 3, 4, 4))
    low, high = value_range(group, max_tiles=6)  # an older pool: the range of its tiles
    assert low < -0.1 and high > 2.0 and high - low < 2.1 * 1.05
    group.attrs["source_range"] = [0.0, 4.0]  # a pool that recorded its range is not read again
    low, high = value_range(group)
    assert low < 0.0 and high > 4.0 and high - low < 4.0 * 1.05


def test_schedule_warms_up_then_decays_to_the_floor():
    factors = [lr_factor(s, 100, 10, 1e-3) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert lr_factor(100, 100, 10, 1e-3) * 1e-3 == pytest.approx(1e-7)


def test_a_time_budget_anneals_the_schedule_by_its_deadline():
    from duplidog.train.schedule import TrainingClock, TrainingSchedule

    clock = TrainingClock()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = TrainingSchedule(optimizer, total_steps=1000, warmup_steps=0, min_lr=1e-7, budget_seconds=100.0,
                                clock=clock)
    clock.resume(50.0)  # half the budget gone after a handful of steps: the decay follows the time
    schedule.step()
    assert schedule.get_last_lr()[0] == pytest.approx(0.5e-3, rel=0.01)
    clock.resume(100.0)
    schedule.step()
    assert schedule.get_last_lr()[0] == pytest.approx(1e-7, rel=0.01)
    state = schedule.state_dict()
    resumed = TrainingSchedule(optimizer, 1000, 0, 1e-7, 100.0, TrainingClock())
    resumed.load_state_dict(state)  # a resumed run continues the clock, not a fresh budget
    assert resumed.steps == 2 and resumed.clock() >= 100.0 and resumed.get_last_lr()[0] == pytest.approx(1e-7, rel=0.01)


def test_change_weights_count_the_changed_pixels_more_and_leave_uniform_fixes_alone():
    from duplidog.train.losses import change_weights

    source = torch.zeros(1, 3, 16, 16)
    target = source.clone()
    target[..., 8, 8] = 1.0  # a one-pixel paint-out
    weights = change_weights(source, target, extra=10.0, threshold=0.01, radius=2)
    assert weights[0, 0, 8, 8] == 11.0 and weights[0, 0, 6, 10] == 11.0 and weights[0, 0, 5, 8] == 1.0
    prediction = source.clone()  # leaves the object in
    plain, _ = LossMix({"l1": 1.0}, border=0, coarse_level_weight=0.0)(prediction, target, 16, source)
    weighted, _ = LossMix({"l1": 1.0}, border=0, coarse_level_weight=0.0, change_weight=10.0)(
        prediction, target, 16, source)
    assert weighted.item() > 5 * plain.item()
    graded = source + 0.5  # every pixel changes: the weighted mean is the plain one
    assert torch.allclose(change_weights(source, graded, 10.0, 0.01, 2), torch.full((1, 1, 16, 16), 11.0))
    matte = torch.zeros(1, 1, 16, 16)
    matte[..., 8:, :] = 1.0  # a matte's weight is on its edge
    edge = change_weights(source, matte, 10.0, 0.01, 1)
    assert edge[0, 0, 8, 3] == 11.0 and edge[0, 0, 2, 3] == 1.0 and edge[0, 0, 14, 3] == 1.0
    assert change_weights(source, target, 0.0, 0.01, 2) is None


def test_the_colour_path_learns_a_local_edit_only_from_the_pixels_it_leaves_alone():
    from duplidog.model import build_model
    from duplidog.train.losses import colour_weights

    source = torch.rand(2, 3, 16, 16)
    target = source.clone()
    target[0, :, 4:8, 4:8] = 0.0  # tile 0: a small paint-out
    target[1] = source[1] * 0.5  # tile 1: a grade, every pixel changes
    weights = colour_weights(source, target, threshold=0.01, radius=1)
    assert weights[0, 0, 5, 5] == 0 and weights[0, 0, 3, 3] == 0 and weights[0, 0, 12, 12] == 1
    assert torch.all(weights[1] == 1)
    assert torch.all(colour_weights(source, target[:, :1], 0.01, 1) == 1)  # a matte: every pixel

    model = build_model("msrn", "small", 3, 3, levels=2, stages=1, width=4, depth=1, colour_width=4, curve_knots=5)
    outputs, colour_output = model.training_outputs(source)
    assert torch.allclose(outputs[-1], model(source), atol=1e-6)  # the same sum as inference
    mix = LossMix({"charbonnier": 1.0}, border=0, colour_split=True)
    total, parts = mix(outputs, target, 16, source, colour_output)
    assert set(parts) == {"charbonnier", "colour"} and mix.names == ["charbonnier", "colour"]
    model.zero_grad()
    parts["charbonnier"].backward(retain_graph=True)  # the main loss does not reach the colour path
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.colour.parameters())
    parts["colour"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.colour.parameters())


def test_the_colour_fit_learns_a_grade_from_the_pools_untouched_pixels_within_its_time(tmp_path):
    import zarr

    from duplidog.model import build_model
    from duplidog.train.colour_fit import fit_colour_path, sample_pixels
    from duplidog.train.setup import parameter_groups

    generator = torch.Generator().manual_seed(0)
    source = torch.rand(6, 3, 24, 24, generator=generator)
    # A hue-dependent grade no curve per channel can do: where blue leads, it turns towards cyan.
    target = source.clone()
    blue_lead = (source[:, 2:3] - source[:, :2].max(1, keepdim=True).values).clamp(min=0)
    target[:, 1:2] += 0.8 * blue_lead
    target[:, 0:1] = target[:, 0:1] ** 1.5
    paint = torch.tensor([0.9, 0.05, 0.9]).view(3, 1, 1)
    source[0], target[0] = source[3] * 0.2 + 0.4, source[3] * 0.2 + 0.4  # tile 0: a paint-out on flat grey
    source[0, :, 10:13, 10:13] = paint.expand(3, 3, 3)  # the marker, painted out in the target
    group = zarr.open_group(str(tmp_path / "pool.zarr"), mode="w")
    group.create_array("source", data=source.numpy().astype(np.float16), chunks=(2, 3, 24, 24))
    group.create_array("target", data=target.numpy().astype(np.float16), chunks=(2, 3, 24, 24))

    pixels = sample_pixels(group, border=2, threshold=0.01, radius=4, seed=0)
    assert pixels.source.shape[0] == 5 * 20 * 20 + (20 * 20 - 11 * 11)  # borders out; the marker and 4 px around
    assert not torch.any((pixels.source - paint.view(1, 3).half().float()).abs().max(1).values < 1e-3)
    assert pixels.needs_fit and 0.5 < pixels.changed_share < 5 / 6
    local = sample_pixels(group, border=2, threshold=0.01, radius=4, seed=0, max_tiles=1)  # the paint-out tile
    assert local.changed_share == pytest.approx(9 / 400) and not local.needs_fit

    torch.manual_seed(0)
    model = build_model("msrn", "small", 3, 3, levels=2, stages=1, width=4, depth=1, colour_width=16, curve_knots=9)
    fit = fit_colour_path(model.colour, *pixels[:2], parameter_groups(model.colour, 3e-3, 0.0, 10.0), 800, seed=0)
    assert fit["steps"] == 800 and fit["error_after"] < 0.1 * fit["error_before"], fit

    ticks = iter(range(10**6))  # a clock that advances one second per reading: the fit's time runs out first
    cut = fit_colour_path(model.colour, *pixels[:2], parameter_groups(model.colour, 3e-3, 0.0, 10.0), 800, seed=0,
                          seconds=20, clock=lambda: float(next(ticks)))
    assert 10 <= cut["steps"] <= 20

    # A fit that will not be kept ends a quarter of the way in, once asked; one that will runs on.
    asked = []
    ended = fit_colour_path(model.colour, *pixels[:2], parameter_groups(model.colour, 3e-3, 0.0, 10.0), 800, seed=0,
                            give_up=lambda error: asked.append(error) or True)
    assert ended["gave_up"] and ended["steps"] == 200 and asked == [ended["error_after"]]
    kept = fit_colour_path(model.colour, *pixels[:2], parameter_groups(model.colour, 3e-3, 0.0, 10.0), 800, seed=0,
                           give_up=lambda error: False)
    assert not kept["gave_up"] and kept["steps"] == 800


def test_a_colour_fit_that_explains_little_of_the_change_is_undone_and_held(tmp_path):
    import zarr

    from duplidog.model import build_model
    from duplidog.train.colour_fit import colour_path_held
    from duplidog.train.ema import WeightAverage
    from duplidog.train.start import fit_colour_path_first

    generator = torch.Generator().manual_seed(0)
    clean = torch.rand(6, 3, 24, 24, generator=generator)
    fixes = {"grade": (clean, clean ** 1.8),  # every pixel's fix is a function of its colour
             "degrain": (clean + 0.1 * torch.randn(clean.shape, generator=generator), clean)}  # none is
    settings = {"colour_fit_lr": 3e-3, "curve_lr_scale": 10.0}
    held = {}
    for name, (source, target) in fixes.items():
        group = zarr.open_group(str(tmp_path / f"{name}.zarr"), mode="w")
        group.create_array("source", data=source.numpy().astype(np.float32), chunks=(2, 3, 24, 24))
        group.create_array("target", data=target.numpy().astype(np.float32), chunks=(2, 3, 24, 24))
        torch.manual_seed(0)
        model = build_model("msrn", "small", 3, 3, levels=2, stages=1, width=4, depth=1, colour_width=16,
                            curve_knots=9, curve_range=[-0.5, 1.5])
        before = {k: v.clone() for k, v in model.colour.state_dict().items()}
        ema = WeightAverage(model, 0.9)
        fit_colour_path_first(model, ema, group, 2, LossMix({"l1": 1.0}, border=2), settings, 400, 0, None,
                              time.monotonic)
        held[name] = colour_path_held(model)
        unchanged = all(torch.equal(before[k], v) for k, v in model.colour.state_dict().items())
        assert unchanged == held[name], name
        averaged = dict(ema.model.colour.state_dict())
        assert all(torch.equal(averaged[k], v) for k, v in model.colour.state_dict().items())
    assert held == {"grade": False, "degrain": True}


def test_a_validation_keyframe_holding_nan_is_refused_naming_its_file(tmp_path):
    from duplidog import imageio
    from duplidog.core.plan import read_manifest, read_plan
    from duplidog.train.validate import load_validation_frames

    tiny = build_tiny_shot(tmp_path)
    plan = read_plan(tiny["plan"])
    number = load_validation_frames(plan, tiny["manifest"])[0].frame
    rows = read_manifest(tiny["manifest"])
    target = str(rows[rows["frame"] == number]["target"].iloc[0])
    pixels = imageio.read_pixels(target)
    pixels[3, 4, 0] = np.nan
    imageio.write_pixels(target, pixels, imageio.read_info(target))
    with pytest.raises(DuplidogError, match=rf"{target}: 1 non-finite values \(1 NaN, 0 inf\)"):
        load_validation_frames(plan, tiny["manifest"])


def test_model_cards_and_summaries_are_standard_json_even_for_an_infinite_psnr(tmp_path):
    from duplidog import colour
    from duplidog.atomic import atomic_write_json
    from duplidog.core.card import CARD_NAME
    from duplidog.core.modelstore import save_model
    from duplidog.model import build_model

    card = save_model(tmp_path / "model", build_model(width=4, levels=2, stages=1, depth=1),
                      {"input_channels": ["R", "G", "B"], "output_channels": ["R", "G", "B"],
                       "colorspace": colour.describe("linear"),
                       "metrics": {"validation": {"psnr": float("inf"), "ssim": float("nan")}}})
    assert card.metrics == {"validation": {"psnr": None, "ssim": None}} and card.validation_psnr is None
    text = (tmp_path / "model" / CARD_NAME).read_text()
    assert "Infinity" not in text and "NaN" not in text
    json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    atomic_write_json(tmp_path / "summary.json", {"frames": [{"psnr": float("-inf")}]})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"frames": [{"psnr": None}]}


def test_convergence_status_follows_the_trend():
    def status(values):
        meter = ConvergenceMeter(window=20)
        for step, value in enumerate(values):
            meter.add(step, value)
        return meter.status()

    rng = np.random.default_rng(0)
    assert status([1.0 * 0.97**s for s in range(20)]) == "converging"
    assert status([0.5 * (1 + 0.01 * rng.standard_normal()) for _ in range(20)]) == "plateauing"
    assert status([0.5 * 1.05**s for s in range(20)]) == "diverging"
    assert status([0.5, float("nan"), 0.4, 0.3, 0.2]) == "diverging"


def test_epochs_draw_subsets_and_resume_needs_only_the_batch_number():
    plan = EpochPlan(pool_size=40, batch_size=4, epoch_fraction=0.5, seed=3)
    assert plan.batches_per_epoch == 5
    epoch0 = np.concatenate([plan.indices(b) for b in range(5)])
    assert len(set(epoch0.tolist())) == 20  # a subset, without repeats
    epoch1 = np.concatenate([plan.indices(b) for b in range(5, 10)])
    assert set(epoch0.tolist()) != set(epoch1.tolist())
    again = EpochPlan(pool_size=40, batch_size=4, epoch_fraction=0.5, seed=3)
    assert np.array_equal(again.indices(7), plan.indices(7))
    assert np.array_equal(again.augment_codes(7), plan.augment_codes(7))


def test_an_unset_batch_size_is_four_tiles_for_a_matte_or_a_whole_frame_fix_eight_for_a_local_one():
    from duplidog.train.setup import PoolShape, resolve_batch_size

    rgb = PoolShape(tiles=40, stacked_channels=3, tile_size=16, out_channels=3, target_size=16, temporal_frames=0,
                    border=3)
    matte = PoolShape(tiles=40, stacked_channels=3, tile_size=16, out_channels=1, target_size=16, temporal_frames=0,
                      border=3)
    assert resolve_batch_size({"batch_size": None}, rgb, whole_frame=False) == 8
    assert resolve_batch_size({"batch_size": None}, rgb, whole_frame=True) == 4
    assert resolve_batch_size({"batch_size": None}, matte, whole_frame=False) == 4
    assert resolve_batch_size({"batch_size": None}, matte, False, world_size=3) == 6
    assert resolve_batch_size({"batch_size": 5}, matte, False, world_size=3) == 5  # set: kept, and checked by Ranks


def test_a_whole_frame_fix_gets_a_small_network_half_the_depth_unless_the_settings_or_earlier_weights_say(shot):
    from duplidog.core.pool_store import open_pool
    from duplidog.train.setup import PoolShape, changes_most_pixels, network_overrides

    group = open_pool(shot["pool"])
    assert changes_most_pixels(group, PoolShape.of(group))  # the tiny shot grades every pixel

    def depth(model_settings, earlier=None, whole_frame=True):
        return network_overrides(model_settings, earlier or {}, group, whole_frame).get("depth")

    assert depth({"preset": "small"}) == 1
    assert depth({"preset": "small"}, whole_frame=False) is None  # a local fix: the preset's depth
    assert depth({"preset": "small", "overrides": {"depth": 3}}) == 3
    assert depth({"preset": "medium"}) is None  # measured on the small preset only
    assert depth({"preset": "small"}, earlier={"depth": 2, "norm": "batch"}) == 2  # its weights have two blocks


def test_a_local_fix_does_not_count_as_changing_most_pixels(tmp_path):
    from duplidog.core.pool_store import open_pool
    from duplidog.train.setup import PoolShape, changes_most_pixels

    local = build_tiny_shot(tmp_path, local_edit=True, edited_columns=8)  # a sixth of the frame
    group = open_pool(local["pool"])
    assert not changes_most_pixels(group, PoolShape.of(group))


def test_a_run_records_the_batch_size_and_depth_it_resolved(shot, tmp_path):
    run(shot, tmp_path, batch_size=None, steps=1, validate_every=0, checkpoint_every=1)
    assert json.loads(final_state(tmp_path)["config"])["train"]["batch_size"] == 4  # a grade: whole frame
    assert read_card(tmp_path / "model").network["depth"] == 1


def test_dihedral_codes_are_the_eight_symmetries():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    images = {tuple(dihedral(x, code).flatten().tolist()) for code in range(8)}
    assert len(images) == 8


def test_streamed_workers_and_device_copy_give_the_same_batches(shot):
    from duplidog.core.pool_store import open_pool

    group = open_pool(shot["pool"])
    plan = EpochPlan(group["source"].shape[0], 4, 0.5, seed=5)
    device = torch.device("cpu")
    in_memory = DeviceBatches(group, plan, device).batches(start=3)
    streamed_source = StreamedBatches(str(shot["pool"]), plan, device, num_workers=1, prefetch=2)
    streamed = streamed_source.batches(start=3)
    try:
        for _ in range(3):
            (a_src, a_tgt), (b_src, b_tgt) = next(in_memory), next(streamed)
            assert torch.equal(a_src, b_src) and torch.equal(a_tgt, b_tgt)
    finally:
        streamed_source.close()


# -- the loop ------------------------------------------------------------------------------------------------

def test_training_learns_and_saves_the_model_with_its_card(shot, tmp_path):
    result = run(shot, tmp_path, steps=60, validate_every=30, checkpoint_every=30)
    metrics = pd.read_csv(tmp_path / "train/metrics.csv")
    losses = metrics["loss"].dropna().to_numpy()
    assert losses[-10:].mean() < 0.6 * losses[:10].mean(), losses
    assert result["steps"] == 60 and result["stopped_by"] == "steps" and result["resumed_from"] is None
    assert result["validation_psnr"] > result["validation_psnr_identity"], result
    assert set(metrics["status"].dropna()) <= {"starting", "converging", "plateauing", "diverging"}
    assert metrics["val_psnr"].notna().sum() == 2  # at step 30 and at the end
    for name in ("loss.png", "contact_final.png", "contact_00000030.png"):
        assert (tmp_path / "train" / name).stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "train/tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"loss/total", "loss/charbonnier", "train/lr", "validation/psnr"} <= set(tags)
    assert "activations/stem/std" in tags and any(t.startswith("activations/head/") for t in tags)

    from duplidog.core.modelstore import load_model

    model, card = load_model(tmp_path / "model", "cpu")
    assert card.input_channels == ("R", "G", "B") and card.output_channels == ("R", "G", "B")
    assert card.colorspace["name"] == "log"
    assert card.steps == 60 and len(card.training["keyframe_fingerprint"]) == 64
    assert card.training["pool_fingerprint"] and card.validation_psnr == result["validation_psnr"]
    assert card.network["width"] == 8
    # Inference gives frames the context the tiles gave training; the curves span the pool's values.
    border = open_pool_attrs(shot["pool"])["border"]
    assert card.edge_context == border > 0 and model.edge_context == border
    assert card.network["curve_range"][0] < card.network["curve_range"][1]
    # The saved weights are the weight average of the final checkpoint.
    ema = final_state(tmp_path)["ema"]["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value.cpu(), ema[key])


def open_pool_attrs(path) -> dict:
    from duplidog.core.pool_store import open_pool

    return dict(open_pool(path).attrs)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_ten_steps_sigterm_and_ten_more_give_the_same_weights_as_twenty(shot, tmp_path, monkeypatch, signum):
    from duplidog.train import TrainingInterrupted
    from duplidog.train.monitor import TrainingMonitor

    run(shot, tmp_path / "straight", steps=20, checkpoint_every=0)
    straight = final_state(tmp_path / "straight")

    record = TrainingMonitor.step

    def record_then_sigterm(self, step, *args):
        record(self, step, *args)
        if step == 10:
            signal.raise_signal(signum)  # the real handler: finish the step, checkpoint, stop

    monkeypatch.setattr(TrainingMonitor, "step", record_then_sigterm)
    with pytest.raises(TrainingInterrupted, match=f"{signal.Signals(signum).name} at step 10"):
        run(shot, tmp_path / "resumed", steps=20, checkpoint_every=0)
    monkeypatch.undo()
    assert [s for s, _ in list_checkpoints(tmp_path / "resumed/train/checkpoints")] == [10]
    result = run(shot, tmp_path / "resumed", steps=20, checkpoint_every=0)
    assert result["resumed_from"] == 10 and result["steps"] == 20
    resumed = final_state(tmp_path / "resumed")
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for key, value in straight["ema"]["model"].items():
        assert torch.equal(value, resumed["ema"]["model"][key]), key
    assert torch.equal(straight["optimizer"]["state"][0]["exp_avg_sq"], resumed["optimizer"]["state"][0]["exp_avg_sq"])


def test_a_job_log_gets_plain_progress_lines_and_one_line_at_the_end(shot, tmp_path, caplog):
    caplog.set_level("INFO")
    result = run(shot, tmp_path, steps=20, progress=True, progress_every=5, validate_every=10)
    lines = [r.getMessage() for r in caplog.records]
    progress = [line for line in lines if line.startswith("train: step ")]
    assert [line.split()[2] for line in progress] == ["5/20", "10/20", "15/20", "20/20"], progress
    assert re.match(r"train: step 5/20 \(25 %\) loss [\d.e-]+ lr [\d.e+-]+, [\d.]+ steps/s, [\d.]+ min left, \w+",
                    progress[0]), progress[0]
    done = [line for line in lines if line.startswith("train: done:")]
    assert len(done) == 1 and "\n" not in done[0] and "{" not in done[0]
    assert re.match(r"train: done: 20 steps in [\d.]+ min \(stopped by steps\); validation PSNR [\d.]+ dB against "
                    r"[\d.]+ dB doing nothing; model \S+model$", done[0]), done[0]
    assert json.loads((tmp_path / "train/result.json").read_text())["steps"] == result["steps"] == 20


def test_changed_settings_start_from_scratch_and_a_changed_pool_fine_tunes(shot, tmp_path, caplog):
    work = tmp_path / "work"
    run(shot, work, steps=4, checkpoint_every=2, validate_every=0)
    caplog.set_level("INFO")
    other = build_tiny_shot(tmp_path / "other", pool_overrides={"tiles_per_keyframe": 20})
    shifted = dict(shot, pool=other["pool"])
    result = run(shifted, work, steps=4, checkpoint_every=2, validate_every=0)
    assert result["resumed_from"] is None and result["start"] == "fine-tune"
    assert "tile pool changed" in caplog.text
    assert (work / "train/checkpoints/superseded/step_00000004.pt").is_file()
    caplog.clear()
    result = run(shifted, work, steps=4, checkpoint_every=2, validate_every=0, lr=0.001)
    assert result["resumed_from"] is None and result["start"] == "fresh" and "train.lr" in caplog.text
    # An operational setting (how often to log) does not block resuming.
    result = run(shifted, work, steps=4, checkpoint_every=2, validate_every=0, lr=0.001, log_every=3)
    assert result["resumed_from"] == 4 and result["start"] == "resume"


def test_a_checkpoint_from_before_a_setting_existed_resumes_where_the_setting_keeps_its_old_meaning(shot, tmp_path):
    # model.scale and model.temporal_frames came after checkpoints existed: one written before them, whose
    # identity lacks them, is the network they default to, so an upgrade does not train from scratch.
    work = tmp_path / "work"
    run(shot, work, steps=4, checkpoint_every=2, validate_every=0)
    path = list_checkpoints(work / "train/checkpoints")[-1][1]
    state = ckpt.load_checkpoint(path)
    identity = json.loads(state["identity"])
    assert {"scale", "temporal_frames"} <= set(identity["model"])
    for key in ("scale", "temporal_frames"):
        del identity["model"][key]
    torch.save({**state, "identity": json.dumps(identity, sort_keys=True)}, path)
    assert run(shot, work, steps=6, checkpoint_every=2, validate_every=0)["start"] == "continue"
    upscaling = dict(shot, config={**shot["config"], "model": {**shot["config"]["model"], "scale": 2}})
    changed = ckpt.changed_settings(ckpt.with_added_settings(identity), ckpt.training_identity(upscaling["config"]))
    assert "model.scale" in changed and "model.temporal_frames" not in changed  # another value still counts


def first_losses(work: Path, count: int = 3) -> float:
    return float(pd.read_csv(work / "train/metrics.csv")["loss"].dropna().to_numpy()[:count].mean())


def test_new_keyframes_fine_tune_the_shots_model_unless_told_to_start_over(shot, tmp_path):
    run(shot, tmp_path / "work", steps=40, validate_every=0)
    other = build_tiny_shot(tmp_path / "other", pool_overrides={"tiles_per_keyframe": 20})
    shifted = dict(shot, pool=other["pool"])
    tuned = run(shifted, tmp_path / "work", steps=20, validate_every=0, checkpoint_every=0)
    assert tuned["start"] == "fine-tune" and tuned["steps"] == 20
    card = json.loads((tmp_path / "work/model/model.json").read_text())
    assert card["training"]["start"] == "fine-tune" and card["training"]["started_from"].endswith("step_00000040.pt")
    scratch = run(shifted, tmp_path / "scratch", steps=20, validate_every=0)
    assert first_losses(tmp_path / "work") < 0.5 * first_losses(tmp_path / "scratch")
    # A fine-tune killed before its first checkpoint resumes as a fine-tune, not from scratch.
    assert [s for s, _ in list_checkpoints(tmp_path / "work/train/checkpoints")][0] == 0
    again = run(shifted, tmp_path / "work", steps=20, validate_every=0, start_over=True)
    assert again["start"] == "fresh" and scratch["start"] == "fresh"


def test_raising_the_steps_trains_the_finished_model_further(shot, tmp_path):
    first = run(shot, tmp_path, steps=20, validate_every=0)
    finished = final_state(tmp_path)
    more = run(shot, tmp_path, steps=40, validate_every=0)
    assert more["start"] == "continue" and more["resumed_from"] == 20 and more["steps"] == 40
    lr = pd.read_csv(tmp_path / "train/metrics.csv").set_index("step")["lr"]
    # The extra steps warm up again to a fine-tune's peak and anneal to the floor, from the trained weights.
    base = float(shot["config"]["train"]["lr"]) * float(shot["config"]["train"]["finetune_lr_scale"])
    assert lr.loc[21:40].max() == pytest.approx(base, rel=0.05)
    assert lr.loc[40] < 0.01 * base and lr.loc[20] < 0.01 * base
    assert len(lr.loc[1:20]) == 20  # the first run's curve is kept
    assert more["loss"] <= 1.5 * first["loss"]
    state = final_state(tmp_path)
    assert state["scheduler"]["segment"][0] == 20 and finished["step"] == 20
    # Lowering them again is a new, shorter run.
    fewer = run(shot, tmp_path, steps=10, validate_every=0)
    assert fewer["start"] == "fresh" and fewer["steps"] == 10


def test_raising_max_minutes_trains_the_finished_model_further(shot, tmp_path):
    # Budgets of seconds, not fractions of one: the setup before the first step counts against them.
    first = run(shot, tmp_path, steps=None, max_minutes=0.04, validate_every=0)
    assert first["stopped_by"] == "max_minutes"
    more = run(shot, tmp_path, steps=None, max_minutes=0.08, validate_every=0)
    assert more["start"] == "continue" and more["resumed_from"] == first["steps"] < more["steps"]
    assert more["stopped_by"] == "max_minutes"


def test_init_from_the_shots_own_model_fine_tunes_it_whatever_changed(shot, tmp_path):
    run(shot, tmp_path, steps=40, validate_every=0)
    trained = final_state(tmp_path)["ema"]["model"]
    own = str(tmp_path / "model")
    for name in ("model.json", "model.safetensors"):  # as Snakemake removes a job's outputs first
        (tmp_path / "model" / name).unlink()
    result = run(shot, tmp_path, steps=20, validate_every=0, lr=0.002, init_from=own, checkpoint_every=0)
    assert result["start"] == "fine-tune"
    started = ckpt.load_checkpoint(list_checkpoints(tmp_path / "train/checkpoints")[0][1])
    assert started["step"] == 0
    for name, value in trained.items():
        if not name.startswith("colour."):  # the colour path is fitted to the pool again first
            assert torch.equal(started["model"][name], value), name
    # Without checkpoints (a first run with the setting in a template) it trains from scratch.
    fresh = run(shot, tmp_path / "new", steps=5, validate_every=0, init_from=str(tmp_path / "new/model"))
    assert fresh["start"] == "fresh"


def test_sigterm_checkpoints_and_a_rerun_resumes_within_max_minutes(shot, tmp_path):
    script = tmp_path / "job.py"
    # Streamed through a reading thread, from a script without a __main__ guard (as Snakemake runs it).
    config = with_train(shot["config"], steps=100000, checkpoint_every=0, validate_every=0,
                        data_on_device="never", num_workers=1)
    (tmp_path / "config.json").write_text(json.dumps(config))
    script.write_text(textwrap.dedent(f"""
        import json
        import torch
        torch.set_num_threads(1)
        from duplidog.logs import log_to
        log_to(None)
        from duplidog.train import train
        config = json.load(open({str(tmp_path / "config.json")!r}))
        train({str(shot["pool"])!r}, {str(shot["plan"])!r}, {str(shot["manifest"])!r},
              {str(tmp_path / "model")!r}, {str(tmp_path / "train")!r}, config)
    """))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = tmp_path / "train/metrics.csv"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if metrics.is_file() and len(metrics.read_text().splitlines()) > 3:
            break
        time.sleep(0.2)
    assert process.poll() is None, process.communicate()[0].decode()
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode != 0
    assert "stopped by SIGTERM" in output and "training data streamed" in output, output
    found = list_checkpoints(tmp_path / "train/checkpoints")
    assert len(found) == 1 and found[0][0] >= 3
    assert not (tmp_path / "model").exists()

    from duplidog.train import train

    result = train(shot["pool"], shot["plan"], shot["manifest"], tmp_path / "model", tmp_path / "train",
                   with_train(config, max_minutes=0.1))
    assert result["resumed_from"] == found[0][0]
    assert result["stopped_by"] == "max_minutes" and found[0][0] <= result["steps"] < 100000
    assert (tmp_path / "model/model.json").is_file()


@pytest.mark.parametrize("device", DEVICES)
def test_checkpoints_are_plain_data_and_pruned(shot, tmp_path, device):
    result = run(shot, tmp_path, steps=8, checkpoint_every=2, keep_checkpoints=2, validate_every=4, device=device)
    assert result["device"].startswith(device) and result["steps"] == 8
    steps = [s for s, _ in list_checkpoints(tmp_path / "train/checkpoints")]
    state = final_state(tmp_path)  # weights_only=True load
    best = state["best_step"]
    assert steps[-2:] == [6, 8] and set(steps) <= {6, 8, best}
    for key in ("model", "ema", "optimizer", "scaler", "scheduler", "rng", "data", "config", "pool_fingerprint"):
        assert key in state
    assert state["data"]["next_batch"] == 8


def test_warm_start_needs_the_same_network(shot, tmp_path):
    run(shot, tmp_path / "first", steps=2, validate_every=0)
    result = run(shot, tmp_path / "second", steps=2, validate_every=0, init_from=str(tmp_path / "first/model"))
    assert result["steps"] == 2
    wider = with_train(shot["config"], steps=2, validate_every=0, init_from=str(tmp_path / "first/model"))
    wider["model"]["overrides"] = {**wider["model"]["overrides"], "width": 12}
    from duplidog.train import train

    with pytest.raises(DuplidogError, match="does not fit"):
        train(shot["pool"], shot["plan"], shot["manifest"], tmp_path / "m3", tmp_path / "w3", wider)


def test_a_run_from_earlier_weights_keeps_their_normalisation(shot, tmp_path):
    # A model trained before the presets normalised their blocks has no batch-norm parameters; a run from
    # its weights keeps it plain (the card says so), as it keeps its output activation.
    plain = with_train(shot["config"], steps=2, validate_every=0)
    plain["model"]["overrides"] = {**plain["model"]["overrides"], "norm": "none"}
    from duplidog.train import train

    train(shot["pool"], shot["plan"], shot["manifest"], tmp_path / "plain/model", tmp_path / "plain/train", plain)
    result = run(shot, tmp_path / "warm", steps=2, validate_every=0, init_from=str(tmp_path / "plain/model"))
    assert result["steps"] == 2
    assert read_card(tmp_path / "warm/model").network["norm"] == "none"
    fresh = run(shot, tmp_path / "fresh", steps=2, validate_every=0)
    assert fresh["steps"] == 2 and read_card(tmp_path / "fresh/model").network["norm"] == "batch"


def test_a_matte_is_scored_by_cross_entropy_on_logits_and_by_the_other_terms_on_its_sigmoid():
    logits = torch.tensor([[[[4.0, -4.0], [0.0, 2.0]]]], requires_grad=True)
    target = torch.tensor([[[[1.0, 0.0], [0.5, 1.0]]]])
    mix = LossMix({"charbonnier": 1.0, "bce": 1.0}, border=0, logits=True)
    total, parts = mix([logits], target, 2)
    expected_bce = torch.nn.functional.binary_cross_entropy(torch.sigmoid(logits), target)
    assert torch.allclose(parts["bce"], expected_bce, atol=1e-6)
    expected_pixel = TERMS["charbonnier"](torch.sigmoid(logits), target, 1e-3)
    assert torch.allclose(parts["charbonnier"], expected_pixel, atol=1e-6)
    total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    # A network without logits does not use the term (its outputs may be any values).
    assert LossMix({"charbonnier": 1.0, "bce": 1.0}, border=0).names == ["charbonnier"]


def test_a_matte_gets_its_own_edge_weight():
    source = torch.zeros(1, 3, 16, 16)
    matte = torch.zeros(1, 1, 16, 16)
    matte[..., 4:12, 4:12] = 1.0
    prediction = torch.zeros(1, 1, 16, 16)  # wrong on the whole square: its edge pixels weigh more
    mix = LossMix({"l1": 1.0}, border=0, coarse_level_weight=0.0, change_weight=30.0, matte_edge_weight=0.0)
    plain, _ = mix([prediction], matte, 16, source)
    assert plain == pytest.approx(float(matte.mean()))  # a matte with no edge weight: the plain mean
    edged, _ = LossMix({"l1": 1.0}, border=0, coarse_level_weight=0.0, change_weight=0.0,
                       matte_edge_weight=10.0)([prediction], matte, 16, source)
    assert edged > plain


def test_a_cpu_trains_in_bf16_only_where_it_runs_bf16_natively_and_infers_in_fp32(monkeypatch):
    from duplidog.core import runtime

    cpu = torch.device("cpu")

    def train(setting):
        return runtime.choose_precision(cpu, setting, key="train.precision", reduced_on_cpu=True).name

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert train("auto") == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert train("auto") == "fp32"  # emulated bf16 is slower, not faster
    assert train("bf16") == "bf16"  # asked for, it is used
    with pytest.raises(DuplidogError, match="train.precision: fp16 training is not supported on the CPU"):
        train("fp16")
    for setting in ("auto", "bf16", "fp16", "fp32"):  # inference on the CPU: float32 whatever the setting
        assert runtime.choose_precision(cpu, setting, key="infer.precision", reduced_on_cpu=False).name == "fp32"
    with pytest.raises(DuplidogError, match="infer.precision: 'fp8' is not one of"):
        runtime.choose_precision(cpu, "fp8", key="infer.precision", reduced_on_cpu=False)


def test_the_contact_sheet_shows_each_panel_whatever_the_tensors_memory_layout(tmp_path):
    import OpenImageIO as oiio
    from duplidog.train.validate import PANEL_WIDTH, ValidationFrame, write_validation_sheet

    source = torch.full((1, 3, 32, 48), 0.25)
    target = torch.full((1, 3, 32, 48), 0.75)
    for name, result in (("plain", torch.full((1, 3, 32, 48), 0.5)),
                         ("channels_last", torch.full((1, 3, 32, 48), 0.5).to(memory_format=torch.channels_last))):
        sheet = write_validation_sheet(tmp_path / f"{name}.png", [ValidationFrame(1001, source, target)], [result],
                                       panel_width=PANEL_WIDTH, title="step 10")
        # The middle of each panel: plate, result, target (8-bit of 0.25, 0.5, 0.75), not the grey ground.
        middles = [sheet[sheet.shape[0] - 16, x + 24] for x in (0, 52, 104)]
        assert [int(m[1]) for m in middles] == [64, 128, 191], name
        assert oiio.ImageBuf(str(tmp_path / f"{name}.png")).spec().width == sheet.shape[1]
