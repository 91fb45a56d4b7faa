#!/usr/bin/env bash
# The GPU checks, for a CUDA machine whose python3 already has torch, numba, numpy, scikit-learn
# and tqdm (no install of the project needed; nothing is downloaded):
#   1. tests/test_cuda.py (skipped on machines without CUDA, so CI never runs it);
#   2. python -m benchmarks.overhead --device cuda (asynchronous vs waiting loss reports),
#      with the small CNN and with a wide one that makes the GPU the bottleneck;
#   3. python -m benchmarks.time_to_accuracy --device cuda (every method, the Boss on the GPU).
# Usage: bash scripts/gpu_check.sh OUTDIR [time-to-accuracy options, e.g. --seeds 2]
# Environment: WHEELS=folder of extra wheels to install first (e.g. torchdata), the data
# overrides (AUTOASSIST_FASHION_MNIST, ...), AUTOASSIST_COMMIT when the tree has no git history.
set -uo pipefail
out=$(mkdir -p "${1:?usage: gpu_check.sh OUTDIR [options]}" && cd "$1" && pwd)
shift
root=$(cd "$(dirname "$0")/.." && pwd)
export PYTHONUNBUFFERED=1
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/autoassist-site \
    "$WHEELS"/*.whl || exit 1
  export PYTHONPATH=/tmp/autoassist-site${PYTHONPATH:+:$PYTHONPATH}
fi
# The source tree laid out as the installed package is (kernels/ and pipelines/ inside autoassist)
tree=$(mktemp -d)
cp -r "$root/autoassist" "$root/benchmarks" "$root/tests" "$root/pyproject.toml" "$tree/"
cp -r "$root/kernels" "$tree/autoassist/kernels"
cp -r "$root/pipelines" "$tree/autoassist/pipelines"
cd "$tree" || exit 1
nvidia-smi -L
python3 -c "import torch, numba, numpy, sklearn; print('torch', torch.__version__, 'cuda',
torch.version.cuda, 'numba', numba.__version__, 'numpy', numpy.__version__)"
status=0
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
timeout 200 python3 -m benchmarks.overhead --device cuda --threads 4 --rounds 3 \
  2>&1 | tee "$out/overhead_cuda.log"
# a wide CNN on big batches: the GPU, not the host, is the bottleneck
timeout 200 python3 -m benchmarks.overhead --device cuda --threads 4 --rounds 3 --width 512 \
  --batch-size 512 2>&1 | tee "$out/overhead_cuda_w512.log"
timeout 420 python3 -m benchmarks.time_to_accuracy --device cuda --threads 4 --no-progress "$@" \
  2>&1 | tee "$out/time_to_accuracy_cuda.log"
cp benchmarks/results/*cuda* "$out/" 2>/dev/null
exit $status
