"""Named sets of config values over the dataclass defaults.

- `DEFAULT_DEFT`: the DEFT a user gets. `python -m deft_jax.search` and `deft_jax.search`
  start from it (the config file, the flags and `--set` override it), and the experiment
  runs it as the method `deft-default`. Declared before its study runs; its budget is at
  most 3x a full fine-tune's epochs: the baselines' masks and four random ones (mask and
  per-group learning rates) each train `finetune.epochs` from the head of a linear probe
  fitted once, ranked by validation log-loss; the best of them and the full mask train the
  whole final recipe (`final.epochs`, `final.keep`), the full mask wins unless the other
  beats it by more than one standard error, and the model shipped averages the two models'
  probabilities, none trained again. No DE generation fits in that budget: 7 one-epoch
  runs and two of 8 epochs are 23 epochs, 2.9x a full fine-tune's 8 (an experiment keeps
  its own `final.epochs`, the budget every method shares). On a multi-core CPU its members
  are scored in worker processes, one per core (`search.workers = 0`; the experiment keeps
  its own `search.workers`, so its numbers do not depend on the machine's cores).
- `PAPER_DEFT`: the same keys at the paper's values, which are the dataclass defaults
  (`configs/paper.toml` holds them: `--config configs/paper.toml` runs the paper's DEFT).
"""

from __future__ import annotations

DEFAULT_DEFT: dict[str, object] = {
    "search.space": "mask+lr", "search.schedule": "final", "search.fidelity": "halving",
    "search.seed_baselines": True, "search.select": "full-unless-1se-better",
    "search.start": "probe", "search.metric": "nll", "search.population_size": 8,
    "search.generations": 0, "search.promote_fraction": 0.15,
    "search.evaluation": "sequential",  # the evaluator that keeps the models it reuses
    "search.workers": 0,  # one worker process per CPU core (else in this process): not in the experiment
    "final.reuse": True, "final.ensemble": 2,
    "final.epochs": 8,  # 7 one-epoch runs + 2 x 8 epochs = 23 <= 3 x 8
}

PAPER_DEFT: dict[str, object] = {
    "search.space": "mask", "search.schedule": "short", "search.fidelity": "full",
    "search.seed_baselines": False, "search.select": "best", "search.start": "head",
    "search.metric": "accuracy", "search.population_size": 8, "search.generations": 4,
    "search.promote_fraction": 0.34, "search.evaluation": "auto", "search.workers": 1,
    "final.reuse": False, "final.ensemble": 1, "final.epochs": 5,
}


def applied(raw: dict, preset: dict[str, object]) -> dict:
    """`raw` (a config as nested dicts) with `preset`'s dotted keys set, in place."""
    for key, value in preset.items():
        section, field = key.split(".")
        raw[section][field] = value
    return raw
