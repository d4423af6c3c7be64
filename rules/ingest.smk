

rule ingest:
    input:
        source=keyframe_sources,
        target=target_frames,
    output:
        manifest=LAYOUT.manifest,
        plan=LAYOUT.plan,
    log:
        "logs/{shot}/ingest.log",
    benchmark:
        "benchmarks/{shot}/ingest.tsv"
    params:
        config=ingest_config,
    conda:
        "../workflow/envs/duplidog.yaml"
    script:
        "../workflow/scripts/ingest.py"
