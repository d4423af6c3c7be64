# duplidog: learn a shot's fix from a few keyframes and apply it to every frame.
#   snakemake --profile profiles/local                          # the built-in demo shot
#   snakemake --profile profiles/farm --configfile shots/sh010.yaml
from snakemake.utils import min_version

min_version("9.0")


# The defaults sit beside this Snakefile, so a run from another working directory finds them too.
configfile: f"{workflow.basedir}/config/config.yaml"


# The report opens on each shot's figures (report/workflow.rst); its pictures are marked in the rules.
report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/ingest.smk"
include: "rules/pool.smk"
include: "rules/train.smk"
include: "rules/infer.smk"
include: "rules/assemble.smk"


onstart:
    sweep_stale_temporaries()


onsuccess:
    print_run_summary()


rule all:
    input:
        all_outputs(),
    default_target: True
