# sdclr: `make install`, `make demo`, `make test`. See README.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The data: SDCLR_DATA if set, else the shared copy next to the checkout, else ./data.
SDCLR_DATA ?= $(if $(wildcard ../shared/data/cifar10-jpg.tar.gz),$(abspath ../shared/data),$(abspath data))
export SDCLR_DATA
SPLITS ?= split1,split2,split3,split4,split5
DIR ?=

.PHONY: install demo test lint format sweep report bench bench-quick gpu-check clean help

help:
	@echo "make install      create $(VENV) and install sdclr with its dev extras"
	@echo "make demo         SDCLR (p90, dual BN) on CIFAR-10-LT split 1: pretrain + linear + few-shot, smoke scale"
	@echo "make test         the test suite (CPU)"
	@echo "make lint         ruff check + format check"
	@echo "make sweep        the paper's comparison: SimCLR vs SDCLR over the five splits (full schedule, GPU)"
	@echo "make report DIR=outputs/multirun/...   aggregate a sweep into report.md and plots"
	@echo "make bench        speed benchmark on the best device found (see BENCHMARKS.md)"
	@echo "make bench-quick  a few steps of the benchmark on the CPU"
	@echo "make gpu-check    run every CUDA-only path once (tests, bench, short runs)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"

# Smoke scale so it finishes in minutes on a 2-core CPU. On a GPU, run the real schedule:
#   make demo DEMO_ARGS=   (empty: the published schedule, 2000 epochs on all of D_i)
DEMO_ARGS ?= smoke=true data.fraction=0.02 pretrain.epochs=3 pretrain.batch_size=16 pretrain.warmup_epochs=1 linear.epochs=4 fewshot.epochs=10 linear.milestones=[2,3] fewshot.milestones=[5,8]
demo:
	$(BIN)/sdclr stage=all prune=p90 split=split1 $(DEMO_ARGS)

test:
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check sdclr tests scripts
	$(BIN)/ruff format --check sdclr tests scripts

format:
	$(BIN)/ruff format sdclr tests scripts
	$(BIN)/ruff check --fix sdclr tests scripts

# The paper's CIFAR-10-LT table (2 methods x 5 splits, 2000 epochs each): needs a GPU.
SWEEP_ARGS ?=
sweep:
	$(BIN)/sdclr -m split=$(SPLITS) prune=none,p90 $(SWEEP_ARGS)

report:
	@test -n "$(DIR)" || (echo "usage: make report DIR=outputs/multirun/<date>/<time>" && exit 2)
	$(BIN)/python -m sdclr.report $(DIR)

bench:
	$(BIN)/python -m sdclr.bench

bench-quick:
	$(BIN)/python -m sdclr.bench --quick

# every CUDA-only path once (tests, benchmark, short CIFAR and 224-px folder runs): needs a GPU
gpu-check:
	$(BIN)/python scripts/gpu_check.py

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache
