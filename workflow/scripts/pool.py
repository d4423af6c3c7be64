from duplidog.logs import log_to
from duplidog.pool import build_pool

log_to(snakemake.log[0])
build_pool(
    snakemake.input.manifest,
    snakemake.input.plan,
    snakemake.output.pool,
    snakemake.params.settings,
    seed=snakemake.params.seed,
)
