"""The check's sizes, time budget and the worst cases the planner assumes until measured."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "gpu_check.py"  # the entry point; its helper modes run it again
PY = sys.executable
CIFAR = ("cifar10-jpg.tar.gz", "cifar10-train-labels.npy")
TINY_IMAGENET = "tiny-imagenet-32.tar.gz"  # the nvJPEG test's image tree
MARK = "GPU_CHECK_JSON: "  # the line a helper subprocess prints its result on
FAIL_ENV = "SDCLR_GPU_CHECK_FAIL"  # for tests: comma-separated steps that fail on purpose
LOG_HEAD, LOG_TAIL = 4 << 10, 28 << 10  # bytes of each command's output kept in the log
POLL_S = 10.0  # while a command runs: read its partial results and rewrite the three files

# The time: a device call may run 540 s; the plan gets 480 of them, the rest is margin.
CALL_LIMIT_S = 540.0
MARGIN_S = 60.0  # wheels, Python's start, the last kill (SIGTERM, 5 s, SIGKILL), last writes
BUDGET_S = CALL_LIMIT_S - MARGIN_S
# Worst cases the planner assumes until the device has measured them (assumptions, not
# measurements: no GPU had run the plan when they were set). A cold inductor cache every call:
COMPILE_WORST_S = 120.0  # compiling one ResNet-18 training graph set (forward + backward of
# backbone and head, the augmentation, the short last batch's recompile)
START_WORST_S = 45.0  # a command's own start: Python, torch / timm imports, the first
# CIFAR-10 decode (about 20 s on a 2-core CPU), job files and the report at a run's end
ROW_WORST_S = 30.0  # one eager bench row at batch 512: building, warm-up and timed steps
PROBES_WORST_S = 90.0  # a full-size run's linear (30 epochs) and few-shot probes
EPOCH_WORST_S = {"simclr": 2.0, "sdclr": 3.0}  # one full-data pretraining epoch
DEFAULT_RUN_WORK_S = 30.0  # the default run beyond start and compile: 2 small epochs, the
# monitors, 2-epoch probes at 20% of the data
DEFAULT_RUN_CAP_S = 300.0  # the most the default run may take: a hang leaves time for the rest
PYTEST_START_S = 30.0  # pytest's start and collection of the CUDA tests' files
FOLDER_WORK_S = 40.0  # the data=folder run beyond its start: 3 eager ResNet-50 epochs, probes
SAFETY = 1.25  # on measured times, for what they leave out (monitors, checkpoints, noise)
# numerics the runner records in metrics.json ("what ran"), and their CUDA defaults
NUMERICS = ("precision", "compile", "channels_last", "compile_mode", "fuse_branches")
CUDA_DEFAULTS = {
    "precision": "bf16",
    "compile": True,
    "channels_last": True,
    "compile_mode": "default",
    "fuse_branches": False,
}

# Toy sizes of the dry run: every run and bench on the CPU, tiny widths, a slice of the data.
TOY_SIZES = (
    "smoke=true backbone.channels=[8,16,32,64] pretrain.batch_size=32 pretrain.warmup_epochs=0 "
    "linear.epochs=1 linear.milestones=[] fewshot.epochs=1 fewshot.milestones=[]"
).split()
TOY = ["device=cpu", *TOY_SIZES, "pretrain.epochs=1"]
TOY_RUN = [*TOY, "data.fraction=0.01", "linear.batch_size=64"]
TOY_FOLDER = [
    *TOY,
    *"data.image_size=32 data.eval_resize=36 data.workers=1 linear.batch_size=32".split(),
    "fewshot.batch_size=32",
]
# The default run: the runner's defaults but size (split 1, SDCLR p90, stage=all). On the GPU
# 2 epochs at 20% with 2-epoch probes; the dry run: the toy sizes at 1%, 2 epochs (the second
# one's time is what the first one's compile is measured against).
DEFAULT_RUN = {
    "gpu": "data.fraction=0.2 pretrain.epochs=2 pretrain.warmup_epochs=1 linear.epochs=2 "
    "linear.milestones=[1] fewshot.epochs=2 fewshot.milestones=[1]".split(),
    "dry": [*TOY_SIZES, "data.fraction=0.01", "linear.batch_size=64", "pretrain.epochs=2"],
}
# The sizes the planner scales the default run's times by: its data fraction and probe epochs,
# and the accuracy runs' (full data and the published probes on the GPU; toy in the dry run).
RUN_FRACTION = {"gpu": 0.2, "dry": 0.01}
RUN_PROBE_EPOCHS = {"gpu": (2, 2), "dry": (1, 1)}
ACC_FRACTION = {"gpu": 1.0, "dry": 0.01}
ACC_PROBE_EPOCHS = {"gpu": (30, 100), "dry": (1, 1)}
# the short data=folder run at full size: ResNet-50 at 224 px on the tree, a few epochs, eager
# (compiling ResNet-50 at 224 px would double the step's time)
FOLDER_RUN = (
    "backbone=resnet50 pretrain.batch_size=256 linear.batch_size=256 fewshot.batch_size=256 "
    "pretrain.epochs=3 pretrain.warmup_epochs=1 linear.epochs=5 linear.milestones=[3,4] "
    "fewshot.epochs=5 fewshot.milestones=[3,4] compile=false"
).split()
TOY_BENCH = ["--quick", "--channels", "8,16,32,64"]
SPEED_BENCH = ["--steps", "10", "--warmup", "5", "--probe-epochs", "5"]  # make bench: 22/15/30
# The speed steps' rows in value order, each with the compiled ResNet-18 training graph sets
# it builds (a method row (--methods) or a row group (--rows) of sdclr.bench). A step runs the
# longest prefix that fits in the time left, in one bench command.
EAGER_ROWS = (("simclr", 1), ("sdclr_p90", 1), ("ceiling", 1), ("probe", 1))
COMPILED_ROWS = (
    ("simclr", 1),
    ("sdclr_p90", 1),
    ("ceiling", 1),
    ("sdclr_p90_fused", 1),
    ("augmentation", 1),
    ("step_ratio", 3),  # two SDCLR models (two passes, fused) and the plain backbone
)
REDUCE_OVERHEAD_ROWS = COMPILED_ROWS[:4]
BENCH_METHODS = ("simclr", "sdclr_p90", "sdclr_p90_fused", "ceiling")  # sdclr.bench METHODS
# The accuracy step: its two runs (method: its prune override), and their epochs between
# these, from the measured epoch times.
METHODS = {"simclr": "prune=none", "sdclr": "prune=p90"}
MAX_EPOCHS, WANT_EPOCHS, MIN_EPOCHS = 200, 100, 10
# the 224-px tree: 10 classes from 400 down to 12 images (Many, Medium and Few all present)
TREE = {
    "gpu": ([400, 300, 200, 150, 110, 80, 50, 30, 18, 12], 20, (320, 500)),
    "dry": ([60, 40, 30, 24, 20, 16, 14, 12, 12, 12], 4, (40, 72)),
}
