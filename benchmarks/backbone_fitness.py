"""Time one fitness evaluation (fine-tune + validation) per backbone on this machine.

One evaluation = `SequentialEvaluator.evaluate` of one mask with every layer group trainable (the
most expensive mask: nothing frozen, no cached prefix), `finetune.epochs=1`, batch 32, on
random inputs (`--train` / `--val` images at `--size` px, 10 classes), random weights (the
timing does not depend on their values). The first call includes XLA compilation; the
second, with the same mask, reuses the compiled step and measures the work alone.

    python benchmarks/backbone_fitness.py --size 64 --train 128 --val 64
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deft_jax.config.schema import FineTuneConfig  # noqa: E402
from deft_jax.evolution.evaluators.recipe import FitnessRecipe  # noqa: E402
from deft_jax.evolution.evaluators.sequential import SequentialEvaluator  # noqa: E402
from deft_jax.data.inputs import SplitArrays  # noqa: E402
from deft_jax.models import IMAGENET_MODELS, LITE_MODELS, build_model  # noqa: E402

MODELS = IMAGENET_MODELS + LITE_MODELS


def time_model(name: str, size: int, n_train: int, n_val: int) -> dict:
    spec = build_model(name, 10, "none", size, "block")
    variables = spec.init(0)
    params = sum(int(np.prod(v.shape)) for v in
                 __import__("jax").tree.leaves(spec.variable_shapes()["params"]))
    rng = np.random.default_rng(0)
    data = SplitArrays(rng.normal(size=(n_train, size, size, 3)).astype(np.float32),
                       rng.integers(0, 10, n_train).astype(np.int32),
                       rng.normal(size=(n_val, size, size, 3)).astype(np.float32),
                       rng.integers(0, 10, n_val).astype(np.int32), 10)
    evaluator = SequentialEvaluator(spec, variables, data, FitnessRecipe(FineTuneConfig(batch_size=32, epochs=1)))
    mask = {g: True for g in spec.group_names}
    times = []
    for _ in range(2):
        start = time.perf_counter()
        evaluator.evaluate([mask])
        times.append(time.perf_counter() - start)
    return {"model": name, "size": size, "params": params, "groups": len(spec.group_names),
            "first_s": round(times[0], 2), "repeat_s": round(times[1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--train", type=int, default=128)
    parser.add_argument("--val", type=int, default=64)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        row = time_model(name, args.size, args.train, args.val)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        args.out.write_text(json.dumps({
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "note": "2-core CPU shared with other jobs while measuring"},
            "args": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
