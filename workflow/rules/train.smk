rule tune:
    input:
        cohort="results/{dataset}/cohort.parquet",
        embeddings=train_embeddings,
    output:
        "results/{dataset}/tuning/{method}.json",
    log:
        "results/{dataset}/logs/tune/{method}.log",
    benchmark:
        "results/{dataset}/benchmarks/tune/{method}.tsv"
    conda:
        "../../envs/medmix.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        job=tune_job,
    shell:
        "OMP_NUM_THREADS={threads} $MEDMIX_PY -m medmix tune --dataset {wildcards.dataset} --method {wildcards.method} "
        "--out {output} --cohort {input.cohort} --embeddings {input.embeddings} --job {params.job:q} --quiet > {log} 2>&1"


rule train:
    # every seed of a (dataset, method) in one job: the caches are read once and the interpreter and
    # torch start once (medmix.train.train_seeds); each seed's run is the same as when trained alone
    input:
        cohort="results/{dataset}/cohort.parquet",
        embeddings=train_embeddings,
        tuning=tuning_file,
    output:
        model=seed_files("results/{dataset}/runs/{method}", "model.pt", config["seeds"]),
        metrics=seed_files("results/{dataset}/runs/{method}", "metrics.json", config["seeds"]),
        predictions=seed_files("results/{dataset}/runs/{method}", "predictions.parquet", config["seeds"]),
    log:
        "results/{dataset}/logs/train/{method}.log",
    benchmark:
        "results/{dataset}/benchmarks/train/{method}.tsv"
    priority: MAIN_PRIORITY
    conda:
        "../../envs/medmix.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=train_runtime(config["seeds"]),
    params:
        job=train_job,
        tuning=tuning_arg,
        seeds=" ".join(map(str, config["seeds"])),
        out="results/{dataset}/runs/{method}",
    shell:
        "OMP_NUM_THREADS={threads} $MEDMIX_PY -m medmix train --dataset {wildcards.dataset} --method {wildcards.method} "
        "--seeds {params.seeds} --out {params.out} --cohort {input.cohort} --embeddings {input.embeddings} "
        "{params.tuning} --job {params.job:q} > {log} 2>&1"
