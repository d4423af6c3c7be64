"""Inference: run a trained network over frames (stage 4 of the pipeline).

``infer_frames`` runs a chunk of a shot from files to files with reads and writes on background threads
(``frames``); ``infer_sequence`` does the same without a shot plan. One frame's run, whole or in exact
overlapping tiles, is the core's ``duplidog.core.apply.apply_model``, which validation and export use too.
"""

from duplidog.infer.frames import infer_frames, infer_sequence, run_frames

__all__ = ["infer_frames", "infer_sequence", "run_frames"]
