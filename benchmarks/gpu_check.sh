#!/usr/bin/env bash
# The GPU path, measured: the `hf` sampler on CUDA (fp32 and bf16) against the CPU, then a small
# v1_rerank on CUDA. Run from the repository root on a machine with an NVIDIA GPU:
#
#   bash benchmarks/gpu_check.sh            # installs from the lock (a CUDA torch from TORCH_INDEX) if needed
#
# Prints, for each dtype: tokens/s of the sampler benchmark and its agreement with the CPU on the
# same prompts and seeds (share of identical completions; max |difference| of the recorded
# log-normaliser and mean log-prob over those, tolerance 1e-3 in fp32 and 5e-2 in bf16), then the
# sampling tokens/s of `kedro run -p v1_rerank --env test --params "model.device=cuda"`.
# Nothing in CI runs this; docs/benchmarks.md holds its numbers (or says they were not measured).
set -euo pipefail
cd "$(dirname "$0")/.."
export KEDRO_DISABLE_TELEMETRY=true DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cu128}
PY=.venv/bin/python

if ! { [ -x "$PY" ] && "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; }; then
    make setup PIP_TORCH_ARGS="--index-url $TORCH_INDEX"
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

for dtype in float32 bfloat16; do
    echo "== sampler benchmark, cuda $dtype (vs CPU fp32) =="
    "$PY" benchmarks/bench_sampling.py --skip-naive --record on --device cuda --dtype "$dtype" \
        --problems 64 --n 8 --batch-size 64 512 --compare-cpu
done

echo "== kedro run -p v1_rerank --env test on cuda =="
start=$(date +%s)
.venv/bin/kedro run -p v1_rerank --env test --params "model.device=cuda" 2>&1 | tee /tmp/impetus_gpu_run.log \
    | grep -E "Sampled (train|dev|eval)" || true
echo "v1_rerank --env test on cuda: $(( $(date +%s) - start )) s wall"
