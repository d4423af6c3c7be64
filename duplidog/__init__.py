"""duplidog: learn a shot-specific image transformation from a few keyframes and apply it to the shot."""

__version__ = "0.1.0"
