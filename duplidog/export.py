"""Exports of a trained model for compositing packages, each checked against duplidog's own inference.

Two targets, one contract: the host passes scene values and gets scene values back. Everything
duplidog's inference does around the network travels inside the exported file -- the working-space
shaper (``duplidog.colour``: encode before, decode after), the mirror padding of the frame to the
network's ``size_multiple`` (bottom and right, the same ``duplidog.core.mirror`` inference pads with) and the
crop back to ``scale`` times the input size -- so the file works for any height and width and nobody
has to rebuild the pre- and post-processing in a gizmo.

- ``to="nuke"``: a TorchScript file (``.pt``) for Nuke's CatFileCreator, which turns it into a
  ``.cat`` for the Inference node, and beside it a ``.nk`` with both nodes set up
  (``duplidog.nuke_script``; which Nuke can load the file is said there and in the result). ``forward`` takes one 1xCxHxW tensor (scene-linear for a linear
  model: values above 1 and below 0 are fine) and returns 1xC'x(sH)x(sW). It is *scripted*, not
  traced, so H and W stay free; tensors made inside follow the input's device and dtype, as Nuke's
  "Use GPU" and "Optimize for Speed and Memory" (half precision) require. The card is stored in the
  file as the extra file ``duplidog_card.json``.
- ``to="flame"``: ONNX (opset 17, dynamic H and W) for Flame's Inference node, plus the JSON sidecar
  of the same name that tells the node its inputs, outputs, channels and scale. Exported with the
  ``torch.export``-based exporter (``dynamo=True``), which keeps H and W symbolic; the card is stored
  in the ONNX metadata (``duplidog_card``).

The sidecar follows Autodesk's "Inference Builder" page (Flame 2025): ``ModelDescription`` with
``MinimumVersion``, ``Name``, ``Description``, ``SupportsSceneLinear``, ``KeepAspectRatio``,
``Padding``, ``Inputs`` (``Name``, ``Description``, ``Type`` Front/Back/Matte/Aux, ``Gain``,
``Channels``) and ``Outputs`` (``Name``, ``Description``, ``Type`` Result/OutMatte, ``InverseGain``,
``ScalingFactor``, ``Channels``), as TuNet's exporter writes it. The ``Channels`` token arrived in
Flame 2025.2, hence ``MinimumVersion``. An RGBA input is two entries of the same ``Name`` (RGB, then
A), as Autodesk's page prescribes for Batch, which has no RGBA socket; an output alpha is likewise an
``OutMatte`` entry. ``Padding`` is 1 because the model pads itself; ``SupportsSceneLinear`` is true
only for models whose working space is ``linear`` (they take scene values as they are). These last
two and the RGBA output layout are our reading of the page, not confirmed in a Flame session.

A temporal model (``temporal_frames`` N above 0) takes frames t-N..t+N stacked as channels, the frame
itself first (``duplidog.temporal``): the file's input is 1x(C(2N+1))xHxW, each frame's C channels in
the card's order, and its output is frame t. The host builds that input (Nuke: TimeOffset and Shuffle
nodes; the ``.nk`` is not written, since Nuke's channel names cannot say which frame a channel is of).
The result says so (``temporal_frames``, ``input_frames``: ``t``, ``t-1``, ``t+1``...), the card inside
the file records it, and the Flame sidecar lists each neighbour frame as an ``Aux`` input entry of the
same ``Name`` after the frame's own, described by its offset, as the RGB and A of one input are two
entries (our reading of Autodesk's page: a Flame session is needed to confirm the Inference node
accepts it).

Every export runs the written file (TorchScript in this process, ONNX in onnxruntime) on two frames
of different, awkward sizes and compares it with ``duplidog.core.apply.apply_model`` in whole-frame fp32
with the card's colour transform; the file is renamed into place only when the largest difference is
within ``TOLERANCE`` (scene values: absolute below 1, relative above, see ``_compare``), and the
figures are returned.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from duplidog import temporal
from duplidog.atomic import atomic_path, atomic_write_text
from duplidog.colour import decode, encode
from duplidog.colour_module import WorkingSpaceModule
from duplidog.core.card import CARD_NAME, ModelCard
from duplidog.core.mirror import mirror_index
from duplidog.core.modelstore import load_model
from duplidog.errors import DuplidogError
from duplidog.core.ensemble import TRANSFORMS, resolve_ensemble
from duplidog.nuke_script import torch_requirement, write_nuke_script

log = logging.getLogger(__name__)

TARGETS = ("nuke", "flame")
SUFFIX = {"nuke": ".pt", "flame": ".onnx"}
#: Largest allowed difference (scene values) between the exported file and duplidog's inference.
TOLERANCE = {"nuke": 1e-4, "flame": 1e-3, "nuke_half": 0.05}  # nuke_half: the file run in float16
ONNX_OPSET = 17
#: Check frames (height, width): not multiples of any size_multiple > 1, one taller than wide.
CHECK_SIZES = ((37, 53), (70, 41))
FLAME_INPUT, FLAME_OUTPUT = "input_image", "output_image"
FLAME_MINIMUM_VERSION = "2025.2"


class SceneModel(nn.Module):
    """A duplidog network wrapped to take and return scene values of any size (what hosts expect).

    forward: encode into the working space, mirror-pad ``context`` pixels all round and then
    bottom/right to ``size_multiple`` (as ``infer.tiling.frame_padding``), run the network, crop to
    ``scale`` x the input size, decode. Channels are reordered between the host's
    layout and the network's when they differ (Flame wants colour before alpha): the network's input
    channel j is the host's ``host_to_network[j]``, the host's output k the network's ``network_to_host[k]``.
    """

    def __init__(self, network: nn.Module, space: Any, size_multiple: int, scale: int,
                 host_to_network: Sequence[int], network_to_host: Sequence[int], context: int = 0,
                 names_in: Sequence[str] | None = None, names_out: Sequence[str] | None = None,
                 copies: int = 1):
        super().__init__()
        self.context = int(context)
        self.network = network
        self.transforms: List[int] = list(TRANSFORMS[int(copies)])  # infer.ensemble, as the pipeline runs it
        # names_in: the network's input channels; names_out: the network's outputs (coverage is not shaped)
        self.encode = WorkingSpaceModule(space, "encode", names_in)
        self.decode = WorkingSpaceModule(space, "decode", None if names_out is None
                                         else [names_out[j] for j in network_to_host])
        self.size_multiple = int(size_multiple)
        self.scale = int(scale)
        self.reorder_input = list(host_to_network) != list(range(len(host_to_network)))
        self.reorder_output = list(network_to_host) != list(range(len(network_to_host)))
        self.register_buffer("host_to_network", torch.tensor(list(host_to_network), dtype=torch.long),
                             persistent=False)
        self.register_buffer("network_to_host", torch.tensor(list(network_to_host), dtype=torch.long),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2], x.shape[-1]
        multiple = self.size_multiple
        if self.reorder_input:
            x = x.index_select(1, self.host_to_network)
        c = self.context
        y = self.encode(x)
        y = y.index_select(2, mirror_index(height, (height + 2 * c + multiple - 1) // multiple * multiple, x.device, c))
        y = y.index_select(3, mirror_index(width, (width + 2 * c + multiple - 1) // multiple * multiple, x.device, c))
        out = self.averaged(y)
        scale = self.scale
        out = out[:, :, scale * c: scale * (c + height), scale * c: scale * (c + width)]
        if self.reorder_output:
            out = out.index_select(1, self.network_to_host)
        return self.decode(out)


    def averaged(self, y: torch.Tensor) -> torch.Tensor:
        """The network over each flipped and turned copy, mapped back and averaged (``infer.ensemble``),
        written out for TorchScript."""
        outs: List[torch.Tensor] = []
        for k in self.transforms:
            x = y.flip([3]) if k >= 4 else y
            if k % 4 != 0:
                x = torch.rot90(x, k % 4, [2, 3])
            out = self.network(x)
            assert isinstance(out, torch.Tensor)
            if k % 4 != 0:
                out = torch.rot90(out, 4 - k % 4, [2, 3])
            outs.append(out.flip([3]) if k >= 4 else out)
        return outs[0] if len(outs) == 1 else torch.stack(outs).mean(0)


# -- shared helpers ------------------------------------------------------------------------------------


def check_frames(channels: int, seed: int = 0) -> List[torch.Tensor]:
    """Scene-linear test frames: mostly 0..1 with highlights up to ~40 and some negative values."""
    generator = torch.Generator().manual_seed(seed)
    frames = []
    for height, width in CHECK_SIZES:
        base = torch.exp(torch.randn(1, channels, height, width, generator=generator) * 1.2 - 1.5)
        base[..., : height // 3, : width // 3] *= 40.0 / base.max()  # a bright patch
        noise = 0.02 * torch.randn(1, channels, height, width, generator=generator)  # grain below zero
        frames.append((base + noise).float())
    return frames


def reference_output(network: nn.Module, space: Any, frame: torch.Tensor, names_in: Sequence[str],
                     names_out: Sequence[str], copies: int) -> torch.Tensor:
    """duplidog's own result for a scene frame: encode, whole-frame fp32 apply_model, decode."""
    from duplidog.core.apply import apply_model

    working = encode(frame, space, names_in)
    return decode(apply_model(network, working, tile="none", device="cpu", precision="fp32", ensemble=copies),
                  space, names_out)


