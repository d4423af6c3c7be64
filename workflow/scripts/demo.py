from pathlib import Path

from duplidog.demo import write_demo
from duplidog.logs import log_to

log_to(snakemake.log[0])
# The demo's files sit two folders below its directory (plate/<name>.exr).
write_demo(Path(snakemake.output.plates[0]).parent.parent)
