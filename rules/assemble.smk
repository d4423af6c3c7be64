

rule assemble:
    input:
        frames=output_frames,
        manifest=LAYOUT.manifest,
        plan=LAYOUT.plan,
        model=LAYOUT.model_card,
    output:
        checksums=LAYOUT.checksums,
        summary=report(
            LAYOUT.summary,
            caption="../report/summary.rst",
            category="Output",
            subcategory="{shot}",
        ),
        contact_sheet=report(
            LAYOUT.contact_sheet,
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
