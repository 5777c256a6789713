# The two entry points of the README: `make demo` and `make test`. Both build .venv themselves.
PY      ?= python3
VENV    ?= .venv
PYBIN   := $(VENV)/bin/python
STAMP   := $(VENV)/.medmix-installed
CORES   ?= all
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: venv demo test soak lint clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PYBIN) || $(PY) -m venv $(VENV)
	$(PYBIN) -m pip install --quiet --upgrade pip
	$(PYBIN) -m pip install --quiet -r requirements.txt
	$(PYBIN) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Synthesise the embedded MIMIC-IV-layout dataset, run the whole DAG (the `all` target of
# config.yaml: results/demo/metrics.json, results/tables/*, results/figures/*), write the HTML
# report and print the results table.
# SLURM_CONF=/dev/null: a local run needs no SLURM; with SLURM's client tools installed and no
# controller reachable, Snakemake's SLURM plugin would wait ~9 s at every start (`scontrol show config`)
demo: $(STAMP)
	SLURM_CONF=/dev/null $(PYBIN) -m snakemake --cores $(CORES) all
	SLURM_CONF=/dev/null $(PYBIN) -m snakemake --report results/report.html all
	@cat results/demo/metrics.md
	@echo "Report (every table and figure): results/report.html"

test: $(STAMP)
	$(PYBIN) -m pytest -q --durations=25 tests

# The reliability soak (tests/reliability/test_workflow_runs.py, docs/reliability.md): the tiny DAG killed
# at random three times, then completed; its metrics must equal a clean run's (about 2 min).
soak: $(STAMP)
	$(PYBIN) -m pytest -q -m soak tests/reliability

lint: $(STAMP)
	$(PYBIN) -m snakemake --lint
	$(PYBIN) -m snakefmt --check Snakefile workflow

clean:
	rm -rf results/demo .snakemake
