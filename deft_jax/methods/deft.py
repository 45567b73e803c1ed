"""`deft` and its variants: differential-evolution search over layer-group masks (the
core's `run_search` with the configured evaluator), then final training of the selected
mask with the shared recipe.

Variants are the paper's DEFT with search options switched on (each a config override of
`[search]`, so a variant is reproducible with `python -m deft_jax.search --set ...`):

- `deft`: the search as configured (the paper: `space = "mask"`, short fitness).
- `deft-lr`: genes also set each group's learning-rate multiplier (`space = "mask+lr"`).
- `deft-mf`: fitness with the final training's recipe (`schedule = "final"`, so a mask is
  scored by the validation score its final training reaches), made affordable by successive
  halving inside a generation (`fidelity = "halving"`), the baselines' masks in the initial
  population (`seed_baselines`) and the one-standard-error rule toward fewer trainable
  parameters (`select = "smallest-within-1se"`) against selection on a noisy validation set.
- `deft-lr-mf`: both.
- `deft-keep`: `deft-lr-mf` built not to lose to full fine-tuning: every fine-tune starts
  from the probed head (`start = "probe"`, the lp-ft start), masks are ranked by validation
  log-loss (`metric = "nll"`), and the full mask (seeded, scored by the same final-recipe
  fitness: lp-ft) wins unless the best mask beats it by more than one standard error
  (`select = "full-unless-1se-better"`).
- `deft-default`: the declared DEFT of 2026-12-01, `python -m deft_jax.search`'s default
  until 2026-12-06 (`deft_jax.config.presets.DECLARED_DEFT`): `deft-keep` within 3x a full fine-tune's
  epochs, shipping the average of its two whole-budget models.
- `deft-trainval`: `deft-default`'s eight masks (the baselines' and four random ones, with
  per-group learning rates) each screened by one fitness epoch from the probed head and
  ranked by validation log-loss, the full mask kept unless the best beats it by more than one
  SE, and the winner trained on train+val (`final.data`) for `final.epochs`: every labelled
  image in the final model, at 2x a full fine-tune's epochs (8 + 8).
- `deft-trainval-pair`: the same screen; the final model averages the selected mask's and
  the full mask's (or, when the full mask is selected, the best other's) models, each
  trained on train+val: 3x (8 + 2 x 8).
- `deft-trio` (declared 2026-12-06): six random genomes (masks with per-group learning
  rates) screened by one epoch each from the probed head and ranked by validation log-loss;
  the best, the full mask and the second best each trained on train+val from the probed head
  with its own training seed (`final.member_seeds = "distinct"`), probabilities averaged;
  the members' epochs fill 3x a full fine-tune's after the screen (6 + 3 x 6 = 24 of 3 x 8).
- `deft-trio-full`: its ablation, every mask replaced by the full mask
  (`final.member_masks = "full"`: no screen), 3 x 6 = 18 epochs.
- `deft-default-*` (`ABLATIONS`): `deft-default` with one option changed back (validation
  accuracy, a random head, one model, masks without learning rates; the selection rule is not
  among them: with two whole-budget models averaged, which one is "selected" changes nothing);
  the summary compares the judged method with each and with `deft-folds`.
- `deft-folds` (also in `ABLATIONS`): `deft-default` with 3-fold fitness over train+val (`folds = 3`), its
  winner trained on train+val (`final.reuse` off, `final.ensemble = 1`: the search's
  models are fold models). Each fold trains 2/3 of train+val, so its search processes
  about twice deft-default's images, plus the final training.

The DE state is persisted per generation under the run's state folder, so an interrupted
experiment resumes inside the search (the wall time then covers the resumed part only).
"""

from __future__ import annotations

import copy
import math
import time
import types

from deft_jax.config.presets import DECLARED_DEFT
from deft_jax.config.schema import Config
from deft_jax.config.validation import validate
from deft_jax.core.masks import mask_from_key
from deft_jax.data.folds import scored_items
from deft_jax.errors import UserError
from deft_jax.evolution.evaluators.choice import Evaluator, make_evaluator
from deft_jax.evolution.evaluators.kept_models import keeps_final_models
from deft_jax.evolution.evaluators.sequential import SequentialEvaluator
from deft_jax.evolution.final_inputs import final_inputs
from deft_jax.evolution.loop import run_search
from deft_jax.evolution.start import probe_extra, start_variables
from deft_jax.methods import reuse
from deft_jax.methods.common import MethodContext, MethodResult, final_fit, scores

