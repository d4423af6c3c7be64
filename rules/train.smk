

rule train:
    input:
        pool="results/{shot}/pool/pool.zarr",
        manifest="results/{shot}/ingest/manifest.csv",
        plan="results/{shot}/ingest/plan.json",
        init=init_model,
    output:
        weights="results/{shot}/model/model.safetensors",
        card="results/{shot}/model/model.json",
        loss=report(
            "results/{shot}/train/loss.png",
            caption="../report/loss.rst",
            category="Training",
            subcategory="{shot}",
        ),
        # The last picture training draws: the final model on the validation keyframes.
        contact_sheet=report(
            "results/{shot}/train/contact_final.png",
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
