"""The Nuke script beside a Nuke export: a CatFileCreator set up for the model, and an Inference node.

Nuke runs a TorchScript file only after its CatFileCreator node has turned it into a ``.cat``; the
node needs the model's channels as Nuke names them and its output scale, which an artist would
otherwise read off the model card. The script sets them, names the ``.cat`` beside the ``.pt``, and
wires an Inference node that reads that ``.cat``. Knob names follow Foundry's .cat File Creation
Reference (CatFileCreator: torchScriptFile, catFile, channelsIn, channelsOut, modelId, outputScale;
Inference: modelFile).

Which Nuke loads the file is decided by the torch that wrote it: TorchScript loads in the torch that
saved it or a newer one, not an older one. Foundry documents Nuke 13 on torch 1.6 and Nuke 14 on
torch 1.12 (a file for every Nuke from 13 on must be saved by torch 1.6); ``torch_requirement`` says
what the file in hand needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

#: duplidog channel names -> the Nuke channels a CatFileCreator accepts (Foundry's list of 19).
NUKE_CHANNELS = {
    "R": "rgba.red", "G": "rgba.green", "B": "rgba.blue", "A": "rgba.alpha",
    "RED": "rgba.red", "GREEN": "rgba.green", "BLUE": "rgba.blue", "ALPHA": "rgba.alpha",
    "MATTE": "rgba.alpha", "MASK": "mask.a", "Z": "depth.Z", "DEPTH.Z": "depth.Z",
}
#: What Foundry's guide documents: Nuke version -> the torch its Inference node runs.
DOCUMENTED_NUKE_TORCH = {"13": "1.6", "14": "1.12"}


def nuke_channels(names: Sequence[str]) -> Optional[list[str]]:
    """Nuke's names for ``names``, or None if one has no Nuke channel."""
    mapped = [NUKE_CHANNELS.get(name.upper()) for name in names]
    return None if any(m is None for m in mapped) else mapped


def torch_requirement(torch_version: str) -> str:
    """One sentence on which Nuke can load a TorchScript file saved by ``torch_version``."""
    documented = ", ".join(f"Nuke {n}: torch {t}" for n, t in DOCUMENTED_NUKE_TORCH.items())
    return (f"saved by torch {torch_version}: it loads in a Nuke whose torch is {torch_version} or newer "
            f"(documented: {documented}); for an older Nuke, export from an environment with that Nuke's torch")


def _quoted(text: str) -> str:
    return '"' + str(text).replace("\\", "/").replace('"', '\\"') + '"'


def write_nuke_script(path: Path, pt_path: Path, channels_in: Sequence[str], channels_out: Sequence[str],
                      scale: int, model_id: str, torch_version: str) -> Optional[str]:
    """Write the ``.nk`` text to ``path`` (through ``duplidog.atomic``); returns None, or why it was not
    written (a channel Nuke has no name for)."""
    from duplidog.atomic import atomic_write_text

    nuke_in, nuke_out = nuke_channels(channels_in), nuke_channels(channels_out)
    if nuke_in is None or nuke_out is None:
        return (f"channels {', '.join(channels_in)} -> {', '.join(channels_out)} include one Nuke has no "
                "channel for; set up CatFileCreator by hand")
    pt_path = Path(pt_path).resolve()
    cat_path = pt_path.with_suffix(".cat")
    text = f"""# duplidog: model {model_id}, exported for Nuke's Inference node.
# {torch_requirement(torch_version)}.
# 1. Open CatFileCreator_duplidog and press "Create .cat file": it writes {cat_path.name} beside the .pt.
# 2. Inference_duplidog then reads it. Input and output are scene values as the plate holds them.
set cut_paste_input [stack 0]
CatFileCreator {{
 inputs 0
 torchScriptFile {_quoted(pt_path)}
 catFile {_quoted(cat_path)}
 channelsIn {_quoted(", ".join(nuke_in))}
 channelsOut {_quoted(", ".join(nuke_out))}
 modelId {_quoted(model_id)}
 outputScale {int(scale)}
 name CatFileCreator_duplidog
 xpos 200
 ypos -80
}}
push $cut_paste_input
Inference {{
 modelFile {_quoted(cat_path)}
 name Inference_duplidog
 label {_quoted("duplidog " + model_id)}
 xpos 0
 ypos 0
}}
"""
    atomic_write_text(path, text)
    return None