def output_path(out_path: Union[str, os.PathLike], to: str, card: ModelCard) -> Path:
    """The file to write: ``out_path`` itself, or a default name inside it when it is a folder."""
    out = Path(out_path)
    suffix = SUFFIX[to]
    if out.is_dir() or str(out_path).endswith(os.sep):
        return out / f"{card.shot or 'model'}_{card.id}{suffix}"
    if out.suffix.lower() != suffix:
        raise DuplidogError(f"{out}: a {to} export is a {suffix} file; name it *{suffix} or give a folder")
    return out


def _file_size(path: Path) -> int:
    return int(path.stat().st_size)


# -- Nuke ------------------------------------------------------------------------------------------------


def _export_nuke(wrapper: SceneModel, card: ModelCard, out: Path, network: nn.Module, space,
                 frames: List[torch.Tensor], names: Tuple[List[str], List[str]], temporal_frames: int = 0
                 ) -> Dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, yet it is what Nuke reads
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(wrapper)
    extra = {"duplidog_card.json": json.dumps(card.to_document(), indent=2)}
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(scripted, str(tmp), _extra_files=extra)
            loaded = torch.jit.load(str(tmp), map_location="cpu")
        expected = [reference_output(network, space, frame, *names, len(wrapper.transforms)) for frame in frames]
        with torch.inference_mode():
            diffs = [_compare(loaded(frame), want, out) for frame, want in zip(frames, expected)]
            # Nuke's "Optimize for Speed and Memory" casts the module and the frame to half.
            loaded.half()
            halves = [_compare(loaded(frame.half()).float(), want, out) for frame, want in zip(frames, expected)]
        measured = _within(diffs, "nuke", out)
        half = _within(halves, "nuke_half", out)
    files = [out]
    script = out.with_suffix(".nk")
    if temporal_frames:
        count = temporal.frame_count(temporal_frames)
        not_written = (f"the model reads {count} frames ({', '.join(temporal.frame_labels(temporal_frames))}) "
                       f"stacked as {len(names[0])} channels, which Nuke's channel names cannot lay out; set up "
                       "CatFileCreator by hand and build its input with TimeOffset and Shuffle nodes")
    else:
        not_written = write_nuke_script(script, out, names[0], names[1], int(getattr(network, "scale", 1)),
                                        card.id, torch.__version__.split("+")[0])
    if not_written:
        log.warning("export: %s not written: %s", script, not_written)
    else:
        files.append(script)
    return {"files": [str(f) for f in files], "sizes": {str(f): _file_size(f) for f in files}, **measured,
            "max_scaled_difference_half": half["max_scaled_difference"],
            "nuke_versions": torch_requirement(torch.__version__.split("+")[0])}


