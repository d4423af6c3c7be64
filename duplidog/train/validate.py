"""Validation: the held-out keyframes, whole frame, through the same tiled inference as production.

Training sees tiles; the shot is judged on frames. So validation runs each validation keyframe
through ``duplidog.core.apply.apply_model`` -- the production code path with its padding, tiling and
blending -- and compares with the artist's fixed frame. Metrics are computed in the working space
(where the network's values live, roughly 0..1 for every colour space), with a peak of 1.0:

* ``psnr``: 10 log10(1 / MSE) over all pixels and channels;
* ``ssim``: mean SSIM with an 11-pixel Gaussian window;
* ``psnr_identity``: the PSNR of doing nothing (source against target) when they have the same
  channels: the model should beat it, and the gap is what the training bought.

A temporal model's frames are read with their neighbours stacked (``duplidog.temporal``), as the pool
and inference stack them; the scores, doing nothing and the pictures use the keyframe's own channels.

A contact sheet PNG shows, per validation frame, source | result | target | difference (|result -
target| x 4), as an 8-bit preview of the working-space values (clipped to 0..1 for display only).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from duplidog import temporal
from duplidog.core.plan import Plan
from duplidog.core.previews import DIFFERENCE_GAIN, psnr, thumbnail, view_transform, write_contact_sheet
from duplidog.errors import DuplidogError
from duplidog.train.losses import ssim

log = logging.getLogger(__name__)

PANEL_WIDTH = 384  # contact sheet panels are scaled down to at most this many pixels across


@dataclass
class ValidationFrame:
    frame: int
    source: torch.Tensor  # (1, Cin, H, W) float32 working space, CPU; a temporal model's: Cin x (2N + 1)
    target: torch.Tensor  # (1, Cout, H, W)
    #: The plan's working space; an OpenColorIO one makes the contact sheet go through its default view.
    space: object = None
    #: The plate's channels (the first of ``source``, the keyframe's own); 0: all of them.
    channels: int = 0

    @property
    def plate(self) -> torch.Tensor:
        """The keyframe's own plate channels (without a temporal model's neighbour frames)."""
        return self.source if not self.channels else temporal.centre(self.source, self.channels)


def validation_frame_numbers(plan: Plan, limit: int) -> List[int]:
    """The plan's validation keyframes, or (none held out) its training keyframes, at most ``limit``
    of them spread evenly."""
    frames = list(plan.validation_frames or plan.train_frames or plan.keyframes)
    if limit > 0 and len(frames) > limit:
        picks = np.linspace(0, len(frames) - 1, limit).round().astype(int)
        frames = [frames[i] for i in sorted(set(picks))]
    return frames


def load_validation_frames(plan: Plan, manifest_path: str | Path, limit: int = 4) -> List[ValidationFrame]:
    """Read and encode the validation keyframes named by the plan, using the manifest's paths."""
    from duplidog import colour, imageio
    from duplidog.core.plan import read_manifest
    from duplidog.sequence import FramePattern

    manifest = read_manifest(manifest_path)
    rows = {int(r["frame"]): r for _, r in manifest.iterrows()}
    space = plan.colorspace
    n = plan.temporal_frames
    pattern = FramePattern(plan.source)
    policy = plan.nonfinite

    def plate(path: str) -> np.ndarray:
        pixels = imageio.check_finite(imageio.read_pixels(path, plan.input_channels), path, policy)
        return plan.to_working(pixels, plan.input_channels, "plate", path)

    frames = []
    for number in validation_frame_numbers(plan, limit):
        row = rows.get(int(number))
        if row is None or not str(row.get("target", "")):
            raise DuplidogError(f"{manifest_path}: validation keyframe {number} has no source/target row")
        # The same policy (ingest.nonfinite) as the pool's keyframes: a NaN here would make every score NaN.
        source = plate(row["source"])
        if n:  # the keyframe's neighbours, from the plate
            source = temporal.stacked_frame(int(number), n, plan.ends,
                                            lambda f: source if f == int(number) else plate(pattern.path(f)))
        target = imageio.check_finite(imageio.read_pixels(row["target"], plan.output_channels), row["target"], policy)
        target = plan.to_working(target, plan.output_channels, "target", row["target"])
        names = temporal.stacked_names(plan.input_channels, n)
        frames.append(ValidationFrame(int(number), _to_tensor(colour.encode(source, space, names)),
                                      _to_tensor(colour.encode(target, space, plan.output_channels)), space,
                                      len(plan.input_channels) if n else 0))
    return frames


