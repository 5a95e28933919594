#!/usr/bin/env bash
# The device call of `make gpu-check` (issues 14 and 23): one command, run in the repository root
# of a device machine's copy of the tree, with carry [".gpu"] and timeout_s 540 (the plan's 480-s
# budget leaves 60 s of margin for the wheels, Python's start and the last kill). `make
# gpu-check-device` fills .gpu/ here first (the wheels the device lacks: hydra-core, omegaconf,
# antlr; the CIFAR-10 copy; Tiny ImageNet cut to 40 classes for the nvJPEG test; COMMIT) and
# prints the line below, which is what to paste as the command (it is under 2,000 characters;
# running this file there does the same). The results come back in $OUT/gpu-check/, rewritten
# after every command (a call killed at its limit still returns every finished row):
# gpu_check.json (all results, the planner's measured costs), gpu_check.md (the tables),
# gpu_check.log (the commands' output, trimmed).
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl && export PYTHONPATH=/tmp/site:$PWD SDCLR_DATA=$PWD/.gpu PYTHONUNBUFFERED=1 && python3 scripts/gpu_check.py --budget 480 --out "${OUT:-outputs}/gpu-check" --work /tmp/gpu-check
