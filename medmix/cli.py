"""`python -m medmix <verb>` (also installed as `medmix`): what each Snakemake rule calls.

Every verb takes its settings either from a config file (`--config config.yaml`, validated) or,
as the workflow passes them, from `--job JSON` (exactly the config subset the job depends on,
which is also the rule's rerun trigger).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from medmix.io import MedmixError


def _job(args, build) -> dict:
    """The job's settings: `--job JSON` as the rule passes it (exactly the config subset the job
    depends on, also the rule's rerun trigger), else built from `--config FILE` (validated)."""
    if getattr(args, "job", None):
        try:
            return json.loads(args.job)
        except json.JSONDecodeError as e:
            raise MedmixError(f"--job is not valid JSON: {e}") from None
    from medmix import config
    cfg = config.load(args.config) if args.config else config.validate(
        {"targets": [], "datasets": {}, "encoders": {}}, source="built-in defaults")
    return build(cfg)


def cmd_synth(args) -> None:
    from medmix import synth_layouts
    from medmix.synth import synth_mimic4
    make = {"mimic4": synth_mimic4, "openi": synth_layouts.synth_openi, "mimic3": synth_layouts.synth_mimic3,
            "ccrcc": synth_layouts.synth_ccrcc}[args.kind]
    extra = {"density": args.density} if args.density != 1.0 else {}
    if extra and args.kind != "mimic4":
        raise MedmixError(f"synth --density: only for --kind mimic4 (chartevents), not {args.kind}")
    counts = make(args.out, n=args.n, seed=args.seed, **extra)
    print(json.dumps(counts))


_KIND_BY_NAME = {"openi": "openi", "mimic3": "mimic3", "ccrcc": "ccrcc"}


def cmd_prepare(args) -> None:
    from medmix import config
    from medmix.data import cohort as cohort_mod
    from medmix.data.common import log
    from medmix.data.loaders import build as build_cohort

    def build(cfg):
        if args.dataset not in cfg["datasets"]:  # not in the config: the kind's schema defaults
            kind = args.kind or _KIND_BY_NAME.get(args.dataset, "mimic4")
            if kind == "manifest":
                raise MedmixError(f"dataset {args.dataset}: a manifest dataset needs a config entry with its tasks "
                                  "(--config FILE)")
            cfg["datasets"][args.dataset] = config.default_dataset(kind)
        return config.prepare_job(cfg, args.dataset)

    job = _job(args, build)
    root = args.root or job.get("root")
    if not root:
        raise MedmixError(f"dataset {args.dataset}: no raw data root (give --root or set datasets/{args.dataset}/root)")
    optional = sorted(set(job.get("optional_tables") or []) | set(args.optional_tables or []))
    out = Path(args.out)
    cohort, report = build_cohort(job["kind"], job, root, optional, out.parent)
    cohort, report = cohort_mod.finalize(cohort, report)
    report["dataset"] = args.dataset
    report["kind"] = job["kind"]
    report["spec"] = job
    report["optional_tables"] = optional
    for section in ("exclusions", "missing", "counts"):
        log.info("%s %s: %s", args.dataset, section, json.dumps(report[section], sort_keys=True))
    cohort_mod.write(cohort, report, out)
    print(json.dumps({k: report[k] for k in ("counts", "exclusions", "missing")}, indent=1))


def cmd_embed(args) -> None:
    from medmix import config
    from medmix.embed import parse_shard, run_embed
    job = _job(args, lambda cfg: config.embed_job(cfg, "", args.modality, args.encoder))
    summary = run_embed(args.cohort, args.modality, args.encoder, job["spec"], args.out, device=args.device,
                        workers=args.workers, shard=parse_shard(args.shard), checkpoint_every=args.checkpoint_every,
                        progress=not args.quiet)
    print(json.dumps(summary))


def cmd_merge(args) -> None:
    from medmix import config
    from medmix.embed import merge_shards
    job = _job(args, lambda cfg: config.embed_job(cfg, "", args.modality, args.encoder))
    print(json.dumps(merge_shards(args.cohort, args.modality, args.encoder, job["spec"], args.shards, args.out)))


def _caches(files, results: str, dataset: str):
    """The caches a verb reads: the files the rule declared (`--embeddings`), else the workflow's
    layout under `--results`."""
    from medmix.inputs import Caches
    return Caches.of_files(files) if files is not None else Caches.under(results, dataset)


