

rule train:
    input:
        pool=LAYOUT.pool,
        manifest=LAYOUT.manifest,
        plan=LAYOUT.plan,
        init=init_model,
    output:
        weights=LAYOUT.model_weights,
        card=LAYOUT.model_card,
        loss=report(
            LAYOUT.train.loss_plot,
            caption="../report/loss.rst",
            category="Training",
            subcategory="{shot}",
        ),
        # The last picture training draws: the final model on the validation keyframes.
        contact_sheet=report(
            LAYOUT.train.final_contact_sheet,
            caption="../report/training_sheet.rst",
            category="Training",
            subcategory="{shot}",
        ),
    log:
        "logs/{shot}/train.log",
    benchmark:
        "benchmarks/{shot}/train.tsv"
    params:
        model=section("model"),
        train=section("train"),
        seed=section("seed"),
    threads: 8  # data loading beside the GPU; on CPU, the network's threads (capped by --cores)
    resources:
        gpu=1,
    conda:
        "../workflow/envs/duplidog.yaml"
    script:
        "../workflow/scripts/train.py"
