

rule assemble:
    input:
        frames=output_frames,
        manifest="results/{shot}/ingest/manifest.csv",
        plan="results/{shot}/ingest/plan.json",
        model="results/{shot}/model/model.json",
    output:
        checksums="results/{shot}/assemble/checksums.tsv",
        summary=report(
            "results/{shot}/assemble/summary.json",
            caption="../report/summary.rst",
            category="Output",
            subcategory="{shot}",
        ),
        contact_sheet=report(
            "results/{shot}/assemble/contact_sheet.png",
            caption="../report/contact_sheet.rst",
            category="Output",
            subcategory="{shot}",
        ),
    log:
        "logs/{shot}/assemble.log",
    benchmark:
        "benchmarks/{shot}/assemble.tsv"
    params:
        output=output_pattern,
        settings=section("assemble"),
    conda:
        "../workflow/envs/duplidog.yaml"
    script:
        "../workflow/scripts/assemble.py"