MULTI_FIDELITY = {"schedule": "final", "fidelity": "halving", "seed_baselines": True,
                  "select": "smallest-within-1se"}
VARIANTS: dict[str, dict] = {
    "deft": {},
    "deft-lr": {"space": "mask+lr"},
    "deft-mf": dict(MULTI_FIDELITY),
    "deft-lr-mf": {"space": "mask+lr", **MULTI_FIDELITY},
    "deft-keep": {"space": "mask+lr", **MULTI_FIDELITY, "select": "full-unless-1se-better",
                  "start": "probe", "metric": "nll"},
    # every method of an experiment trains its final.epochs (the shared budget) and scores
    # members as the experiment's config says (search.workers: its numbers stay reproducible)
    "deft-default": {k.removeprefix("search."): v for k, v in DECLARED_DEFT.items()
                     if k not in ("final.epochs", "search.workers")},
}
# deft-default's masks screened by one-epoch fitness only (8 one-epoch runs), the winner
# trained on train+val (final.epochs, the last epoch): 2x a full fine-tune's epochs
VARIANTS["deft-trainval"] = {**VARIANTS["deft-default"], "schedule": "short", "fidelity": "full",
                             "final.reuse": False, "final.ensemble": 1, "final.data": "train+val"}
# the same screen, then the selected mask and the full mask each trained on train+val, their
# probabilities averaged: 8 + 2 x 8 = 24 epochs, 3x
VARIANTS["deft-trainval-pair"] = {**VARIANTS["deft-trainval"], "final.ensemble": 2}
# deft-trio (declared 2026-12-06, before its runs): six random genomes (masks with per-group
# learning rates) screened by one fitness epoch each from the probed head, ranked by validation
# log-loss; the best of them, the full mask and the second best each trained on train+val
# from the probed head with its own training seed, their probabilities averaged. The members'
# epochs fill what the screen leaves of 3x a full fine-tune's: (3 x 8 - 6) / 3 = 6 each.
VARIANTS["deft-trio"] = {"space": "mask+lr", "schedule": "short", "fidelity": "full",
                         "seed_baselines": False, "select": "best", "start": "probe", "metric": "nll",
                         "population_size": 6, "generations": 0, "evaluation": "sequential",
                         "final.reuse": False, "final.ensemble": 3, "final.data": "train+val",
                         "final.member_seeds": "distinct"}
# its ablation (declared with it): the same recipe with every mask replaced by the full mask,
# so there is nothing to screen: three full fine-tunes from the probed head on train+val
VARIANTS["deft-trio-full"] = {**VARIANTS["deft-trio"], "final.member_masks": "full"}
# variants whose members' final.epochs fill a budget, in full fine-tunes (the experiment's
# final.epochs), after their screen: `member_epochs`
BUDGET_X_FULL = {"deft-trio": 3.0, "deft-trio-full": 3.0}
# the ablation of the declared DEFT: each changes some of its options, judged against it
ABLATIONS: dict[str, dict] = {
    "deft-default-accuracy": {"metric": "accuracy"},        # rank masks by validation accuracy
    "deft-default-head": {"start": "head"},                 # fine-tunes start from a random head
    "deft-default-single": {"final.ensemble": 1},           # ship the selected model alone
    "deft-default-mask": {"space": "mask"},                 # no per-group learning rates
    # 3-fold fitness over train+val, the winner trained on train+val (fold models are not shipped)
    "deft-folds": {"folds": 3, "final.reuse": False, "final.ensemble": 1},
}
VARIANTS.update({name: {**VARIANTS["deft-default"], **changes} for name, changes in ABLATIONS.items()})
# the variants every variant's summary is also paired with (besides the baselines): the
# paper's DEFT, the declared ones, and their ablations
COMPARED_VARIANTS = ("deft", "deft-default", "deft-trio", "deft-trio-full", *ABLATIONS)


def make_shared_evaluator(ctx: MethodContext) -> tuple[Evaluator, str]:
    """The configured evaluator; a sequential one reuses the experiment's compiled steps
    where its recipe is the [finetune] one."""
    evaluator, mode, _ = make_evaluator(ctx.cfg, ctx.spec, ctx.variables, ctx.data.arrays)
    if isinstance(evaluator, SequentialEvaluator) and ctx.cfg.search.schedule == "short":
        evaluator.tuner = ctx.programs.tuner(ctx.spec, ctx.cfg.finetune)
    return evaluator, mode


