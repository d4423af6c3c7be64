

rule pool:
    input:
        manifest="results/{shot}/ingest/manifest.csv",
        plan="results/{shot}/ingest/plan.json",
    output:
        pool=directory("results/{shot}/pool/pool.zarr"),
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
