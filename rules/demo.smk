# The built-in demo shot (`duplidog demo DIR` writes the same frames): only needed when a shot's
# source is the demo's, which is the default when no --configfile is given.


rule demo_shot:
    output:
        plates=expand("resources/demo/plate/demo_plate.{frame:04d}.exr", frame=demo.FRAMES),
        fixed=expand("resources/demo/fixed/demo_fixed.{frame:04d}.exr", frame=demo.KEYFRAMES),
    log:
        "logs/demo/demo_shot.log",
    benchmark:
        "benchmarks/demo/demo_shot.tsv"
    conda:
        "../workflow/envs/duplidog.yaml"
    script:
        "../workflow/scripts/demo.py"