def search_start(ctx: MethodContext) -> tuple[MethodContext, dict]:
    """`ctx` with the variables the search's fine-tunes and its final training start from
    (`search.start`: the fresh head, or the probed one), and what its record says of them."""
    a = ctx.data.arrays
    variables, probe = start_variables(ctx.cfg, ctx.spec, ctx.variables, a, cache=ctx.programs.programs)
    ctx = copy.copy(ctx)
    ctx.variables = variables
    return ctx, probe_extra(probe)


def search_and_fit(ctx: MethodContext, name: str = "deft") -> MethodResult:
    t0 = time.perf_counter()
    ctx, start = search_start(ctx)
    evaluator, mode = make_shared_evaluator(ctx)
    state = ctx.state_dir / f"seed{ctx.seed}-{name}.msgpack" if ctx.state_dir else None
    reusing = keeps_final_models(ctx.cfg, evaluator)
    search = run_search(ctx.cfg, evaluator, ctx.spec.layer_groups, state_path=state,
                        n_val=scored_items(ctx.cfg.search.folds, ctx.data.arrays))
    t1 = time.perf_counter()
    names = ctx.spec.group_names
    result = reuse.result_from_fitness_models(ctx, search.best_mask, evaluator.models) if reusing else None
    if result is None:
        whole_budget = {k: v for k, v in search.memo.items() if k not in search.memo_epochs}
        inputs = final_inputs(ctx.cfg, ctx.data, evaluator, search.best_mask, whole_budget)  # train+val?
        fit = copy.copy(ctx)
        fit.cfg, fit.data = inputs.cfg, inputs.data
        result = (reuse.result_from_trained_members(fit, inputs.masks) if len(inputs.masks) > 1
                  else final_fit(fit, search.best_mask))
        result.extra["final_reused"] = False
        if inputs.trained_on is not None:  # it saw val: out-of-fold scores (folds) or none
            result.val, result.extra["final_trained_on"] = inputs.validation(scores), inputs.trained_on
        if inputs.folds is not None:
            result.extra["folds"] = inputs.folds
    result.fitness_evaluations = len(search.memo)
    result.history = search.history
    result.extra.update({"best_fitness": search.best_fitness, "evaluation": mode, **start,
                         "selection": search.selection,
                         "fitness_epochs": sum(h.get("epochs_trained", 0) for h in search.history),
                         "memo": search.memo, "memo_short_budget": search.memo_epochs,
                         "memo_fractions": {k: ctx.spec.layer_groups.fraction(mask_from_key(k, names))
                                            for k in search.memo},
                         "search_seconds": round(t1 - t0, 2),
                         "final_seconds": round(time.perf_counter() - t1, 2)})
    return result


def member_epochs(full_epochs: int, cfg: Config, budget_x_full: float) -> int:
    """The epochs of each of `cfg`'s final.ensemble members that fit `budget_x_full` full
    fine-tunes of `full_epochs` after the screen (population x finetune.epochs per
    generation), rounded down, at least 1."""
    s = cfg.search
    screen = s.population_size * (s.generations + 1) * cfg.finetune.epochs
    return max(1, math.floor((budget_x_full * full_epochs - screen) / cfg.final.ensemble + 1e-9))


def variant_config(cfg: Config, name: str) -> Config:
    """`cfg` with variant `name`'s [search] overrides (and, for BUDGET_X_FULL's, its members'
    epochs), validated (a one-line UserError when the experiment's config does not allow the
    variant)."""
    out = copy.deepcopy(cfg)
    for key, value in VARIANTS[name].items():
        section, _, field = key.rpartition(".")
        setattr(getattr(out, section or "search"), field, value)
    if name in BUDGET_X_FULL:
        out.final.epochs = member_epochs(cfg.final.epochs, out, BUDGET_X_FULL[name])
    try:
        validate(out)
    except UserError as err:
        raise UserError(f"method {name}: {err}") from None
    return out


def variant(name: str) -> types.SimpleNamespace:
    """The method `name` of VARIANTS: `run(ctx)` with the variant's [search] overrides, and
    `check_config(cfg)`, which the experiment calls before it starts."""

    def run_variant(ctx: MethodContext) -> MethodResult:
        ctx = copy.copy(ctx)
        ctx.cfg = variant_config(ctx.cfg, name)
        return search_and_fit(ctx, name)

    return types.SimpleNamespace(run=run_variant, AFTER=(),
                                 check_config=lambda cfg: variant_config(cfg, name),
                                 __doc__=f"`{name}`: {VARIANTS[name] or 'as configured'}")


run = variant("deft").run
