# Cross-cohort targets (kind mimic3): results/{dataset}/metrics.json evaluates the runs trained on
# the dataset's `source`, unchanged, on every sample of its cohort, beside their source test results.


ruleorder: crosscohort > aggregate


localrules:
    crosscohort,
    cross_cohort_table,


rule crosscohort:
    input:
        runs=crosscohort_runs,
        cohort="results/{dataset}/cohort.parquet",
        embeddings=crosscohort_embeddings,
        source_embeddings=crosscohort_source_embeddings,
    output:
        metrics=report("results/{dataset}/metrics.json", category="Results", caption="../report/crosscohort.rst"),
    log:
        "results/{dataset}/logs/crosscohort.log",
    wildcard_constraints:
        dataset="|".join(CROSS) or "(?!)",
    conda:
        "../../envs/medmix.yaml"
    params:
        runs=crosscohort_run_dirs,
    shell:
        "$MEDMIX_PY -m medmix crosscohort --target {wildcards.dataset} --runs {params.runs} --cohort {input.cohort} "
        "--embeddings {input.embeddings} --source-embeddings {input.source_embeddings} --out {output.metrics} > {log} 2>&1"


rule cross_cohort_table:
    input:
        metrics=cross_metrics,
    output:
        report("results/tables/cross_cohort.md", category="Results", caption="../report/crosscohort.rst"),
    log:
        "results/logs/cross_cohort_table.log",
    conda:
        "../../envs/medmix.yaml"
    shell:
        "$MEDMIX_PY -m medmix crosstable --metrics {input.metrics} --out {output} > {log} 2>&1"
