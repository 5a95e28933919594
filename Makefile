# sdclr: `make install`, `make demo`, `make test`. See README.md.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The data: SDCLR_DATA if set, else the shared copy next to the checkout, else ./data.
SDCLR_DATA ?= $(if $(wildcard ../shared/data/cifar10-jpg.tar.gz),$(abspath ../shared/data),$(abspath data))
export SDCLR_DATA
SPLITS ?= split1,split2,split3,split4,split5
DIR ?=

# The exact versions the suite was last tested with (a pip constraints file, written by
# `make lock`); `make install LOCK=` installs the newest versions pyproject.toml allows.
LOCK ?= requirements.lock
LOCK_VENV ?= .venv-lock
# Tests run in TEST_WORKERS processes (pytest-xdist), one thread each, a file per worker at a
# time (module fixtures are built once); TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
PYTEST = OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

.PHONY: install lock demo test test-fast lint format sweep report bench bench-quick gpu-check gpu-check-dry gpu-check-device clean help

help:
	@echo "make install      create $(VENV) and install sdclr with its dev extras, at the versions of $(LOCK)"
	@echo "make install LOCK=   the same with the newest versions pyproject.toml allows"
	@echo "make lock         resolve the newest versions in a fresh $(LOCK_VENV), run the tests there, then write $(LOCK)"
	@echo "make demo         SDCLR (p90, dual BN) on CIFAR-10-LT split 1, small scale: pretrained vs random init (SEED=0)"
	@echo "make test         the whole test suite (CPU), the numerics tests again on oneDNN's AVX2 kernels"
	@echo "make test-fast    the unit tests alone: no subprocess runs, no CIFAR data (under 2 minutes)"
	@echo "make lint         ruff check + format check"
	@echo "make sweep        the paper's comparison: SimCLR vs SDCLR over the five splits (full schedule, GPU)"
	@echo "make report DIR=outputs/multirun/...   (re)build a sweep's report.md and plots (a sweep writes them as it ends)"
	@echo "make bench        speed benchmark on the best device found (see BENCHMARKS.md)"
	@echo "make bench-quick  a few steps of the benchmark on the CPU"
	@echo "make gpu-check    on a GPU: env, default run, speed, CUDA tests, accuracy, 224 px, in 480 s"
	@echo "make gpu-check-dry   the same plan on the CPU at toy sizes (1-2 minutes)"
	@echo "make gpu-check-device   fill .gpu/ and print the device call's one command"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

install: $(BIN)/python
	$(BIN)/python -m pip install $(if $(LOCK),-c $(LOCK)) --upgrade pip
	$(BIN)/python -m pip install $(if $(LOCK),-c $(LOCK)) -e ".[dev]"

# A fresh resolve in its own venv; the lock is replaced only when the whole suite passes there.
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install -e ".[dev]"
	{ echo "# sdclr's tested environment: a pip constraints file for make install, written by make lock"; \
	  echo "# on $$(date -u +%Y-%m-%d) with $$($(LOCK_VENV)/bin/python -V) on $$(uname -sm) from a fresh resolve of pyproject.toml."; \
	  echo "# make install LOCK= installs the newest versions pyproject.toml allows instead."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable; } > $(LOCK).new
	$(MAKE) test BIN=$(LOCK_VENV)/bin
	mv $(LOCK).new $(LOCK)
	rm -rf $(LOCK_VENV)

# Small enough for about 4 minutes on a 2-core CPU, large enough to show learning: 20% of the
# data, a quarter-width ResNet-18, 6 epochs, frozen-feature probes over a learning-rate grid,
# and the same probes on the random-init encoder (the baseline). On a GPU, run the real schedule:
#   make demo DEMO_ARGS=   (empty: the published schedule, 2000 epochs on all of D_i)
DEMO_ARGS ?= smoke=true data.fraction=0.2 backbone.channels=[16,32,64,128] pretrain.epochs=6 pretrain.batch_size=128 pretrain.warmup_epochs=1 monitor.knn_every=3 linear.augment=false fewshot.augment=false linear.lrs=[0.01,0.1,1,10,30] fewshot.lrs=[0.01,0.1,1,10,30]
SEED ?= 0
demo:
	$(BIN)/sdclr stage=all prune=p90 split=split1 stage.random_init=true seed=$(SEED) $(DEMO_ARGS)

# Then the tests marked `numerics` (two computations of one quantity through kernel-dependent
# float ops) a second time on oneDNN's AVX2 kernels, so that a run on an AVX-512 machine
# exercises both kernel families (README, Tests).
test:
	$(PYTEST)
	ONEDNN_MAX_CPU_ISA=AVX2 $(PYTEST) -m numerics

# No subprocess runs, no data: SDCLR_DATA is emptied, so a test that reads the CIFAR copy
# without being marked needs_data fails here.
test-fast:
	SDCLR_DATA= $(PYTEST) -m "not needs_data and not e2e"

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

# Everything a GPU can tell us in one 8-minute budget (README, Benchmark): needs a GPU.
# gpu-check-dry: the same plan on the CPU at toy sizes (1-2 minutes; tests/e2e runs it).
# gpu-check-device: fill .gpu/ (wheels, data, COMMIT) and print the one device command.
GPU_CHECK_BUDGET ?= 480
gpu-check:
	$(BIN)/python scripts/gpu_check.py --budget $(GPU_CHECK_BUDGET) --out outputs/gpu-check

gpu-check-dry:
	$(BIN)/python scripts/gpu_check.py --dry-run --out outputs/gpu-check-dry

gpu-check-device:
	$(BIN)/python scripts/gpu_check.py --prepare .gpu
	@echo 'device run: carry [".gpu"], timeout_s 540, command:'
	@grep -v '^#' scripts/gpu_check_device.sh

clean:
	rm -rf outputs multirun .pytest_cache .ruff_cache $(LOCK_VENV)