def _to_tensor(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0).contiguous()


def _infer_arguments(settings: dict) -> dict:
    """The keys of the ``infer`` settings that ``apply_model`` takes (tile, overlap, batch size...)."""
    from duplidog.core.apply import apply_model

    accepted = set(inspect.signature(apply_model).parameters) - {"model", "image", "device"}
    arguments = {key: value for key, value in (settings or {}).items() if key in accepted and value is not None}
    # Validation follows the network as it learns; averaging flipped copies would multiply its cost.
    return {**arguments, "ensemble": 1}


@torch.no_grad()
def validate(model: torch.nn.Module, frames: Sequence[ValidationFrame], infer_settings: dict) -> Dict[str, object]:
    """Run every frame through ``apply_model``; mean PSNR/SSIM and the per-frame results."""
    from duplidog.core.apply import apply_model

    arguments = _infer_arguments(infer_settings)
    results, psnrs, ssims, identity = [], [], [], []
    for item in frames:
        output = apply_model(model, item.source, **arguments)
        results.append(output)
        psnrs.append(psnr(output, item.target))
        ssims.append(float(ssim(output.float(), item.target.float()).item()))
        plate = item.plate
        if plate.shape == item.target.shape:
            identity.append(psnr(plate, item.target))
        elif plate.shape[:2] == item.target.shape[:2]:  # upscaling: doing nothing is a bicubic resize
            plain = F.interpolate(plate, size=tuple(item.target.shape[-2:]), mode="bicubic",
                                  align_corners=False)
            identity.append(psnr(plain, item.target))
    metrics: Dict[str, object] = {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims))}
    if identity and len(identity) == len(frames):
        metrics["psnr_identity"] = float(np.mean(identity))
    metrics["frames"] = {str(f.frame): {"psnr": p, "ssim": s} for f, p, s in zip(frames, psnrs, ssims)}
    metrics["_results"] = results
    return metrics


def _preview(x: torch.Tensor, width: int, space: object = None) -> np.ndarray:
    """(1, C, H, W) working values -> (h, w, 3) in 0..1, at most ``width`` across: grey for one channel,
    the first three else. The working values of a scene-referred ``space`` (``ocio.picture_space``) with
    three or more channels are decoded and shown through the config's default display and view, as
    assemble shows the delivery; others (and ``space`` None: a difference) as they are."""
    from duplidog import colour, ocio

    pixels = np.ascontiguousarray(x[0, :3].detach().float().permute(1, 2, 0).cpu().numpy())
    shown_space: object = "display"
    if space is not None and pixels.shape[2] >= 3:
        ws = colour.as_space(space)
        if ws.name != "display" and ocio.picture_space(ws):
            pixels, shown_space = colour.decode(pixels, ws), ws
    return thumbnail(view_transform(pixels, shown_space), width)


def write_validation_sheet(path: Path, frames: Sequence[ValidationFrame], results: Sequence[torch.Tensor],
                           panel_width: int = PANEL_WIDTH, title: str = "") -> np.ndarray:
    """The training contact sheet: plate | result | target | difference, one row per validation frame,
    headed by its frame (and ``title``, e.g. the step, on the first). Returns the picture (H, W, 3)
    uint8, for TensorBoard."""
    labels = ("plate", "result", "target", f"difference x{DIFFERENCE_GAIN:g}")
    rows = []
    for index, (item, result) in enumerate(zip(frames, results)):
        panels = [_preview(item.plate, panel_width, item.space), _preview(result, panel_width, item.space),
                  _preview(item.target, panel_width, item.space),
                  _preview((result - item.target).abs() * DIFFERENCE_GAIN, panel_width)]
        heading = f"frame {item.frame}{', ' + title if title and index == 0 else ''}"
        rows.append((heading, list(zip(labels, panels))))
    return write_contact_sheet(path, rows)
