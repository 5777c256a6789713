#!/usr/bin/env bash
# The demo study, an old release against this checkout's HEAD, on the old release's grid, one after
# the other on this machine: fresh clones, the environment of this checkout (.venv), `snakemake
# --cores 2 all` then `--report`, each under /usr/bin/time -v. Prints wall time, user CPU, peak RSS,
# the number of train jobs and the ratio.
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
import re, sys
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
o, n = read("old"), read("new")
for name, r in (("old " + sys.argv[1], o), ("new HEAD", n)):
    print(f"{name:14} wall {r[0]:7.1f} s  user CPU {r[1]:7.1f} s  peak RSS {r[2]:.2f} GiB  train jobs {r[3]:3d}  jobs {r[4]}")
print(f"new / old wall time: {n[0] / o[0]:.3f}x")
PY
