from pathlib import Path

from duplidog.logs import log_to
from duplidog.train import train

log_to(snakemake.log[0])
train(
    pool_path=snakemake.input.pool,
    plan_path=snakemake.input.plan,
    manifest_path=snakemake.input.manifest,
    model_dir=Path(snakemake.output.card).parent,
    work_dir=Path(snakemake.output.loss).parent,
    config={
        "model": snakemake.params.model,
        "train": snakemake.params.train,
        "infer": snakemake.params.infer,
        "seed": snakemake.params.seed,
    },
)
