#!/usr/bin/env bash
# The one device call behind the GPU figures in benchmarks/README.md (issue 14): the GPU
# equality tests, then the throughput tables. Run from the repository root on a GPU machine;
# OUT names the folder for the log and profiles (default /tmp/gpu_check).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
log() { tee -a "$OUT/log.txt"; }
B=benchmarks/train_throughput.py
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | log
python3 -c "import torch, timm, transformers, open_clip; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'transformers', transformers.__version__, 'open_clip', open_clip.__version__)" | log
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/model/test_losses.py \
  tests/model/test_golden.py tests/test_device.py 2>&1 | tail -4 | log
timeout 240 python3 $B --batches 64,256 --inference 2>&1 | log
timeout 70 python3 $B --variants BE --batches 256 --phases 2 --local-mode within_pair 2>&1 | log
timeout 50 python3 $B --variants AE --batches 256 --phases 2 --steps 5 --profile "$OUT" 2>&1 | log
timeout 110 python3 $B --variants A --batches 256 --phases 2 --compile 2>&1 | log