# -- Flame -----------------------------------------------------------------------------------------------

_LETTERS = {"R": "R", "RED": "R", "G": "G", "GREEN": "G", "B": "B", "BLUE": "B", "A": "A", "ALPHA": "A"}


def flame_layout(names: Sequence[str], what: str, card_path: Path) -> Tuple[str, bool, List[int]]:
    """How Flame sees ``names``: (colour letters, has alpha, host position -> network channel index).

    Flame's Inference node names channels R, G, B and A (a layer prefix such as ``rgba.`` is
    dropped); colour channels come first in the network's order, then the alpha. A single channel
    is a matte ("A"), whatever it is called.
    """
    if len(names) == 1:
        return "", True, [0]
    letters = [_LETTERS.get(str(n).split(".")[-1].upper()) for n in names]
    bad = [n for n, letter in zip(names, letters) if letter is None]
    if bad or len(set(letters)) != len(letters) or len(names) > 4:
        raise DuplidogError(f"{card_path}: Flame's Inference node takes R, G, B and A channels; the model's "
                            f"{what} channels are {', '.join(map(str, names))}")
    colour = [i for i, letter in enumerate(letters) if letter != "A"]
    alpha = [i for i, letter in enumerate(letters) if letter == "A"]
    return "".join(letters[i] for i in colour), bool(alpha), colour + alpha


