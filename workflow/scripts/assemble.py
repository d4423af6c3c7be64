from pathlib import Path

from duplidog.assemble import assemble
from duplidog.logs import log_to

log_to(snakemake.log[0])
assemble(
    plan_path=snakemake.input.plan,
    manifest_path=snakemake.input.manifest,
    output_pattern=snakemake.params.output,
    out_dir=Path(snakemake.output.summary).parent,
    settings=snakemake.params.settings,
)
