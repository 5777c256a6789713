# Helpers for the rules: target lists and the per-job specs (the config subset a job depends
# on, passed as --job and used as the rule's params, so a change reruns exactly the jobs it affects).

import json
import shlex
import sys
from pathlib import Path

from medmix import config as mcfg
from medmix.methods import method_caches


def _uses_conda():
    try:
        from snakemake.settings.types import DeploymentMethod

        return DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
    except (ImportError, AttributeError):
        return False


# The jobs run `$MEDMIX_PY -m medmix`, with the Python that runs this Snakefile (the project's venv,
# also on a cluster node of a shared file system), never whichever `python` is first on PATH; under
# --software-deployment-method conda, the job environment's `python`. Set in the shell prefix, so
# the rules' commands (and their rerun triggers) do not depend on where the venv lives.
MEDMIX_PY = "python" if _uses_conda() else shlex.quote(sys.executable)
shell.prefix(f"set -euo pipefail; export MEDMIX_PY={MEDMIX_PY}; ")

# the cache path convention, the one place the workflow spells it (medmix.encoders.cache.cache_path
# is the library's); stages read exactly the files the rules pass them
CACHE = "results/{dataset}/embeddings/{modality}/{encoder}.h5"

# complete the config with the schema's defaults and cross-check encoder and method names
config.update(mcfg.validate(config))

DATASETS = list(config["datasets"])
ENCODERS = list(config["encoders"])
MODALITIES = sorted({m for ds in config["datasets"].values() for m in ds["modalities"]})
# cross-cohort targets: their metrics.json evaluates the source dataset's runs (rule crosscohort)
CROSS = [name for name, ds in config["datasets"].items() if ds["kind"] == "mimic3"]
SHARDED = [s for s, e in config["encoders"].items() if e["shards"] > 1]


def _alternation(names):
    """A wildcard regex matching exactly these slugs (none: a pattern that matches nothing)."""
    return "|".join(names) if names else "(?!x)x"


UNSHARDED_RE = _alternation([s for s in ENCODERS if s not in SHARDED])
SHARDED_RE = _alternation(SHARDED)


wildcard_constraints:
    dataset="|".join(DATASETS),
    modality="|".join(MODALITIES),
    encoder="|".join(ENCODERS),
    method="[a-z0-9_]+",
    seed=r"\d+",


def all_metrics(wildcards):
    """Trained datasets of `targets` (the rows of results/tables/main.*)."""
    return [f"results/{ds}/metrics.json" for ds in config["targets"] if ds not in CROSS]


def cross_metrics(wildcards):
    """Cross-cohort targets (kind mimic3) of `targets`: the rows of results/tables/cross_cohort.md."""
    return [f"results/{ds}/metrics.json" for ds in config["targets"] if ds in CROSS]


def all_targets(wildcards):
    """`all`: every target's metrics.json (cross-cohort ones included), the main table, the figures,
    and the cross-cohort table when a cross-cohort dataset is a target."""
    return (
        [f"results/{ds}/metrics.json" for ds in config["targets"]]
        + ["results/tables/main.md"]
        + FIGURES
        + (["results/tables/cross_cohort.md"] if cross_metrics(wildcards) else [])
    )


