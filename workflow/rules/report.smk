# Figures and tables of the paper's experiments over the target datasets, marked for
# `snakemake --report results/report.html` (one self-contained page).


localrules:
    figure_robustness,
    figure_ablation,
    figure_teacher_ablation,
    figure_efficiency,
    figure_weights,
    figure_calibration,
    subgroups,


rule figure_robustness:
    input:
        target_files("results/{dataset}/robustness.json"),
    output:
        test=report(
            "results/figures/robustness_test.png", category="Robustness", caption="../report/robustness_test.rst"
        ),
        one=report(
            "results/figures/robustness_train_one.png",
            category="Robustness",
            caption="../report/robustness_train_one.rst",
        ),
        multi=report(
            "results/figures/robustness_train_multi.png",
            category="Robustness",
            caption="../report/robustness_train_multi.rst",
        ),
        subsets=report(
            "results/tables/missing_subsets.md", category="Robustness", caption="../report/missing_subsets.rst"
        ),
        mechanisms=report(
            "results/tables/missing_mechanisms.md", category="Robustness", caption="../report/missing_mechanisms.rst"
        ),
        mechanism_figures=[
            report(f, category="Robustness", caption="../report/robustness_mechanism.rst") for f in mechanism_figures()
        ],
    log:
        "results/logs/figure_robustness.log",
    conda:
        "../../envs/medmix.yaml"
    shell:
        "$MEDMIX_PY -m medmix figure robustness --inputs {input} --fig-dir results/figures --table-dir results/tables > {log} 2>&1"


rule figure_ablation:
    input:
        all_metrics,
    output:
        fig=report("results/figures/ablation.png", category="Ablation", caption="../report/ablation.rst"),
        table=report("results/tables/ablation.md", category="Ablation", caption="../report/ablation_table.rst"),
    log:
        "results/logs/figure_ablation.log",
    conda:
        "../../envs/medmix.yaml"
    shell:
        "$MEDMIX_PY -m medmix figure ablation --inputs {input} --fig {output.fig} --table {output.table} > {log} 2>&1"


rule figure_teacher_ablation:
    input:
        all_metrics,
    output:
        fig=report(
            "results/figures/teacher_ablation.png", category="Ablation", caption="../report/teacher_ablation.rst"
        ),
        table=report(
            "results/tables/teacher_ablation.md", category="Ablation", caption="../report/teacher_ablation.rst"
        ),
    log:
        "results/logs/figure_teacher_ablation.log",
    conda:
        "../../envs/medmix.yaml"
    shell:
        "$MEDMIX_PY -m medmix figure teacher_ablation --inputs {input} --fig {output.fig} --table {output.table} > {log} 2>&1"


rule figure_efficiency:
    input:
        target_files("results/{dataset}/efficiency.json"),
    output:
        fig=report("results/figures/efficiency.png", category="Efficiency", caption="../report/efficiency.rst"),
        table=report("results/tables/efficiency.csv", category="Efficiency", caption="../report/efficiency_table.rst"),
    log:
        "results/logs/figure_efficiency.log",
    conda:
        "../../envs/medmix.yaml"
    shell:
        "$MEDMIX_PY -m medmix figure efficiency --inputs {input} --fig {output.fig} --table {output.table} > {log} 2>&1"


rule figure_weights:
    input:
        weights_runs,
    output:
        report("results/figures/weights_{dataset}.png", category="Interpretability", caption="../report/weights.rst"),
    log:
        "results/{dataset}/logs/figure_weights.log",
    conda:
        "../../envs/medmix.yaml"
    params:
        runs=prediction_dirs,
    shell:
        "$MEDMIX_PY -m medmix figure weights --dataset {wildcards.dataset} --inputs {params.runs} --fig {output} > {log} 2>&1"


rule figure_calibration:
    input:
        calibration_runs,
    output:
        report("results/figures/calibration_{dataset}.png", category="Calibration", caption="../report/calibration.rst"),
    log:
        "results/{dataset}/logs/figure_calibration.log",
    conda:
        "../../envs/medmix.yaml"
    params:
        runs=prediction_dirs,
    shell:
        "$MEDMIX_PY -m medmix figure calibration --dataset {wildcards.dataset} --inputs {params.runs} --fig {output} > {log} 2>&1"


rule subgroups:
    input:
        cohort="results/{dataset}/cohort.parquet",
        runs=dataset_runs,
        predictions=calibration_runs,
    output:
        json="results/{dataset}/subgroups.json",
        table=report("results/tables/subgroups_{dataset}.md", category="Subgroups", caption="../report/subgroups.rst"),
    log:
        "results/{dataset}/logs/subgroups.log",
    conda:
        "../../envs/medmix.yaml"
    params:
        runs=run_dirs,
        bootstrap=config["train"]["bootstrap"],
    shell:
        "$MEDMIX_PY -m medmix subgroups --dataset {wildcards.dataset} --cohort {input.cohort} --runs {params.runs} "
        "--out {output.json} --table {output.table} --bootstrap {params.bootstrap} > {log} 2>&1"