def _cohort(args, dataset: str) -> Path:
    return Path(args.cohort) if args.cohort else Path(args.results) / dataset / "cohort.parquet"


def cmd_train(args) -> None:
    from medmix import config
    from medmix.masks import parse_drop
    from medmix.train import train_run, train_seeds
    job = _job(args, lambda cfg: config.train_job(cfg, args.dataset, args.method))
    if args.drop:
        job["drop"] = {**parse_drop(args.drop), "seed": args.drop_seed}
    rec = json.loads(Path(args.tuning).read_text()) if args.tuning else None
    kw = dict(cohort=_cohort(args, args.dataset), caches=_caches(args.embeddings, args.results, args.dataset),
              device=args.device, progress=not args.quiet, tuned=rec["best"]["params"] if rec else None,
              tuning_budget=rec["budget"] if rec else None)
    if args.seeds:
        runs = train_seeds(job, args.seeds, args.out, **kw)
    else:
        runs = [train_run(job, args.seed, args.out, **kw)]
    for m in runs:
        print(json.dumps({k: m.get(k) for k in ("method", "seed", "best_epoch", "test")}))


def cmd_tune(args) -> None:
    from medmix import config
    from medmix.tune import tune

    def build(cfg):
        if cfg["tuning"] is None:
            raise MedmixError(f"{args.config}: `tuning` is null: nothing to tune (set tuning: {{trials: N}})")
        return {"train": config.train_job(cfg, args.dataset, args.method), "tuning": cfg["tuning"]}
    job = _job(args, build)
    res = tune(job["train"], _cohort(args, args.dataset), _caches(args.embeddings, args.results, args.dataset),
               job["tuning"], args.out, device=args.device, progress=not args.quiet)
    print(json.dumps({"method": res["method"], "best": res["best"], "trials": res["budget"]["trials"]}))


def cmd_aggregate(args) -> None:
    from medmix.experiments.aggregate import aggregate, markdown_table
    res = aggregate(args.dataset, args.runs, args.out, cohort_json=args.cohort_json, n_boot=args.bootstrap)
    print(markdown_table(res))


def cmd_crosscohort(args) -> None:
    from medmix.experiments.crosscohort import crosscohort
    from medmix.run import Run
    source = Run.load(args.runs[0]).dataset
    res = crosscohort(args.runs, _cohort(args, args.target), _caches(args.embeddings, args.results, args.target),
                      _caches(args.source_embeddings, args.results, source), args.target, args.out,
                      n_boot=args.bootstrap)
    for name, e in res["methods"].items():
        k = next(iter(e["target"]))  # the task's first metric (AUROC for binary tasks)
        print(name, f"target {k}", e["target"][k]["mean"], f"source test {k}", e["source_test"][k]["mean"])


def cmd_crosstable(args) -> None:
    from medmix.experiments.crosscohort import cross_cohort_table
    print(cross_cohort_table(args.metrics, args.out))


def cmd_robustness(args) -> None:
    from medmix.experiments.robustness import evaluate_run, summarize
    from medmix.io import write_json
    cohort, caches = _cohort(args, args.dataset), _caches(args.embeddings, args.results, args.dataset)
    mechanisms = json.loads(args.mechanisms) if args.mechanisms else []
    memo: dict = {}  # every run re-predicts under the same masks: draw each once
    evals = [evaluate_run(r, cohort, caches, args.rates, args.mask_seed, mechanisms, memo) for r in args.runs]
    res = summarize(args.dataset, evals, args.drop_runs, args.base_runs)
    write_json(args.out, res)
    k = res["primary"]
    for method, curve in res["test_drop"].items():
        print(method, k, {r: None if v[k]["mean"] is None else round(v[k]["mean"], 4) for r, v in curve.items()})


def cmd_efficiency(args) -> None:
    from medmix.experiments.efficiency import measure
    from medmix.io import write_json
    from medmix.run import Run
    encoders = _job(args, lambda cfg: cfg["encoders"])
    dataset = Run.load(args.runs[0]).dataset
    res = measure(args.runs, _cohort(args, dataset), _caches(args.embeddings, args.results, dataset), encoders,
                  samples=args.samples, warmup=args.warmup, threads=args.threads)
    write_json(args.out, res)
    for method, e in res["methods"].items():
        print(f"{method}: {e['params_total']:,} params, {e['flops_total'] / 1e9:.3f} GFLOPs, "
              f"{e['latency_ms']['median']:.1f} ms/sample, teacher encoders called: {e['teacher_encoders_called']}")


