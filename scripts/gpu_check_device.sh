#!/usr/bin/env bash
# The device call of `make gpu-check` (issue 14): one command, run in the repository root of a
# device machine's copy of the tree, with carry [".gpu"] and timeout_s 540. `make
# gpu-check-device` fills .gpu/ here first (the wheels the device lacks: hydra-core, omegaconf,
# antlr; the CIFAR-10 copy; Tiny ImageNet cut to 40 classes for the nvJPEG test; COMMIT) and
# prints the line below, which is what to paste as the command (it is under 2,000 characters;
# running this file there does the same). The results come back in $OUT/gpu-check/:
# gpu_check.json, gpu_check.md, gpu_check.log.
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl && export PYTHONPATH=/tmp/site:$PWD SDCLR_DATA=$PWD/.gpu PYTHONUNBUFFERED=1 && python3 scripts/gpu_check.py --budget 480 --out "${OUT:-outputs}/gpu-check" --work /tmp/gpu-check
