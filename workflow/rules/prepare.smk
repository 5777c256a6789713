rule synth:
    output:
        directory("results/{dataset}/raw"),
    log:
        "results/{dataset}/logs/synth.log",
    conda:
        "../../envs/medmix.yaml"
    params:
        kind=synth_kind,
        n=synth_n,
        seed=synth_seed,
    shell:
        "$MEDMIX_PY -m medmix synth --kind {params.kind} --out {output} --n {params.n} --seed {params.seed} > {log} 2>&1"


rule prepare:
    input:
        raw_input,
    output:
        cohort="results/{dataset}/cohort.parquet",
        report=report("results/{dataset}/cohort.json", category="Cohort", caption="../report/cohort.rst"),
    log:
        "results/{dataset}/logs/prepare.log",
    conda:
        "../../envs/medmix.yaml"
    params:
        root=raw_root,
        job=prepare_job,
    shell:
        "$MEDMIX_PY -m medmix prepare {wildcards.dataset} --root {params.root:q} --out {output.cohort} "
        "--job {params.job:q} > {log} 2>&1"
