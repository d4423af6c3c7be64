from pathlib import Path

from duplidog.ingest import ingest
from duplidog.logs import log_to

log_to(snakemake.log[0])
ingest(snakemake.params.config, out_dir=Path(snakemake.output.plan).parent)
