rule tune:
    input:
        cohort="results/{dataset}/cohort.parquet",
        embeddings=train_embeddings,
    output:
        "results/{dataset}/tuning/{method}.json",
    params:
        job=tune_job,
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        "../../envs/medmix.yaml"
    log:
        "results/{dataset}/logs/tune/{method}.log",
    benchmark:
        "results/{dataset}/benchmarks/tune/{method}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} python -m medmix tune --dataset {wildcards.dataset} --method {wildcards.method} "
        "--out {output} --cohort {input.cohort} --embeddings {input.embeddings} --job {params.job:q} --quiet > {log} 2>&1"


rule train:
    input:
        cohort="results/{dataset}/cohort.parquet",
        embeddings=train_embeddings,
        tuning=tuning_file,
    output:
        model="results/{dataset}/runs/{method}/seed{seed}/model.pt",
        metrics="results/{dataset}/runs/{method}/seed{seed}/metrics.json",
        predictions="results/{dataset}/runs/{method}/seed{seed}/predictions.parquet",
    params:
        job=train_job,
        tuning=tuning_arg,
        out="results/{dataset}/runs/{method}/seed{seed}",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../../envs/medmix.yaml"
    log:
        "results/{dataset}/logs/train/{method}/seed{seed}.log",
    benchmark:
        "results/{dataset}/benchmarks/train/{method}/seed{seed}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} python -m medmix train --dataset {wildcards.dataset} --method {wildcards.method} "
        "--seed {wildcards.seed} --out {params.out} --cohort {input.cohort} --embeddings {input.embeddings} "
        "{params.tuning} --job {params.job:q} > {log} 2>&1"
