from duplidog.assemble import assemble
from duplidog.core.layout import ShotLayout
from duplidog.logs import log_to

log_to(snakemake.log[0])
# The rule's inputs and outputs are the shot's layout's files: assemble takes them all from it.
assemble(ShotLayout.of(snakemake.output.summary), output_pattern=snakemake.params.output,
         settings=snakemake.params.settings)
