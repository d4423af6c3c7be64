"""Inference: run a trained network over frames (stages 4 of the pipeline).

``apply_model`` runs one working-space frame, whole or in exact overlapping tiles;
``infer_frames`` runs a chunk of a shot from files to files.
"""

from duplidog.infer.runner import apply_model

__all__ = ["apply_model"]
