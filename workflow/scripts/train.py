from pathlib import Path

import torch

from duplidog.gpus import claim_gpus
from duplidog.logs import log_to
from duplidog.train import train
from duplidog.train.launch import train_in_processes

log_to(snakemake.log[0])
# This job's own GPUs (before CUDA starts): on a workstation a free one of the machine's for each GPU
# job; under SLURM the ones SLURM gave the job.
gpus = claim_gpus(snakemake.resources.get("gpu", 0))
arguments = dict(
    pool_path=snakemake.input.pool,
    plan_path=snakemake.input.plan,
    manifest_path=snakemake.input.manifest,
    model_dir=Path(snakemake.output.card).parent,
    work_dir=Path(snakemake.output.loss).parent,
    config={
        "model": snakemake.params.model,
        "train": snakemake.params.train,
        "seed": snakemake.params.seed,
    },
)
if len(gpus.devices) > 1 and snakemake.params.train.get("device") != "cpu":
    # Several GPUs (resources: gpu above 1): one process per GPU, each on its share of every batch.
    train_in_processes(len(gpus.devices), snakemake.threads, **arguments)
else:
    # As many threads as the job was given (SLURM --cpus-per-task, or Snakemake's share of --cores), not
    # the whole node's; and the same count gives the same floating-point sums on every run.
    torch.set_num_threads(snakemake.threads)
    train(**arguments)
