# medmix workflow: raw → cohort → embeddings → runs → metrics.
#
# Output paths (the contract of DESIGN.md):
#   results/{dataset}/raw/                                  synthetic raw data (datasets with `synth:`)
#   results/{dataset}/cohort.parquet, cohort.json           prepare
#   results/{dataset}/embeddings/{modality}/{encoder}.h5    embed: one job per dataset × modality × encoder
#   results/{dataset}/runs/{method}/seed{seed}/             train: model.pt, metrics.json, predictions.parquet
#   results/{dataset}/metrics.json (+ metrics.md)           aggregate
#   results/{dataset}/runs/{method}/drop-{modality|multi}-{rate}/seed{seed}/   train_drop (robustness sweeps)
#   results/{dataset}/robustness.json, efficiency.json      robustness, efficiency
#   results/tables/*.{md,csv,tex}, results/figures/*.png    tables, figure_* (marked for --report)
#   results/{mimic3 dataset}/metrics.json, results/tables/cross_cohort.md   crosscohort, cross_cohort_table
# Wildcards are config slugs. Logs in results/{dataset}/logs/, benchmarks in results/{dataset}/benchmarks/.

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


# defaults are filled by medmix.config.validate (common.smk), the same code the CLI uses
validate(config, schema="workflow/schemas/config.schema.json", set_default=False)


include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/crosscohort.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        all_targets,
