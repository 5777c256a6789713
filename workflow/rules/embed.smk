rule embed:
    input:
        cohort="results/{dataset}/cohort.parquet",
    output:
        "results/{dataset}/embeddings/{modality}/{encoder}.h5",
    params:
        spec=embed_spec,
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=0,
    conda:
        "../../envs/medmix.yaml"
    log:
        "results/{dataset}/logs/embed/{modality}/{encoder}.log",
    benchmark:
        "results/{dataset}/benchmarks/embed/{modality}/{encoder}.tsv"
    shell:
        "python -m medmix embed --cohort {input.cohort} --modality {wildcards.modality} "
        "--encoder {wildcards.encoder} --out {output} --spec {params.spec:q} > {log} 2>&1"
