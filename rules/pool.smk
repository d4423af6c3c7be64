

rule pool:
    input:
        manifest=LAYOUT.manifest,
        plan=LAYOUT.plan,
    output:
        pool=directory(LAYOUT.pool),
    log:
        "logs/{shot}/pool.log",
    benchmark:
        "benchmarks/{shot}/pool.tsv"
    params:
        settings=section("pool"),
        seed=section("seed"),
    conda:
        "../workflow/envs/duplidog.yaml"
    script:
        "../workflow/scripts/pool.py"
