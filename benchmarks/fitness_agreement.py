"""Does a fitness rank masks the way the final training will? And how noisy is it?

For a config's dataset, model and split (seed 0), a fixed set of masks (the baselines' masks:
head only, everything, the last group, the last half; then random masks) is scored with

- the paper's short fitness (`search.schedule = "short"`: [finetune] epochs, last epoch);
- the final-recipe fitness (`search.schedule = "final"`: final.epochs, final.learning_rate,
  final.keep = best-val), with the training seed and with a second training seed (noise);

and each mask is trained with the final recipe and scored on the test split. Reported:
Spearman rank correlations of each fitness with the final models' test accuracy and
validation accuracy, the same-mask fitness difference between two training seeds (noise),
and the share of masks the short fitness puts in the wrong order relative to the final
validation score. Results go to benchmarks/results/fitness_agreement-<name>.json.

    python benchmarks/fitness_agreement.py --config configs/osteosarcoma_resnet20.toml --masks 12
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from deft_jax.config.schema import load_config  # noqa: E402
from deft_jax.data import load_dataset  # noqa: E402
from deft_jax.evolution.evaluators.choice import build_evaluator, fitness_recipe  # noqa: E402
from deft_jax.evolution.loop import baseline_genomes  # noqa: E402
from deft_jax.core.final import train_final  # noqa: E402
from deft_jax.data.inputs import prepare_data  # noqa: E402
from deft_jax.core.masks import decode_genome, mask_key, searchable_groups  # noqa: E402
from deft_jax.models import build_model  # noqa: E402

MASK_STREAM = 31  # random masks come from default_rng([seed, MASK_STREAM])


def masks_to_score(group_names, count: int, seed: int, threshold: float) -> list[dict]:
    genes = len(searchable_groups(group_names))
    genomes = baseline_genomes(genes)
    rng = np.random.default_rng([seed, MASK_STREAM])
    masks, seen = [], set()
    while len(masks) < count and len(seen) < 2 ** genes:
        genome = genomes.pop(0) if genomes else rng.random(genes)
        mask = decode_genome(genome, group_names, threshold)
        if mask_key(mask) not in seen:
            seen.add(mask_key(mask))
            masks.append(mask)
    return masks


def fitnesses(cfg, spec, variables, data, masks, schedule: str, seed: int) -> list[float]:
    c = copy.deepcopy(cfg)
    c.search.schedule, c.seed = schedule, seed
    evaluator = build_evaluator("sequential", spec, variables, data.arrays, fitness_recipe(c))
    return evaluator.evaluate(masks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--masks", type=int, default=12)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    cfg.final.keep = "best-val"
    t0 = time.perf_counter()
    dataset = load_dataset(cfg.data.source, input_size=cfg.model.input_size)
    spec = build_model(cfg.model.name, len(dataset.class_names), cfg.model.weights, cfg.model.input_size,
                       cfg.model.granularity)
    variables = spec.init(cfg.seed)
    data = prepare_data(cfg, spec, dataset)
    masks = masks_to_score(spec.group_names, args.masks, cfg.seed, cfg.search.threshold)
    short = fitnesses(cfg, spec, variables, data, masks, "short", cfg.seed)
    matched = fitnesses(cfg, spec, variables, data, masks, "final", cfg.seed)
    matched_other_seed = fitnesses(cfg, spec, variables, data, masks, "final", cfg.seed + 1000)
    short_other_seed = fitnesses(cfg, spec, variables, data, masks, "short", cfg.seed + 1000)
    test, val = [], []
    for mask in masks:
        final = train_final(cfg, spec, variables, mask, data)
        test.append(float(np.mean(np.argmax(final.test_logits, -1) == data.y_test)))
        val.append(float(np.mean(np.argmax(final.val_logits, -1) == data.arrays.y_val)))

    def rho(fitness, target):  # fitness is lower-is-better: correlate the validation score
        return float(stats.spearmanr(1 - np.asarray(fitness), target).statistic)

    def discordant(fitness, target) -> float:
        f, t = 1 - np.asarray(fitness), np.asarray(target)
        pairs = [(i, j) for i in range(len(f)) for j in range(i + 1, len(f)) if t[i] != t[j]]
        return float(np.mean([(f[i] - f[j]) * (t[i] - t[j]) < 0 for i, j in pairs])) if pairs else 0.0

    result = {
        "config": args.config, "overrides": args.set, "model": spec.name, "data": dataset.description,
        "n_train": len(data.arrays.y_train), "n_val": len(data.arrays.y_val), "n_test": len(data.y_test),
        "finetune_epochs": cfg.finetune.epochs, "final_epochs": cfg.final.epochs,
        "masks": [mask_key(m) for m in masks], "short_fitness": short, "final_recipe_fitness": matched,
        "final_recipe_fitness_other_seed": matched_other_seed, "short_fitness_other_seed": short_other_seed,
        "final_val_accuracy": val, "final_test_accuracy": test,
        "spearman_short_vs_final_val": rho(short, val), "spearman_final_recipe_vs_final_val": rho(matched, val),
        "spearman_short_vs_test": rho(short, test), "spearman_final_recipe_vs_test": rho(matched, test),
        "discordant_pairs_short_vs_final_val": discordant(short, val),
        "discordant_pairs_final_recipe_vs_final_val": discordant(matched, val),
        "seed_noise_short_mean_abs": float(np.mean(np.abs(np.subtract(short, short_other_seed)))),
        "seed_noise_final_recipe_mean_abs": float(np.mean(np.abs(np.subtract(matched, matched_other_seed)))),
        "spearman_final_recipe_seed_vs_seed": rho(matched, 1 - np.asarray(matched_other_seed)),
        "one_val_item": 1 / len(data.arrays.y_val), "seconds": round(time.perf_counter() - t0, 1),
    }
    name = args.out or f"fitness_agreement-{Path(args.config).stem}.json"
    path = Path(__file__).resolve().parent / "results" / name
    path.write_text(json.dumps(result, indent=1) + "\n")
    for k, v in result.items():
        if k.startswith(("spearman", "discordant", "seed_noise", "one_val", "seconds", "n_")):
            print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
