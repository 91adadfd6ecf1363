#!/usr/bin/env bash
# The CUDA-path check (see bench/gpu_check.py): attention backends, FSDP2 + bf16 training steps of
# ViT-S/16 and ViT-B/16 with img/s, MFU and peak memory (+ torch.compile), checkpoint save/resume.
# On a machine without CUDA it runs its CPU fallback (tiny sizes). Output JSON: bench/results/ (or $OUT).
# Runs within 8 minutes on one H100/H200. Where the GPU machine's Python lacks this project's
# dependencies, carry them as wheels (webdataset, submitit, fvcore, iopath, yacs, tabulate, termcolor,
# portalocker, braceexpand, safetensors, xformers) and install with --no-deps first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
OUTFILE=${OUT:-bench/results}/gpu_check_$( "$PY" -c 'import torch; print(torch.cuda.get_device_name(0).split()[1].lower() if torch.cuda.is_available() else "cpu_fallback")' ).json
PYTHONUNBUFFERED=1 timeout 480 "$PY" bench/gpu_check.py --steps "${STEPS:-10}" ${COMPILE:+--compile} --output "$OUTFILE"
