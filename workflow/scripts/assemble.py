from duplidog.assemble import assemble
from duplidog.core.layout import ShotLayout
from duplidog.logs import log_to

log_to(snakemake.log[0])
# Every file assemble reads or writes is the shot's layout's: the rule's inputs and outputs are its paths.
assemble(
    ShotLayout(snakemake.params.results, snakemake.wildcards.shot),
    output_pattern=snakemake.params.output,
    settings=snakemake.params.settings,
)
