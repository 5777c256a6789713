#!/usr/bin/env bash
# The demo study, an old release against this checkout's HEAD, on the old release's grid, one after
# the other on this machine: fresh clones, the environment of this checkout (.venv), `snakemake
# --cores 2 all` then `--report`, each under /usr/bin/time -v. Prints wall time, user CPU, peak RSS,
# the number of train jobs, the phases (from the job timestamps of the logs) and the ratio.
#
#   benchmarks/demo_compare.sh [OLD_REF] [WORK_DIR]     # default 541b2c1 (9 methods, 110 jobs)
#
# The new side runs with benchmarks/demo_grid_541b2c1.yaml over config.yaml (for another OLD_REF,
# write its grid as such an overlay: DEMO_GRID=path).
set -euo pipefail
old=${1:-541b2c1}
work=${2:-/tmp/medmix-demo-compare}
repo=$(git rev-parse --show-toplevel)
grid=${DEMO_GRID:-$repo/benchmarks/demo_grid_541b2c1.yaml}
py=$repo/.venv/bin
rm -rf "$work" && mkdir -p "$work"
git clone -q "$repo" "$work/old" && git -C "$work/old" checkout -q "$old"
git clone -q "$repo" "$work/new"
export SLURM_CONF=/dev/null PATH=$py:$PATH
for side in old new; do
  cd "$work/$side"
  ln -s "$repo/.venv" .venv
  extra=()
  [ "$side" = new ] && extra=(--configfile config.yaml "$grid")
  # PYTHONPATH: each clone's own medmix, whatever the shared environment has installed
  PYTHONPATH=$PWD /usr/bin/time -v -o "$work/time_$side.txt" bash -c \
    'python -m snakemake --cores 2 all "$@" && python -m snakemake --report results/report.html all "$@"' _ "${extra[@]}" \
    > "$work/snakemake_$side.log" 2>&1
done
cd "$work"
python3 - "$old" <<'PY'
import glob, re, sys
from datetime import datetime
def read(side):
    t = open(f"time_{side}.txt").read()
    h, m, s = (["0"] + re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", t).group(1).split(":"))[-3:]
    wall = 3600 * float(h) + 60 * float(m) + float(s)
    user = float(re.search(r"User time \(seconds\): ([\d.]+)", t).group(1))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1)) / 2**20
    log = open(f"snakemake_{side}.log").read()
    train = len(re.findall(r"^(?:local)?rule train(?:_drop)?:", log, re.M))
    steps = re.findall(r"(\d+) of (\d+) steps \(100%\) done", log)[-1][1]
    return wall, user, rss, train, steps
def phases(side):
    """Seconds from the first job's start: (start, end) of synth+prepare, the embed jobs and the
    train jobs, and the last job's end, from the job timestamps of the Snakemake log."""
    jobs, ts, rule = {}, None, None
    for line in open(f"snakemake_{side}.log"):
        if m := re.match(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", line):
            ts = datetime.strptime(re.sub(" +", " ", m.group(1)), "%a %b %d %H:%M:%S %Y")
        elif m := re.match(r"(?:local)?rule (\w+):", line):
            rule = m.group(1)
        elif (m := re.match(r"\s+jobid: (\d+)", line)) and rule:
            jobs[m.group(1)], rule = [rule, ts, None], None
        elif (m := re.match(r"Finished job(?:id:)? (\d+)", line)) and m.group(1) in jobs:
            jobs[m.group(1)][2] = ts
    t0 = min(j[1] for j in jobs.values())
    def span(rules):
        js = [j for j in jobs.values() if j[0] in rules and j[2]]
        return tuple((t - t0).total_seconds() for t in (min(j[1] for j in js), max(j[2] for j in js)))
    end = max((j[2] - t0).total_seconds() for j in jobs.values() if j[2])
    return span({"synth", "prepare"}), span({"embed", "embed_shard", "embed_merge"}), span({"train", "train_drop"}), end
def job_wall(side, stage):
    """Summed wall time of a stage's jobs (the `s` column of their Snakemake benchmark files)."""
    return sum(float(open(f).read().splitlines()[-1].split()[0])
               for f in glob.glob(f"{side}/results/*/benchmarks/{stage}/**/*.tsv", recursive=True))
o, n = read("old"), read("new")
for name, side, r in (("old " + sys.argv[1], "old", o), ("new HEAD", "new", n)):
    print(f"{name:14} wall {r[0]:7.1f} s  user CPU {r[1]:7.1f} s  peak RSS {r[2]:.2f} GiB  train jobs {r[3]:3d}  jobs {r[4]}")
    prep, emb, tr, end = phases(side)
    print(f"{'':14} synth+prepare {prep[1] - prep[0]:.0f} s, embed {emb[0]:.0f}-{emb[1]:.0f} s ({emb[1] - emb[0]:.0f} s), "
          f"train {tr[0]:.0f}-{tr[1]:.0f} s ({tr[1] - tr[0]:.0f} s), last job ends at {end:.0f} s; job wall time: "
          f"embed {job_wall(side, 'embed'):.0f} s, train {job_wall(side, 'train'):.0f} s")
print(f"new / old wall time: {n[0] / o[0]:.3f}x")
PY
