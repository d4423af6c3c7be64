from pathlib import Path

import torch

from duplidog.gpus import claim_gpus
from duplidog.infer import infer_frames
from duplidog.logs import log_to

log_to(snakemake.log[0])
gpus = claim_gpus(snakemake.resources.get("gpu", 0))  # this job's own GPU (duplidog.gpus)
# As many threads as the job was given (SLURM --cpus-per-task, or Snakemake's share of --cores), not
# the whole node's; and the same count gives the same floating-point sums on every run.
torch.set_num_threads(snakemake.threads)
infer_frames(
    model_dir=Path(snakemake.input.model).parent,
    plan_path=snakemake.input.plan,
    frames=snakemake.params.frames,
    output_pattern=snakemake.params.output,
    settings=snakemake.params.settings,
    summary_path=snakemake.params.summary,
)