def cmd_subgroups(args) -> None:
    from medmix.experiments.subgroups import subgroups
    res = subgroups(args.dataset, args.cohort, args.runs, args.out, args.table, n_boot=args.bootstrap,
                    min_n=args.min_n)
    for method, g in res["largest_gap"].items():
        print(f"{method}: largest {res['metric']} gap {g['gap']:.3f} ({g['variable']}: {g['best']} vs {g['worst']})")


def cmd_figure(args) -> None:
    from medmix.experiments import figures
    if args.kind == "robustness":
        figures.robustness(args.inputs, args.fig_dir, args.table_dir)
    elif args.kind == "ablation":
        figures.ablation(args.inputs, args.fig, args.table)
    elif args.kind == "teacher_ablation":
        figures.ablation(args.inputs, args.fig, args.table, figures.TEACHER_ABLATIONS, ref="medmix_noteacher",
                         title="Teacher ablation", splits=("val", "test"), metrics=figures.TEACHER_METRICS)
    elif args.kind == "efficiency":
        figures.efficiency(args.inputs, args.fig, args.table)
    elif args.kind == "calibration":
        figures.calibration(args.dataset, args.inputs, args.fig)
    else:
        figures.weights(args.dataset, args.inputs, args.fig)
    print(f"figure {args.kind} written")


def cmd_tables(args) -> None:
    from medmix.experiments.aggregate import main_tables
    main_tables(args.metrics, args.out_dir)
    print((Path(args.out_dir) / "main.md").read_text())


def cmd_export(args) -> None:
    from medmix.bundle import export
    from medmix.run import Run
    meta = export(args.run, args.out, caches=_caches(args.embeddings, args.results, Run.load(args.run).dataset))
    print(json.dumps({k: meta[k] for k in ("method", "dataset", "seed", "threshold")}))


def cmd_predict(args) -> None:
    from medmix.bundle import predict, predict_raw
    if bool(args.embeddings) == bool(args.cohort):
        raise MedmixError("predict: give exactly one of --embeddings (cached expert embeddings) or --cohort (raw inputs)")
    if args.cohort:
        df = predict_raw(args.bundle, args.cohort, args.out, device=args.device)
    else:
        df = predict(args.bundle, args.embeddings, args.out)
    print(f"{df.height} predictions written to {args.out}")


def _inputs_args(s, what: str = "the caches the runs read") -> None:
    s.add_argument("--cohort", help="cohort.parquet (default: RESULTS/DATASET/cohort.parquet)")
    s.add_argument("--embeddings", nargs="*", metavar="H5",
                   help=f"{what}, as the rule declares them (default: RESULTS/DATASET/embeddings/...)")
    s.add_argument("--results", default="results", help="results root, for what --cohort/--embeddings leave out")


