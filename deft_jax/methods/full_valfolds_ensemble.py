"""`full-valfolds-ensemble`: k (`experiment.ensemble_size`) full fine-tunes that between them
train on every labelled image and each keep a good epoch. The validation split is dealt into
k stratified folds (`deft_jax.data.folds.stratified_folds`; a split's groups stay together);
member j trains on train + every validation fold but fold j, for `final.epochs`, and keeps
the epoch with the lowest log-loss on fold j (`final.keep = "best-val"` with the "nll"
metric: accuracy on a few dozen images ties too often). Members differ in their held-out
fold and their training seed (seed, seed + 1000, ...); the shipped model averages their
probabilities. k x a full fine-tune's epochs, as `full-trainval-ensemble`, whose members
train on all of train+val for the last epoch.

The record's validation scores are out of fold: every validation image is scored by the
one member that did not train on it."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from deft_jax.core import final as final_training
from deft_jax.core.ensemble import averaged_log_probabilities
from deft_jax.data.folds import joined, stratified_folds, take
from deft_jax.errors import UserError
from deft_jax.methods.common import MethodContext, MethodResult, all_groups, scores
from deft_jax.methods.full_ensemble import member_seeds

EPOCH_METRIC = "nll"  # the held-out fold's log-loss picks each member's epoch


def validation_folds(arrays, k: int, seed: int) -> list[np.ndarray]:
    """k sorted arrays of positions into the validation split, stratified by class (groups,
    where the split has them, kept together); a one-line UserError unless every class has
    at least k validation images (groups)."""
    groups = None if arrays.groups is None else np.asarray(arrays.groups)[len(arrays.y_train):]
    y = np.asarray(arrays.y_val, np.int64)
    for c in range(arrays.num_classes):
        n = np.unique(groups[y == c]).size if groups is not None else int(np.sum(y == c))
        if n < k:
            unit = "groups" if groups is not None else "images"
            raise UserError(f"method full-valfolds-ensemble: the validation split cannot hold out {k} "
                            f"folds: class {c} has {n} validation {unit}, fewer than {k} (add validation "
                            f"images or lower experiment.ensemble_size)")
    return stratified_folds(y, k, seed, groups)


def member_arrays(arrays, folds: list[np.ndarray], j: int):
    """The `SplitArrays` member j trains on (train, then the validation folds but fold j) and
    picks its epoch on (fold j)."""
    rest = np.sort(np.concatenate([f for i, f in enumerate(folds) if i != j]))
    return dataclasses.replace(
        arrays, x_train=joined(arrays.x_train, take(arrays.x_val, rest)),
        y_train=np.concatenate([arrays.y_train, arrays.y_val[rest]]),
        x_val=take(arrays.x_val, folds[j]), y_val=arrays.y_val[folds[j]], groups=None)


def run(ctx: MethodContext) -> MethodResult:
    cfg = copy.deepcopy(ctx.cfg)
    cfg.final.keep = "best-val"
    cfg.search.metric = EPOCH_METRIC
    a, spec = ctx.data.arrays, ctx.spec
    seeds = member_seeds(cfg)
    folds = validation_folds(a, len(seeds), cfg.seed)
    tuner = ctx.programs.tuner(spec, cfg.finetune, cfg.final.learning_rate, cfg.final.epochs)
    mask = all_groups(spec)
    out_of_fold = np.zeros((len(a.y_val), a.num_classes), np.float32)
    test, kept, train_items = [], [], []
    for j, seed in enumerate(seeds):
        member_cfg = copy.deepcopy(cfg)
        member_cfg.seed = seed
        data = dataclasses.replace(ctx.data, arrays=member_arrays(a, folds, j))
        variables = ctx.variables if seed == cfg.seed else spec.init(seed)
        final = final_training.train_final(member_cfg, spec, variables, mask, data, tuner=tuner)
        out_of_fold[folds[j]] = final.val_logits
        test.append(final.test_logits)
        kept.append(final.epoch_kept)
        train_items.append(int(len(data.arrays.y_train)))
    names = ctx.data.class_names
    return MethodResult(
        test=scores(averaged_log_probabilities(test), ctx.data.y_test, names, items=True),
        val=scores(out_of_fold, a.y_val, names), trainable_fraction=1.0, mask=mask,
        extra={"members": len(test), "member_seeds": seeds, "member_epochs_kept": kept,
               "member_train_items": train_items, "val_fold_sizes": [int(len(f)) for f in folds]})


def check_config(cfg) -> None:
    """Called by the experiment before it starts."""
    if cfg.experiment.ensemble_size < 2:
        raise UserError("method full-valfolds-ensemble needs experiment.ensemble_size >= 2 "
                        "(one validation fold held out per member)")
    if cfg.experiment.learning_rates:
        raise UserError("method full-valfolds-ensemble: its validation folds choose epochs, not an "
                        "experiment.learning_rates rate; drop the grid or the method")
