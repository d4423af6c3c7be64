"""Fixtures shared by several test modules. Keep this file to registrations; fixtures live in modules."""

from slurm_cluster import slurm_cluster  # noqa: F401  (session fixture: a real single-node SLURM)
