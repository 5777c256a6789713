# Robustness sweeps and efficiency: train-time drop runs, test-time evaluation of the main runs,
# measurement of each method's deployed stack.


rule train_drop:
    # every robustness seed of a (dataset, method, drop) in one job, as rule train
    input:
        cohort="results/{dataset}/cohort.parquet",
        embeddings=train_embeddings,
        tuning=tuning_file,
    output:
        model=seed_files("results/{dataset}/runs/{method}/drop-{drop}", "model.pt", ROB["seeds"]),
        metrics=seed_files("results/{dataset}/runs/{method}/drop-{drop}", "metrics.json", ROB["seeds"]),
        predictions=seed_files("results/{dataset}/runs/{method}/drop-{drop}", "predictions.parquet", ROB["seeds"]),
    log:
        "results/{dataset}/logs/train/{method}/drop-{drop}.log",
    benchmark:
        "results/{dataset}/benchmarks/train/{method}/drop-{drop}.tsv"
    conda:
        "../../envs/medmix.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=train_runtime(ROB["seeds"]),
    params:
        job=train_drop_job,
        tuning=tuning_arg,
        seeds=" ".join(map(str, ROB["seeds"])),
        out="results/{dataset}/runs/{method}/drop-{drop}",
    shell:
        "OMP_NUM_THREADS={threads} $MEDMIX_PY -m medmix train --dataset {wildcards.dataset} --method {wildcards.method} "
        "--seeds {params.seeds} --out {params.out} --cohort {input.cohort} --embeddings {input.embeddings} "
        "{params.tuning} --job {params.job:q} --quiet > {log} 2>&1"


rule robustness:
    input:
        cohort="results/{dataset}/cohort.parquet",
        embeddings=inference_embeddings,
        runs=dataset_runs,
        base_runs=base_runs,
        drop_runs=drop_runs,
    output:
        "results/{dataset}/robustness.json",
    log:
        "results/{dataset}/logs/robustness.log",
    benchmark:
        "results/{dataset}/benchmarks/robustness.tsv"
    conda:
        "../../envs/medmix.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        p=robustness_params,
        mask_seed=ROB["mask_seed"],
        mechanisms=json.dumps(ROB["mechanisms"], sort_keys=True),
    shell:
        "OMP_NUM_THREADS={threads} $MEDMIX_PY -m medmix robustness --dataset {wildcards.dataset} --runs {params.p[runs]} "
        "--base-runs {params.p[base]} --drop-runs {params.p[drop]} --rates {params.p[rates]} "
        "--mask-seed {params.mask_seed} --mechanisms {params.mechanisms:q} --cohort {input.cohort} --embeddings {input.embeddings} --out {output} > {log} 2>&1"


rule efficiency:
    input:
        cohort="results/{dataset}/cohort.parquet",
        embeddings=efficiency_embeddings,
        runs=efficiency_runs,
    output:
        "results/{dataset}/efficiency.json",
    log:
        "results/{dataset}/logs/efficiency.log",
    benchmark:
        "results/{dataset}/benchmarks/efficiency.tsv"
    priority: MAIN_PRIORITY
    conda:
        "../../envs/medmix.yaml"
    threads: config["efficiency"]["threads"]
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        job=efficiency_job,
        dirs=run_dirs,
        samples=config["efficiency"]["samples"],
        warmup=config["efficiency"]["warmup"],
    shell:
        "OMP_NUM_THREADS={threads} $MEDMIX_PY -m medmix efficiency --runs {params.dirs} --cohort {input.cohort} "
        "--embeddings {input.embeddings} "
        "--samples {params.samples} --warmup {params.warmup} --threads {threads} --job {params.job:q} "
        "--out {output} > {log} 2>&1"
