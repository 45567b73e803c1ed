"""A whole training step with and without glibc's huge-page tunable, on CPU.

XLA:CPU takes each program run's temporary buffer from malloc, which maps it fresh and
unmaps it at the end of the run; `glibc.malloc.hugetlb=1` asks for transparent huge pages on
those mappings (`deft_jax/runtime/huge_pages.py`, which the commands turn on). Each side runs
in a fresh process (glibc reads its tunables at start), alternating, `--pairs` times: one
full-network training step (forward, backward, SGD update; `conv_lowering.whole_step_counters`)
per model, its median seconds and, per step, the minor page faults and the kernel and user
CPU seconds.

    python benchmarks/huge_pages.py                  # Lite0 @160, @224 and ResNet-20 @32, 2 pairs

The JSON goes to benchmarks/results/huge_pages-DATE-MACHINE.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import machine

ROOT = Path(__file__).resolve().parent.parent
MODELS = {"lite0@160": ("efficientnet_lite0", 160), "lite0@224": ("efficientnet_lite0", 224),
          "resnet20@32": ("resnet20", 32)}
SIDES = {"4 KiB pages": "glibc.malloc.hugetlb=0", "huge pages": "glibc.malloc.hugetlb=1"}


def child(model: str, batch: int, repeats: int) -> dict:
    from conv_lowering import whole_step_counters
    name, size = MODELS[model]
    return whole_step_counters(name, size, batch, repeats)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=2, help="alternating runs of each side per model")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.batch, args.repeats)))
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        print(f"error: unknown model {unknown[0]} (choose from {', '.join(MODELS)})", file=sys.stderr)
        return 2
    results = {"machine": machine.cpu_info(), "versions": machine.versions(), "loadavg_before": machine.loadavg(),
               "transparent_huge_pages": Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
               if Path("/sys/kernel/mm/transparent_hugepage/enabled").exists() else None,
               "batch": args.batch, "repeats": args.repeats, "models": {}}
    for model in models:
        runs = {side: [] for side in SIDES}
        for _ in range(args.pairs):
            for side, tunables in SIDES.items():
                env = dict(os.environ, GLIBC_TUNABLES=tunables, DEFT_JAX_COMPILE_CACHE="off")
                proc = subprocess.run([sys.executable, __file__, "--child", model, "--batch", str(args.batch),
                                       "--repeats", str(args.repeats)], env=env, capture_output=True,
                                      text=True, check=True)
                runs[side].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                r = runs[side][-1]
                print(f"{model} {side}: step {r['median_s']:.3f} s, {r['minor_faults_per_step']:.0f} minor "
                      f"faults, {r['system_s_per_step']:.2f} s kernel, {r['user_s_per_step']:.2f} s user per step",
                      flush=True)
        results["models"][model] = runs
    path = ROOT / "benchmarks" / "results" / f"huge_pages-{time.strftime('%Y-%m-%d')}-{machine.machine_slug()}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
