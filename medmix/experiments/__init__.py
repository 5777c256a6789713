"""The paper's experiments on trained runs: aggregation over seeds, missing-modality robustness,
cross-cohort transfer, efficiency of the deployed stack, and the figures and tables of the report.
Each reads runs through medmix.run, never a checkpoint directly."""
