"""Inference: run a trained network over frames (stage 4 of the pipeline).

``apply_model`` runs one working-space frame, whole or in exact overlapping tiles (``runner``,
``tiling``); ``infer_frames`` runs a chunk of a shot from files to files with reads and writes on
background threads (``frames``); ``infer_sequence`` does the same without a shot plan.
"""

from duplidog.infer.frames import infer_frames, infer_sequence, run_frames
from duplidog.infer.runner import apply_model

__all__ = ["apply_model", "infer_frames", "infer_sequence", "run_frames"]
