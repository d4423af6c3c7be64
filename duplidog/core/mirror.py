"""Mirror padding, written once: what inference, the exported model and the benches pad a frame with.

``reflect`` padding (the edge pixel is not repeated) that works for any width: unlike
``torch.nn.functional.pad(mode="reflect")`` it folds back and forth when the padding is wider than
the image (a 37-pixel-high frame padded by 60). Tiled inference and the exported model must pad
alike, or an exported model's edges would differ from the pipeline's.
"""

from __future__ import annotations

import torch


def mirror_index(length: int, padded: int, device: torch.device, before: int = 0) -> torch.Tensor:
    """Source rows (or columns) for mirror padding ``length`` pixels to ``padded``, ``before`` of them
    ahead of the first pixel and the rest after the last.

    Written with tensor ops only, so that TorchScript keeps it for any size and ``torch.export`` keeps
    the sizes symbolic (the exported model calls it in its ``forward``).
    """
    positions = torch.arange(padded, device=device) - before
    period = torch.full([], 2 * (length - 1), dtype=torch.long, device=device).clamp(min=1)
    folded = torch.remainder(positions, period)
    return torch.where(folded < length, folded, period - folded)


def mirror_pad(image: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """Mirror-pad an (N, C, H, W) tensor by any amount (folding back and forth if wider than the image)."""
    height, width = image.shape[-2:]
    rows = mirror_index(height, top + height + bottom, image.device, top)
    columns = mirror_index(width, left + width + right, image.device, left)
    return image.index_select(-2, rows).index_select(-1, columns)