def flame_sidecar(card: ModelCard, inputs: Tuple[str, bool], outputs: Tuple[str, bool]) -> Dict[str, Any]:
    """The Inference node's JSON description of the exported model (see the module docstring)."""
    shot = card.shot or "model"
    described = card.colorspace
    linear = described.get("name") == "linear"
    space = "scene-linear" if linear else "as the plate (display or log encoded)"
    named = (described.get("ocio") or {}).get("colorspace") if isinstance(described.get("ocio"), dict) else None
    if named:  # the OpenColorIO space the model was trained in: the plate must be in it
        space = f"{named}, {space}"
    entries_in, entries_out = [], []
    colour, alpha = inputs
    if colour:
        entries_in.append({"Name": FLAME_INPUT, "Description": f"plate, {space}", "Type": "Front", "Gain": 1.0,
                           "Channels": colour})
    if alpha:
        entries_in.append({"Name": FLAME_INPUT, "Description": "plate alpha", "Type": "Matte", "Gain": 1.0,
                           "Channels": "A"})
    # A temporal model's neighbour frames, after the frame's own, each as the frame's channels again.
    n = card.temporal_frames
    own = list(entries_in)
    for label in temporal.frame_labels(n)[1:]:
        entries_in += [{**entry, "Type": "Aux",
                        "Description": (f"plate frame {label}, {space}" if entry["Type"] == "Front"
                                        else f"plate alpha, frame {label}")}
                       for entry in own]
    colour, alpha = outputs
    scale = float(card.scale)
    if colour:
        entries_out.append({"Name": FLAME_OUTPUT, "Description": f"result, {space}", "Type": "Result",
                            "InverseGain": 1.0, "ScalingFactor": scale, "Channels": colour})
    if alpha:
        entries_out.append({"Name": FLAME_OUTPUT, "Description": "result matte", "Type": "OutMatte",
                            "InverseGain": 1.0, "ScalingFactor": scale, "Channels": "A"})
    return {"ModelDescription": {
        "MinimumVersion": FLAME_MINIMUM_VERSION,
        "Name": f"duplidog {shot} {card.id}".strip(),
        "Description": (f"duplidog model {card.id} for shot {shot}, trained "
                        f"{card.created}; pads and converts colour itself"
                        + (f"; reads {2 * n + 1} frames ({', '.join(temporal.frame_labels(n))}) stacked in that "
                           f"order and returns frame t" if n else "")),
        "SupportsSceneLinear": linear,
        "KeepAspectRatio": False,
        "Padding": 1,
        "Inputs": entries_in,
        "Outputs": entries_out,
    }}


