"""What did the one-standard-error rule cost or gain? An ablation on finished experiments.

A search with `search.select = "smallest-within-1se"` (the -mf variants) records both the
mask it chose and the mask with the best whole-budget fitness (`selection.best_mask`). The
search itself does not depend on the rule, so `select = "best"` on the same search would have
trained that best mask: this script trains it with the experiment's final recipe, on the same
seed's split, training seed and initial head, and compares test accuracy paired over seeds
(Nadeau-Bengio corrected resampled t, exact Wilcoxon on test items; the experiment's own
statistics). Where both rules pick the same mask the recorded run is used as is; where they
differ the chosen mask is retrained too and must reproduce the recorded test accuracy.

    python benchmarks/selection_rule.py results/payoff/osteosarcoma_resnet20 --method deft-lr-mf

Results go to benchmarks/results/selection_rule-<folder>-<method>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deft_jax.config.schema import config_from_dict  # noqa: E402
from deft_jax.data import load_dataset  # noqa: E402
from deft_jax.experiment.records import read_runs  # noqa: E402
from deft_jax.experiment.runner import seed_config, split_sha  # noqa: E402
from deft_jax.experiment.stats import paired_comparison  # noqa: E402
from deft_jax.core.final import train_final  # noqa: E402
from deft_jax.data.inputs import prepare_data  # noqa: E402
from deft_jax.core.masks import mask_from_key  # noqa: E402
from deft_jax.models import build_model  # noqa: E402


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, -1) == labels))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="an experiment folder (config.json, runs.jsonl)")
    parser.add_argument("--method", default="deft-lr-mf")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    cfg = config_from_dict(json.loads((folder / "config.json").read_text()))
    runs = sorted((r for r in read_runs(folder / "runs.jsonl") if r["method"] == args.method),
                  key=lambda r: r["seed"])
    if not runs:
        print(f"error: no {args.method} runs in {folder}", file=sys.stderr)
        return 2
    if any(r["extra"]["selection"].get("rule") != "smallest-within-1se" for r in runs):
        print(f"error: {args.method} did not select with smallest-within-1se", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    dataset = load_dataset(cfg.data.source, input_size=cfg.model.input_size)
    spec = build_model(cfg.model.name, len(dataset.class_names), cfg.model.weights, cfg.model.input_size,
                       cfg.model.granularity)
    rows = []
    for run in runs:
        cfg_s = seed_config(cfg, run["seed"])
        selection = run["extra"]["selection"]
        row = {"seed": run["seed"], "chosen": run["mask_key"], "best": selection["best_mask"],
               "chosen_fraction": selection["trainable_fraction"],
               "best_fraction": selection["best_trainable_fraction"],
               "chosen_val": run["val"]["accuracy"], "chosen_test": run["test"]["accuracy"],
               "n_test": run["test"]["n"], "n_train": run["split_sizes"]["train"]}
        if row["best"] == row["chosen"]:
            row.update(best_val=row["chosen_val"], best_test=row["chosen_test"], retrained=False)
        else:
            data = prepare_data(cfg_s, spec, dataset)
            if split_sha(data.splits) != run["split_sha"]:
                raise RuntimeError(f"seed {run['seed']}: the split differs from the recorded one")
            variables = spec.init(cfg_s.seed)
            final = train_final(cfg_s, spec, variables, mask_from_key(row["best"], spec.group_names), data)
            row.update(best_val=accuracy(final.val_logits, data.arrays.y_val),
                       best_test=accuracy(final.test_logits, data.y_test), retrained=True)
            # the recorded chosen mask, retrained here too: this script reproduces the experiment
            again = train_final(cfg_s, spec, variables, mask_from_key(row["chosen"], spec.group_names), data)
            row["chosen_test_reproduced"] = accuracy(again.test_logits, data.y_test)
            if abs(row["chosen_test_reproduced"] - row["chosen_test"]) > 0.5 / row["n_test"]:
                raise RuntimeError(f"seed {run['seed']}: retraining the chosen mask gives test accuracy "
                                   f"{row['chosen_test_reproduced']:.3f}, the experiment recorded "
                                   f"{row['chosen_test']:.3f}")
        rows.append(row)
        print(f"seed {row['seed']}: chosen {row['chosen']} (fraction {row['chosen_fraction']:.3f}) test "
              f"{row['chosen_test']:.3f}; best {row['best']} (fraction {row['best_fraction']:.3f}) test "
              f"{row['best_test']:.3f}{' (retrained)' if row['retrained'] else ''}")
    comparison = paired_comparison([r["chosen_test"] for r in rows], [r["best_test"] for r in rows],
                                   n_train=float(np.mean([r["n_train"] for r in rows])),
                                   n_test=[r["n_test"] for r in rows])
    result = {"folder": str(folder), "method": args.method, "model": spec.name, "rows": rows,
              "mean_test_smallest_within_1se": float(np.mean([r["chosen_test"] for r in rows])),
              "mean_test_best": float(np.mean([r["best_test"] for r in rows])),
              "smallest_within_1se_minus_best": comparison, "seconds": round(time.perf_counter() - t0, 1)}
    out = Path(__file__).resolve().parent / "results" / f"selection_rule-{folder.name}-{args.method}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"mean test: smallest-within-1se {result['mean_test_smallest_within_1se']:.3f}, best "
          f"{result['mean_test_best']:.3f}; difference {comparison['mean_difference']:+.3f}, corrected 95% CI "
          f"[{comparison['ci95'][0]:+.3f}, {comparison['ci95'][1]:+.3f}], verdict {comparison['verdict']}")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
