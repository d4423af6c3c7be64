"""What the stages share, owned once: each module here imports the foundation and the model layer only, never a stage."""