@contextlib.contextmanager
def _quiet_exporter_logs():
    """Silence the exporter's own notes ("using opset 18 ... converting to 17"): the result reports the opset."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _onnx_bytes(wrapper: SceneModel, example: torch.Tensor, card: ModelCard) -> Tuple[bytes, int]:
    """The wrapped model as ONNX (dynamic H, W) with the card in its metadata; and its opset."""
    height = torch.export.Dim("height", min=2)
    width = torch.export.Dim("width", min=2)
    with warnings.catch_warnings(), _quiet_exporter_logs():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(wrapper, (example,), None, input_names=[FLAME_INPUT], output_names=[FLAME_OUTPUT],
                                    opset_version=ONNX_OPSET, dynamo=True, external_data=False,
                                    dynamic_shapes={"x": {2: height, 3: width}}, verbose=False)
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = "duplidog_card", json.dumps(card.to_document())
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    return proto.SerializeToString(), int(opset)


def _export_flame(wrapper: SceneModel, card: ModelCard, out: Path, network: nn.Module, space,
                  frames: List[torch.Tensor], order_in: List[int], order_out: List[int],
                  layouts, names: Tuple[List[str], List[str]]) -> Dict[str, Any]:
    """``order_in``/``order_out``: the network channel at each of the host's input/output positions."""
    import onnx
    import onnxruntime

    data, opset = _onnx_bytes(wrapper, frames[0][:, order_in], card)
    sidecar = out.with_suffix(".json")
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
        onnx.checker.check_model(str(tmp))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        session = onnxruntime.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
        diffs = []
        for frame in frames:
            expected = reference_output(network, space, frame, *names, len(wrapper.transforms))[:, order_out]
            host_in = np.ascontiguousarray(frame[:, order_in].numpy())
            got = torch.from_numpy(session.run([FLAME_OUTPUT], {FLAME_INPUT: host_in})[0])
            diffs.append(_compare(got, expected, out))
        measured = _within(diffs, "flame", out)
    atomic_write_text(sidecar, json.dumps(flame_sidecar(card, *layouts), indent=4) + "\n")
    return {"files": [str(out), str(sidecar)], "sizes": {str(out): _file_size(out), str(sidecar): _file_size(sidecar)},
            **measured, "opset": opset}


# -- entry point -----------------------------------------------------------------------------------------


def _compare(got: torch.Tensor, expected: torch.Tensor, out: Path) -> Tuple[float, float]:
    """(largest absolute difference, largest difference scaled by max(1, |expected|)).

    The second is what the tolerance applies to: absolute below 1, relative above. float32 keeps about
    seven significant digits, so a highlight of 10000 can only agree to ~1e-3 however exact the export;
    the working space's decode (a sinh) turns the last-digit differences of two runtimes into exactly that.
    """
    if tuple(got.shape) != tuple(expected.shape):
        raise DuplidogError(f"{out}: exported model gives shape {tuple(got.shape)}, duplidog {tuple(expected.shape)}")
    got, expected = got.double(), expected.double()
    difference = (got - expected).abs()
    return float(difference.max()), float((difference / expected.abs().clamp(min=1.0)).max())


def _within(pairs: List[Tuple[float, float]], to: str, out: Path) -> Dict[str, Any]:
    absolute = max(p[0] for p in pairs)
    scaled = max(p[1] for p in pairs)
    if not (np.isfinite(absolute) and np.isfinite(scaled)) or scaled > TOLERANCE[to]:
        raise DuplidogError(f"{out}: exported {to} model differs from duplidog's inference by {scaled:.3g} "
                            f"(relative above 1, absolute below; allowed {TOLERANCE[to]:g}); not written")
    return {"max_difference": absolute, "max_scaled_difference": scaled,
            "differences": [p[0] for p in pairs]}


