"""The tile geometry: grid-aligned origins, enough overlap, and blend weights that sum to one, never
touch an inexact pixel, and never vanish at the frame edge."""

from __future__ import annotations

import numpy as np
import pytest

from duplidog.core.tiling import (
    axis_plan,
    default_overlap,
    frame_padding,
    plan_tiles,
    tile_origins,
)


@pytest.mark.parametrize("length,tile,overlap,multiple", [
    (1024, 256, 40, 8), (1000, 96, 37, 4), (64, 64, 10, 16), (4100, 512, 130, 32), (48, 40, 31, 4),
])
def test_origins_are_aligned_cover_and_overlap(length, tile, overlap, multiple):
    length = -(-length // multiple) * multiple
    origins = tile_origins(length, tile, overlap, multiple)
    assert origins[0] == 0
    assert origins[-1] + min(tile, length) == length
    assert all(o % multiple == 0 for o in origins)
    assert all(b > a for a, b in zip(origins, origins[1:]))
    assert all(a + tile - b >= overlap for a, b in zip(origins, origins[1:]))


@pytest.mark.parametrize("visible,tile,reach,multiple,scale", [
    (563, 96, 14, 4, 1), (37, 64, 14, 4, 1), (2000, 128, 30, 8, 1), (300, 80, 9, 16, 2), (1, 48, 14, 4, 1),
])
def test_axis_weights_partition_unity_on_exact_pixels_only(visible, tile, reach, multiple, scale):
    padding = frame_padding(visible, visible, multiple, context=reach // 2)
    padded = visible + padding.top + padding.bottom
    overlap = default_overlap(reach, multiple)
    tile = tile // multiple * multiple
    tiles = axis_plan(visible, padding.top, padded, tile, overlap, reach, multiple, scale)
    total = np.zeros(visible * scale)
    for t in tiles:
        assert 0 <= t.keep_start < t.keep_stop <= visible * scale
        assert len(t.weight) == t.keep_stop - t.keep_start
        assert t.weight.min() > 0
        total[t.keep_start: t.keep_stop] += t.weight
        # Kept output pixels lie reach clear of the tile's edges (in padded output pixels), except at
        # the padded frame's own edge, which whole-frame and tiled runs share.
        out_start = scale * (t.origin - padding.top)
        out_stop = out_start + scale * min(tile, padded)
        if t.origin > 0:
            assert t.keep_start >= out_start + scale * reach
        if t.origin + min(tile, padded) < padded:
            assert t.keep_stop <= out_stop - scale * reach
        # Smooth: a raised-cosine ramp, no hard steps inside.
        if len(t.weight) > 1:
            assert np.abs(np.diff(t.weight)).max() < 0.5
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    # Never zero (nor faded) at the frame edge: the first and last pixels come from one tile at weight 1.
    assert total[0] == pytest.approx(1.0) and tiles[0].weight[0] == 1.0
    assert tiles[-1].weight[-1] == 1.0


def test_mirror_padding_matches_reflect_and_folds_when_wider_than_the_image():
    import torch

    from duplidog.core.mirror import mirror_index, mirror_pad

    cpu = torch.device("cpu")

    def indices(length, before, after):
        return mirror_index(length, before + length + after, cpu, before).numpy()

    np.testing.assert_array_equal(indices(10, 3, 4), np.pad(np.arange(10), (3, 4), mode="reflect"))
    for length in (2, 3, 5, 8, 37):
        for before, after in ((0, 0), (0, 1), (2, 7), (1, 11)):
            if max(before, after) < length:
                np.testing.assert_array_equal(indices(length, before, after),
                                              np.pad(np.arange(length), (before, after), mode="reflect"))
    wide = indices(5, 23, 17)
    assert len(wide) == 5 + 23 + 17
    assert wide.min() >= 0 and wide.max() <= 4
    np.testing.assert_array_equal(wide[23:28], np.arange(5))
    assert np.all(np.abs(np.diff(wide)) == 1)  # a mirror never jumps
    np.testing.assert_array_equal(indices(1, 3, 2), np.zeros(6, dtype=int))
    image = torch.arange(12.0).reshape(1, 1, 3, 4)
    np.testing.assert_array_equal(mirror_pad(image, 1, 2, 3, 0)[0, 0].numpy(),
                                  np.pad(image[0, 0].numpy(), ((1, 2), (3, 0)), mode="reflect"))


def test_frame_padding_reaches_the_grid_with_optional_context():
    p = frame_padding(563, 1000, 8)
    assert (p.top, p.bottom, p.left, p.right) == (0, 5, 0, 0)
    p = frame_padding(563, 1000, 8, context=14)
    assert p.top == p.left == 14
    h, w = p.padded_size(563, 1000)
    assert h % 8 == 0 and w % 8 == 0 and p.bottom >= 14 and p.right >= 14


def test_every_tile_and_overlap_plans_a_tile_too_small_enlarged_an_overlap_too_small_raised():
    # Issue 12.3: every tile size the schema accepts runs (it used to fail at run time).
    raised = plan_tiles(500, 500, 128, reach=14, multiple=4, overlap=20)
    assert raised.overlap == 29 and raised.reach == 14  # twice the reach plus one: no inexact pixel blended
    enlarged = plan_tiles(500, 500, 16, reach=14, multiple=4, overlap=40)
    assert enlarged.overlap == 40 and enlarged.tile_height == enlarged.tile_width == 44  # the overlap + a step
    grid = plan_tiles(500, 300, 128, reach=14, multiple=4, overlap=29)
    assert grid.tile_height == grid.tile_width == 128 and len(grid) == len(grid.rows) * len(grid.columns)
    for plan in (raised, enlarged, grid):  # each covers the frame once over
        for axis, length in ((plan.rows, 500), (plan.columns, 500 if plan is not grid else 300)):
            total = np.zeros(length)
            for tile in axis:
                total[tile.keep_start: tile.keep_stop] += tile.weight
            assert np.allclose(total, 1.0)


def test_tiles_on_a_finer_grid_than_the_padding():
    """Split tiling: the frame is padded to the whole network's grid, the tiles step on the finest level's."""
    grid = plan_tiles(100, 130, 40, reach=6, multiple=4, padding_multiple=16)
    assert grid.padding.padded_size(100, 130) == (112, 144)
    assert all(t.origin % 4 == 0 and t.size % 4 == 0 for t in grid.rows + grid.columns)
    assert any(t.origin % 16 for t in grid.rows + grid.columns)
