"""Named sets of config values over the dataclass defaults.

- `DEFAULT_RECIPE`: what a user gets. `python -m deft_jax.search` and `deft_jax.search`
  start from it (the config file, the flags and `--set` override it): three full
  fine-tunes on train+val averaged, the experiment's `full-trainval-ensemble` (3x a full
  fine-tune's epochs). It won the rule declared before the 2026-12-06 runs: the mask search
  (`deft-trio`) added nothing over it (docs/results.md).
- `DECLARED_DEFT`: the declared DEFT of 2026-12-01, the default before it
  (`configs/declared_deft.toml`; the experiment's method `deft-default`): the baselines'
  masks and four random ones (mask and per-group learning rates) each train
  `finetune.epochs` from the head of a linear probe fitted once, ranked by validation
  log-loss; the best of them and the full mask train the whole final recipe
  (`final.epochs`, `final.keep`), and the model shipped averages the two models'
  probabilities: 7 one-epoch runs and two of 8 epochs, 2.9x a full fine-tune's 8 (an
  experiment keeps its own `final.epochs` and `search.workers`).
- `PAPER_DEFT`: the same keys at the paper's values, which are the dataclass defaults
  (`configs/paper.toml` holds them: `--config configs/paper.toml` runs the paper's DEFT).
"""

from __future__ import annotations

# the declared DEFT of 2026-12-01 (`deft-default`), the command's default until 2026-12-06
DECLARED_DEFT: dict[str, object] = {
    "search.space": "mask+lr", "search.schedule": "final", "search.fidelity": "halving",
    "search.seed_baselines": True, "search.select": "full-unless-1se-better",
    "search.start": "probe", "search.metric": "nll", "search.population_size": 8,
    "search.generations": 0, "search.promote_fraction": 0.15,
    "search.evaluation": "sequential",  # the evaluator that keeps the models it reuses
    "search.workers": 0,  # one worker process per CPU core (else in this process): not in the experiment
    "final.reuse": True, "final.ensemble": 2,
    "final.epochs": 8,  # 7 one-epoch runs + 2 x 8 epochs = 23 <= 3 x 8
    "final.data": "train", "final.member_masks": "search", "final.member_seeds": "shared",
}

PAPER_DEFT: dict[str, object] = {
    "search.space": "mask", "search.schedule": "short", "search.fidelity": "full",
    "search.seed_baselines": False, "search.select": "best", "search.start": "head",
    "search.metric": "accuracy", "search.population_size": 8, "search.generations": 4,
    "search.promote_fraction": 0.34, "search.evaluation": "auto", "search.workers": 1,
    "final.reuse": False, "final.ensemble": 1, "final.epochs": 5,
    "final.data": "train", "final.member_masks": "search", "final.member_seeds": "shared",
}

# what `python -m deft_jax.search` runs (chosen 2026-12-06 by the rule declared before the
# runs, docs/results.md): the experiment's `full-trainval-ensemble`, three full fine-tunes on
# train+val (a fresh head each, its own training seed, 8 epochs, the last kept), averaged;
# no search (final.member_masks = full). The search keys stay the paper's, so
# `--set final.member_masks=search` runs the paper's search before the three members.
DEFAULT_RECIPE: dict[str, object] = {
    **PAPER_DEFT, "final.ensemble": 3, "final.epochs": 8,
    "final.data": "train+val", "final.member_masks": "full", "final.member_seeds": "distinct",
}


def applied(raw: dict, preset: dict[str, object]) -> dict:
    """`raw` (a config as nested dicts) with `preset`'s dotted keys set, in place."""
    for key, value in preset.items():
        section, field = key.split(".")
        raw[section][field] = value
    return raw
