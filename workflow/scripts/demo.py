from duplidog.demo import write_demo
from duplidog.logs import log_to

log_to(snakemake.log[0])
write_demo(snakemake.params.directory)