def _js(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def raw_input(wildcards):
    """Synthetic datasets depend on their generated raw folder; real ones read `root` (not tracked)."""
    if config["datasets"][wildcards.dataset].get("synth"):
        return f"results/{wildcards.dataset}/raw"
    return []


def raw_root(wildcards):
    ds = config["datasets"][wildcards.dataset]
    return f"results/{wildcards.dataset}/raw" if ds.get("synth") else ds["root"]


def synth_n(wildcards):
    return config["datasets"][wildcards.dataset]["synth"]["n"]


def synth_seed(wildcards):
    return config["datasets"][wildcards.dataset]["synth"]["seed"]


def prepare_job(wildcards):
    return _js(mcfg.prepare_job(config, wildcards.dataset))


def embed_job(wildcards):
    return _js(mcfg.embed_job(config, wildcards.dataset, wildcards.modality, wildcards.encoder))


def embed_weights(wildcards):
    """Local weight files of the encoder (medmix.config.local_weight_files): new weights, new cache."""
    return mcfg.local_weight_files(config["encoders"][wildcards.encoder])


def embed_shard_files(wildcards):
    """The shard files `embed_merge` joins: shards/{encoder}/{i}-of-{n}.h5 for i < n (n from the config)."""
    n = config["encoders"][wildcards.encoder]["shards"]
    shard = CACHE.replace("{encoder}.h5", "shards/{encoder}/{i}-of-{n}.h5")
    return [
        shard.format(dataset=wildcards.dataset, modality=wildcards.modality, encoder=wildcards.encoder, i=i, n=n)
        for i in range(n)
    ]


def embed_resource(wildcards, key):
    """One resource of an embed (or shard) job, from the encoder's `resources:` entry."""
    return config["encoders"][wildcards.encoder]["resources"][key]


def embed_workers(wildcards):
    """Image-decoding workers (run-only `workers:`); a resource, not a param, so changing it reruns nothing."""
    return config["encoders"][wildcards.encoder]["workers"]


def embed_mem_mb(wildcards, attempt):
    """Memory grows with the attempt number (`--retries`), so an out-of-memory kill is retried larger."""
    return embed_resource(wildcards, "mem_mb") * attempt


def embed_runtime(wildcards):
    return embed_resource(wildcards, "runtime")


def embed_gpu(wildcards):
    return embed_resource(wildcards, "gpu")


def embed_threads(wildcards):
    return embed_resource(wildcards, "threads")


# Every cache before any training: a train job waits on all of its method's caches, so a late
# cache (the demo's teacher ViT, 13 s) otherwise holds up the longest train jobs at the end.
EMBED_PRIORITY = 10
# Then the main table's train jobs and the efficiency measurement (it waits on every method's first
# seed, then runs ~20 s alone at the end if the robustness retraining took the cores first).
MAIN_PRIORITY = 5


def seed_files(run_dir, name, seeds):
    """One output file per seed of a train job: {run_dir}/seed{s}/{name}."""
    return [f"{run_dir}/seed{s}/{name}" for s in seeds]


def train_runtime(seeds):
    """Minutes asked for a train job: a margin plus a share per seed it trains."""
    return 30 + 30 * len(seeds)


def train_job(wildcards):
    return _js(mcfg.train_job(config, wildcards.dataset, wildcards.method))


def caches(dataset, methods, inference=False, modalities_of=None):
    """Cache files of `dataset` that `methods` read (medmix.methods.method_caches decides which);
    `modalities_of`: the dataset whose config lists the encoders (cross-cohort: the source)."""
    mods = config["datasets"][modalities_of or dataset]["modalities"]
    pairs = {p for m in methods for p in method_caches(m, mods, inference)}
    return sorted(CACHE.format(dataset=dataset, modality=m, encoder=s) for m, s in pairs)


def tune_job(wildcards):
    """The tune job's trigger: the method's train job and the tuning block (budget and spaces)."""
    return _js({"train": mcfg.train_job(config, wildcards.dataset, wildcards.method), "tuning": config["tuning"]})


def tuning_file(wildcards):
    """The method's tuning record when `tuning` is set (its best parameters replace the config's)."""
    return [f"results/{wildcards.dataset}/tuning/{wildcards.method}.json"] if config["tuning"] else []


def tuning_arg(wildcards, input):
    return f"--tuning {input.tuning}" if input.tuning else ""


def train_embeddings(wildcards):
    """The caches a train job reads: its method's experts (+ teachers where the method has a teacher branch)."""
    return caches(wildcards.dataset, [wildcards.method])


def dataset_runs(wildcards):
    return [
        f"results/{wildcards.dataset}/runs/{m}/seed{s}/metrics.json" for m in config["methods"] for s in config["seeds"]
    ]


def run_dirs(wildcards, input):
    return " ".join(sorted({str(Path(p).parent) for p in input.runs}))


def synth_kind(wildcards):
    return config["datasets"][wildcards.dataset]["kind"]


def _source(wildcards):
    return config["datasets"][wildcards.dataset]["source"]


def crosscohort_runs(wildcards):
    return [
        f"results/{_source(wildcards)}/runs/{m}/seed{s}/model.pt" for m in config["methods"] for s in config["seeds"]
    ]


def crosscohort_run_dirs(wildcards, input):
    return " ".join(sorted({str(Path(p).parent) for p in input.runs}))


def crosscohort_embeddings(wildcards):
    """The target's caches of the source runs' frozen encoders (a fitted encoder is applied in-process
    with its source fit, so it has no target cache)."""
    every = caches(wildcards.dataset, config["methods"], True, _source(wildcards))
    return sorted(set(every) - set(_fitted(every)))


def crosscohort_source_embeddings(wildcards):
    """The source runs' own caches: the fits of fitted encoders and the hashes frozen ones must match."""
    return caches(_source(wildcards), config["methods"], True)


def _fitted(files):
    return [f for f in files if config["encoders"][Path(f).stem]["kind"] in mcfg.FITTED_KINDS]


def inference_embeddings(wildcards):
    """The caches the dataset's trained methods read at inference (robustness)."""
    return caches(wildcards.dataset, config["methods"], True)


def efficiency_embeddings(wildcards):
    """The caches of the deployed fitted encoders: their stored fits (frozen encoders run on raw inputs)."""
    return _fitted(inference_embeddings(wildcards))


# ---- paper experiments: robustness sweeps, efficiency, figures (evaluate.smk, report.smk) ----

from medmix.masks import MULTI, drop_slug

ROB = config["robustness"]
# train-time mechanisms (robustness.train_mechanisms): their runs are drop-<mechanism>-<rate>
TRAIN_MECHANISMS = {m["name"]: m for m in ROB["mechanisms"] if m["name"] in ROB["train_mechanisms"]}


wildcard_constraints:
    drop="(" + "|".join([MULTI] + MODALITIES + list(TRAIN_MECHANISMS)) + r")-[0-9.]+",


def _drops(dataset):
    """Train-time drops of the robustness grid: each modality of the dataset in turn, multi-random,
    then each train-time mechanism (at the multi rates)."""
    mods = sorted(config["datasets"][dataset]["modalities"])
    return (
        [{"modality": m, "rate": r} for m in mods for r in ROB["train_one_rates"]]
        + [{"modality": MULTI, "rate": r} for r in ROB["train_multi_rates"]]
        + [{"modality": n, "rate": r} for n in TRAIN_MECHANISMS for r in ROB["train_multi_rates"]]
    )


def drop_runs(wildcards):
    return [
        f"results/{wildcards.dataset}/runs/{m}/{drop_slug(d)}/seed{s}/metrics.json"
        for d in _drops(wildcards.dataset)
        for m in ROB["methods"]
        for s in ROB["seeds"]
    ]


def base_runs(wildcards):
    """The main runs of the swept methods and seeds: the rate-0 point of the train-time curves."""
    return [f"results/{wildcards.dataset}/runs/{m}/seed{s}/metrics.json" for m in ROB["methods"] for s in ROB["seeds"]]


def train_drop_job(wildcards):
    mod, _, rate = wildcards.drop.rpartition("-")
    spec = mcfg.train_job(config, wildcards.dataset, wildcards.method)
    spec["drop"] = {"modality": mod, "rate": float(rate), "seed": ROB["mask_seed"]}
    if mod in TRAIN_MECHANISMS:
        spec["drop"]["mechanism"] = TRAIN_MECHANISMS[mod]
    return _js(spec)


def robustness_params(wildcards, input):
    def dirs(files):
        return " ".join(sorted({str(Path(p).parent) for p in files}))

    return {
        "runs": dirs(input.runs),
        "drop": dirs(input.drop_runs),
        "base": dirs(input.base_runs),
        "rates": " ".join(str(float(r)) for r in ROB["test_rates"]),
    }


def efficiency_runs(wildcards):
    """One run (the first seed) of every method: its model.pt names the encoders it needs."""
    s = config["seeds"][0]
    return [f"results/{wildcards.dataset}/runs/{m}/seed{s}/model.pt" for m in config["methods"]]


def efficiency_job(wildcards):
    """Encoder descriptions of the dataset without run-only keys (the rerun trigger of the measurement)."""
    ds = config["datasets"][wildcards.dataset]
    return _js(
        {
            s: mcfg.encoder_identity(config["encoders"][s])
            for m in ds["modalities"].values()
            for s in m["experts"] + m["teachers"]
        }
    )


def weights_runs(wildcards):
    return [
        f"results/{wildcards.dataset}/runs/{config['weights_method']}/seed{s}/predictions.parquet"
        for s in config["seeds"]
    ]


def calibration_runs(wildcards):
    """Every method and seed of the dataset: its reliability diagram."""
    return [
        f"results/{wildcards.dataset}/runs/{m}/seed{s}/predictions.parquet"
        for m in config["methods"]
        for s in config["seeds"]
    ]


def prediction_dirs(wildcards, input):
    return " ".join(str(Path(p).parent) for p in input)


def target_files(pattern):
    def inputs(wildcards):
        return [pattern.format(dataset=ds) for ds in config["targets"] if ds not in CROSS]

    return inputs


def mechanism_figures():
    """One robustness figure per configured missingness mechanism (medmix.experiments.figures.mechanisms)."""
    return [f"results/figures/robustness_{m['name']}.png" for m in config["robustness"]["mechanisms"]]


FIGURES = (
    [
        "results/figures/robustness_test.png",
        "results/figures/robustness_train_one.png",
        "results/figures/robustness_train_multi.png",
        "results/tables/missing_subsets.md",
        "results/tables/missing_mechanisms.md",
        *mechanism_figures(),
        "results/figures/ablation.png",
        "results/tables/ablation.md",
        "results/figures/teacher_ablation.png",
        "results/tables/teacher_ablation.md",
        "results/figures/efficiency.png",
        "results/tables/efficiency.csv",
    ]
    + [
        f"results/figures/{kind}_{ds}.png"
        for kind in ("weights", "calibration")
        for ds in config["targets"]
        if ds not in CROSS
    ]
    + [f"results/tables/subgroups_{ds}.md" for ds in config["targets"] if ds not in CROSS]
)
