from pathlib import Path

from duplidog.infer import infer_frames
from duplidog.logs import log_to

log_to(snakemake.log[0])
infer_frames(
    model_dir=Path(snakemake.input.model).parent,
    plan_path=snakemake.input.plan,
    frames=snakemake.params.frames,
    output_pattern=snakemake.params.output,
    settings=snakemake.params.settings,
    summary_path=snakemake.params.summary,
)
