# One job per chunk of frames: each chunk's frames are its declared outputs, so deleting a frame
# reruns just its chunk. Snakemake outputs cannot be functions of wildcards, so a rule is made per
# chunk; profiles configure them all under the name `infer_chunk` (set-resources, set-threads).

for _shot in SHOTS.values():
    for _chunk in _shot.chunks:

        rule:
            name:
                _chunk.rule_name
            input:
                model=_shot.layout.model_card,
                plan=_shot.layout.plan,
                # with model.temporal_frames, also the neighbours just outside the chunk
                frames=[FramePattern(_shot.config["source"]).path(f) for f in _shot.reads(_chunk.frames)],
            output:
                frames=[FramePattern(_shot.output).path(f) for f in _chunk.frames],
            log:
                f"logs/{_shot.name}/infer/{_chunk.name}.log",
            benchmark:
                f"benchmarks/{_shot.name}/infer/{_chunk.name}.tsv"
            params:
                frames=list(_chunk.frames),
                output=_shot.output,
                settings=_shot.config["infer"],
                summary=_shot.layout.chunk_summary(_chunk.name),
            threads: profile_threads("infer_chunk", default=2)
            resources:
                gpu=1,
                **profile_resources("infer_chunk"),
            conda:
                "../workflow/envs/duplidog.yaml"
            script:
                "../workflow/scripts/infer.py"