def export(model_dir: Union[str, os.PathLike], to: str, out_path: Union[str, os.PathLike],
           ensemble: str | int = "auto") -> Dict[str, Any]:
    """Export the model in ``model_dir`` for Nuke (``to="nuke"``: TorchScript .pt) or Flame
    (``to="flame"``: .onnx plus its .json sidecar) to ``out_path`` (a file, or a folder for a default
    name), after checking the written file against duplidog's inference. ``ensemble`` as
    ``infer.ensemble``: the file averages as many flipped and turned copies as the pipeline would.

    Returns {target, model_id, files, sizes (bytes), max_difference (absolute, scene values),
    max_scaled_difference (absolute below 1, relative above: what ``TOLERANCE`` bounds), differences
    (absolute, one per check frame), check_sizes, tolerance, input_channels, output_channels, scale,
    temporal_frames, input_frames (the frames the input stacks: ``t``, ``t-1``, ``t+1``...), colorspace}
    (+ opset for Flame). Raises DuplidogError for an unknown target, a missing, damaged
    or incompatible model, channels the host cannot take, or an export that does not match.
    """
    if to not in TARGETS:
        raise DuplidogError(f"export target {to!r} is not one of {', '.join(TARGETS)}")
    network, card = load_model(model_dir, "cpu")
    card_path = Path(model_dir) / CARD_NAME
    try:
        card.space()
    except DuplidogError as exc:
        raise DuplidogError(f"{card_path}: {exc}") from None
    space = card.colorspace
    names_in, names_out = list(card.input_channels), list(card.output_channels)
    multiple, scale = int(network.size_multiple), int(getattr(network, "scale", 1))
    out = output_path(out_path, to, card)
    # A temporal model's input: every frame of its window, each with the card's input channels.
    n = int(getattr(network, "temporal_frames", 0))
    stacked_in, count = temporal.stacked_names(names_in, n), temporal.frame_count(n)
    frames = check_frames(len(stacked_in))
    copies = resolve_ensemble(ensemble, network.in_channels, network.out_channels, scale)

    if to == "nuke":
        wrapper = SceneModel(network, space, multiple, scale, range(len(stacked_in)),
                             range(network.out_channels), network.edge_context, stacked_in, names_out, copies).eval()
        result = _export_nuke(wrapper, card, out, network, space, frames, (stacked_in, names_out), n)
    else:
        colour_in, alpha_in, order_in = flame_layout(names_in, "input", card_path)
        colour_out, alpha_out, order_out = flame_layout(names_out, "output", card_path)
        # the host's layout frame by frame: each frame's colour, then its alpha
        order_in = [k * len(names_in) + j for k in range(count) for j in order_in]
        host_to_network = torch.argsort(torch.tensor(order_in)).tolist()
        wrapper = SceneModel(network, space, multiple, scale, host_to_network, order_out,
                             network.edge_context, stacked_in, names_out, copies).eval()
        result = _export_flame(wrapper, card, out, network, space, frames, order_in, order_out,
                               ((colour_in, alpha_in), (colour_out, alpha_out)), (stacked_in, names_out))
    result.update(target=to, model_id=card.id, check_sizes=[list(s) for s in CHECK_SIZES],
                  tolerance=TOLERANCE[to], input_channels=names_in, output_channels=names_out, scale=scale,
                  temporal_frames=n, input_frames=temporal.frame_labels(n),
                  colorspace=space.get("name"), ocio_colorspace=(space.get("ocio") or {}).get("colorspace"),
                  ensemble=copies)
    log.info("export: %s model %s -> %s (max difference %.3g)", to, card.id, ", ".join(result["files"]),
             result["max_difference"])
    return result
