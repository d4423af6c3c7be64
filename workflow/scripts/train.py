from pathlib import Path

import torch

from duplidog.logs import log_to
from duplidog.train import train

log_to(snakemake.log[0])
# As many threads as the job was given (SLURM --cpus-per-task, or Snakemake's share of --cores), not
# the whole node's; and the same count gives the same floating-point sums on every run.
torch.set_num_threads(snakemake.threads)
train(
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
