# One cache per dataset × modality × encoder. An encoder with `shards: 1` (default) is one `embed`
# job; with `shards: N` it is N `embed_shard` jobs (each encodes every N-th batch of the same plan)
# and an `embed_merge` job that writes the same file an unsharded run would. Resources come from
# the encoder's `resources:` entry (embed_resource, common.smk).


rule embed:
    input:
        cohort="results/{dataset}/cohort.parquet",
        weights=embed_weights,
    output:
        CACHE,
    log:
        "results/{dataset}/logs/embed/{modality}/{encoder}.log",
    benchmark:
        "results/{dataset}/benchmarks/embed/{modality}/{encoder}.tsv"
    wildcard_constraints:
        encoder=UNSHARDED_RE,
    priority: EMBED_PRIORITY
    conda:
        "../../envs/medmix.yaml"
    threads: embed_threads
    resources:
        mem_mb=embed_mem_mb,
        runtime=embed_runtime,
        gpu=embed_gpu,
        workers=embed_workers,
    params:
        job=embed_job,
    shell:
        "OMP_NUM_THREADS={threads} RAYON_NUM_THREADS={threads} $MEDMIX_PY -m medmix embed --cohort {input.cohort} --modality {wildcards.modality} "
        "--encoder {wildcards.encoder} --out {output} --job {params.job:q} --workers {resources.workers} --quiet > {log} 2>&1"


rule embed_shard:
    input:
        cohort="results/{dataset}/cohort.parquet",
        weights=embed_weights,
    output:
        CACHE.replace("{encoder}.h5", "shards/{encoder}/{shard}-of-{nshards}.h5"),
    log:
        "results/{dataset}/logs/embed/{modality}/{encoder}.{shard}-of-{nshards}.log",
    benchmark:
        "results/{dataset}/benchmarks/embed/{modality}/{encoder}.{shard}-of-{nshards}.tsv"
    wildcard_constraints:
        encoder=SHARDED_RE,
        shard=r"\d+",
        nshards=r"\d+",
    priority: EMBED_PRIORITY
    conda:
        "../../envs/medmix.yaml"
    threads: embed_threads
    resources:
        mem_mb=embed_mem_mb,
        runtime=embed_runtime,
        gpu=embed_gpu,
        workers=embed_workers,
    params:
        job=embed_job,
    shell:
        "OMP_NUM_THREADS={threads} RAYON_NUM_THREADS={threads} $MEDMIX_PY -m medmix embed --cohort {input.cohort} --modality {wildcards.modality} "
        "--encoder {wildcards.encoder} --out {output} --shard {wildcards.shard}/{wildcards.nshards} "
        "--job {params.job:q} --workers {resources.workers} --quiet > {log} 2>&1"


rule embed_merge:
    input:
        cohort="results/{dataset}/cohort.parquet",
        shards=embed_shard_files,
    output:
        CACHE,
    log:
        "results/{dataset}/logs/embed/{modality}/{encoder}.merge.log",
    wildcard_constraints:
        encoder=SHARDED_RE,
    priority: EMBED_PRIORITY
    conda:
        "../../envs/medmix.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        job=embed_job,
    shell:
        "$MEDMIX_PY -m medmix merge --cohort {input.cohort} --modality {wildcards.modality} "
        "--encoder {wildcards.encoder} --shards {input.shards} --out {output} --job {params.job:q} > {log} 2>&1"