def build_parser() -> argparse.ArgumentParser:
    from medmix.data.loaders import list_loaders
    p = argparse.ArgumentParser(prog="medmix", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="verb", required=True)
    # option groups several verbs share (argparse parents)
    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("--config", help="config file (YAML or JSON), validated; the workflow passes --job instead")
    job.add_argument("--job", help=argparse.SUPPRESS)
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    device.add_argument("--gpu-slots", type=int, default=None, metavar="N",
                        help="take one of N GPU slots (lock files) and use only its GPU; default $MEDMIX_GPU_SLOTS, "
                             "unset = off (see medmix/gpu.py, docs/hpc.md)")
    device.add_argument("--quiet", action="store_true", help="no progress bar")

    s = sub.add_parser("synth", help="write a synthetic raw dataset in a real layout (MIMIC-IV, OpenI XML, "
                                     "MIMIC-III CSVs, ccRCC folder)")
    s.add_argument("--kind", choices=["mimic4", "openi", "mimic3", "ccrcc"], default="mimic4")
    s.add_argument("--out", required=True)
    s.add_argument("--n", type=int, default=1500, help="patients")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--density", type=float, default=1.0,
                   help="mimic4: chartevents rows per stay × this (rows of items no loader reads; MIMIC-IV "
                        "has ~4,300 per stay, the default ~500)")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("prepare", help="raw dataset → cohort.parquet + cohort.json", parents=[job])
    s.add_argument("dataset")
    s.add_argument("--root", help="raw data root (overrides the config)")
    s.add_argument("--out", required=True)
    s.add_argument("--kind", choices=[k for k in list_loaders() if k != "manifest"],
                   help="loader for a dataset that is not in the config (default: by name, else mimic4)")
    s.add_argument("--optional-tables", nargs="+", default=[], metavar="NAME",
                   help="sources that may be absent (their modality is then missing); adds to the config's")
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("embed", help="one modality × encoder of a cohort → HDF5 embedding cache",
                       parents=[job, device])
    s.add_argument("--cohort", required=True)
    s.add_argument("--modality", required=True)
    s.add_argument("--encoder", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--workers", type=int, default=0, help="image-decoding worker processes")
    s.add_argument("--shard", help="I/N: encode shard I of N (batches k with k %% N == I) into a shard file for `merge`")
    s.add_argument("--checkpoint-every", type=int, default=20, metavar="BATCHES",
                   help="write finished batches to the resume checkpoint this often (also every 5 minutes)")
    s.set_defaults(func=cmd_embed)

    s = sub.add_parser("merge", help="shard files of one embed → the cache an unsharded run writes", parents=[job])
    s.add_argument("--cohort", required=True)
    s.add_argument("--modality", required=True)
    s.add_argument("--encoder", required=True)
    s.add_argument("--shards", nargs="+", required=True, help="shard files, in any order")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_merge)

    s = sub.add_parser("train", help="cached embeddings → model.pt, metrics.json, predictions.parquet",
                       parents=[job, device])
    s.add_argument("--dataset", required=True)
    s.add_argument("--method", required=True)
    seeds = s.add_mutually_exclusive_group(required=True)
    seeds.add_argument("--seed", type=int, help="one seed; its files go in --out")
    seeds.add_argument("--seeds", type=int, nargs="+",
                       help="every seed of the job, trained in this process (caches read once); seed s goes in "
                            "--out/seed{s}/")
    s.add_argument("--out", required=True)
    _inputs_args(s)
    s.add_argument("--drop", help="train-time drop: MODALITY:RATE (that modality removed from a fraction RATE of "
                                  "the training samples) or multi:RATE (each modality of each training sample)")
    s.add_argument("--drop-seed", type=int, default=0, help="seed of the train-time drop masks (shared by all methods)")
    s.add_argument("--tuning", help="the method's results/{dataset}/tuning/{method}.json: its best parameters replace "
                                    "the config's")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("tune", help="cached embeddings → the method's best hyperparameters on the validation split "
                                    "(seeded TPE, the config's budget) → tuning/{method}.json", parents=[job, device])
    s.add_argument("--dataset", required=True)
    s.add_argument("--method", required=True)
    s.add_argument("--out", required=True)
    _inputs_args(s)
    s.set_defaults(func=cmd_tune)

    s = sub.add_parser("aggregate", help="runs of a dataset → metrics.json (mean ± sd over seeds, bootstrap CI)")
    s.add_argument("--dataset", required=True)
    s.add_argument("--runs", nargs="+", required=True, help="run directories")
    s.add_argument("--out", required=True)
    s.add_argument("--cohort-json")
    s.add_argument("--bootstrap", type=int, default=1000)
    s.set_defaults(func=cmd_aggregate)

    s = sub.add_parser("crosscohort", help="runs trained on a source dataset, unchanged, on every sample of a "
                                           "target cohort → target metrics.json beside the source test metrics")
    s.add_argument("--target", required=True, help="target dataset (results/TARGET/cohort.parquet and embeddings)")
    s.add_argument("--runs", nargs="+", required=True, help="source run directories")
    _inputs_args(s, "the target's caches of the runs' frozen experts")
    s.add_argument("--source-embeddings", nargs="*", metavar="H5",
                   help="the runs' own expert caches (source dataset: fits and hashes); default: under --results")
    s.add_argument("--out", required=True)
    s.add_argument("--bootstrap", type=int, default=0, help="bootstrap resamples for a 95%% CI per run")
    s.set_defaults(func=cmd_crosscohort)
    s = sub.add_parser("crosstable", help="cross-cohort metrics.json files → results/tables/cross_cohort.md")
    s.add_argument("--metrics", nargs="+", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_crosstable)

    s = sub.add_parser("robustness", help="runs → robustness.json: test-time drop curve (shared masks), paired vs "
                                          "partial test sets, modality subsets, train-time drop curves")
    s.add_argument("--dataset", required=True)
    s.add_argument("--runs", nargs="+", required=True, help="main run directories evaluated at test time")
    s.add_argument("--base-runs", nargs="*", default=[], help="main runs of the swept methods (rate 0 of the train-time curves)")
    s.add_argument("--drop-runs", nargs="*", default=[], help="train-time drop run directories")
    s.add_argument("--rates", nargs="+", type=float, default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    s.add_argument("--mask-seed", type=int, default=0, help="seed of the test-time drop masks (shared by all runs)")
    s.add_argument("--mechanisms", default="", metavar="JSON",
                   help="missingness mechanisms beside MCAR (the config's robustness/mechanisms, as JSON)")
    _inputs_args(s)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_robustness)

    s = sub.add_parser("efficiency", help="one run per method → parameters, FLOPs and latency of the deployed stack",
                       parents=[job])
    s.add_argument("--runs", nargs="+", required=True)
    _inputs_args(s)
    s.add_argument("--samples", type=int, default=16, help="test samples timed (batch 1)")
    s.add_argument("--warmup", type=int, default=2)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_efficiency)

    s = sub.add_parser("subgroups", help="runs → the primary metric per subgroup (sex, age band, race, modality "
                                         "availability) on the test split, and the largest gap per method")
    s.add_argument("--dataset", required=True)
    s.add_argument("--cohort", required=True)
    s.add_argument("--runs", nargs="+", required=True, help="run directories (every method and seed)")
    s.add_argument("--out", required=True, help="subgroups.json")
    s.add_argument("--table", required=True, help="subgroups_{dataset}.md")
    s.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for each subgroup's 95%% CI")
    s.add_argument("--min-n", type=int, default=10, help="smallest subgroup counted in the largest gap")
    s.set_defaults(func=cmd_subgroups)

    s = sub.add_parser("figure", help="figures and tables from robustness.json / metrics.json / efficiency.json / runs")
    s.add_argument("kind", choices=["robustness", "ablation", "teacher_ablation", "efficiency", "weights", "calibration"])
    s.add_argument("--inputs", nargs="+", required=True, help="summary files (weights, calibration: run directories)")
    s.add_argument("--fig", help="output figure (ablation, efficiency, weights)")
    s.add_argument("--table", help="output table (ablation: .md, efficiency: .csv)")
    s.add_argument("--fig-dir", help="robustness: folder of the three figures")
    s.add_argument("--table-dir", help="robustness: folder of missing_subsets.md")
    s.add_argument("--dataset", help="weights, calibration: dataset name")
    s.set_defaults(func=cmd_figure)

    s = sub.add_parser("tables", help="metrics.json of several datasets → results/tables/main.{md,csv,tex}")
    s.add_argument("--metrics", nargs="+", required=True)
    s.add_argument("--out-dir", required=True)
    s.set_defaults(func=cmd_tables)

    s = sub.add_parser("export", help="a run → deploy bundle (student only: no teacher is needed to load or run it)")
    s.add_argument("--run", required=True, help="run directory with model.pt and predictions.parquet")
    s.add_argument("--out", required=True, help="bundle directory")
    _inputs_args(s, "the run's expert caches")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("predict", help="bundle + expert embedding caches (or raw inputs) → predictions.parquet")
    s.add_argument("--bundle", required=True)
    s.add_argument("--embeddings", help="folder with {modality}/{encoder}.h5")
    s.add_argument("--cohort", help="a cohort.parquet made by `medmix prepare`: run the bundle's experts on its raw inputs")
    s.add_argument("--device", default=None, help="for --cohort: cpu, cuda (default: cuda if available)")
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_predict)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        if args.verb in ("embed", "train", "tune"):
            # before anything imports torch: the slot decides CUDA_VISIBLE_DEVICES
            from medmix.gpu import claim_for_process
            claim_for_process(args.gpu_slots, args.device)
        args.func(args)
    except MedmixError as e:
        print(f"medmix {args.verb}: error: {e}", file=sys.stderr)
        return 1
    return 0
