localrules:
    aggregate,


rule aggregate:
    input:
        runs=dataset_runs,
        cohort="results/{dataset}/cohort.json",
    output:
        metrics=report("results/{dataset}/metrics.json", category="Results", caption="../report/metrics.rst"),
        table=report("results/{dataset}/metrics.md", category="Results", caption="../report/metrics.rst"),
    log:
        "results/{dataset}/logs/aggregate.log",
    conda:
        "../../envs/medmix.yaml"
    params:
        runs=run_dirs,
        bootstrap=config["train"]["bootstrap"],
    shell:
        "$MEDMIX_PY -m medmix aggregate --dataset {wildcards.dataset} --runs {params.runs} --out {output.metrics} "
        "--cohort-json {input.cohort} --bootstrap {params.bootstrap} > {log} 2>&1"


localrules:
    tables,


rule tables:
    input:
        metrics=all_metrics,
    output:
        md=report("results/tables/main.md", category="Results", caption="../report/main_table.rst"),
        csv="results/tables/main.csv",
        tex="results/tables/main.tex",
    log:
        "results/logs/tables.log",
    conda:
        "../../envs/medmix.yaml"
    shell:
        "$MEDMIX_PY -m medmix tables --metrics {input.metrics} --out-dir results/tables > {log} 2>&1"
