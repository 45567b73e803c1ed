"""`FinalModelCandidates`: the whole-budget fitness models an evaluator keeps, so a final
model can be taken from the search (`final.reuse`, `final.ensemble`) without retraining.

The sequential and population evaluators keep them in this process; the worker-pool evaluator
receives them from its worker processes. All keep the same ones (`keep_final_models`)."""

from __future__ import annotations

import logging

from deft_jax.config.schema import Config
from deft_jax.core import ensemble
from deft_jax.core.masks import full_mask_key

logger = logging.getLogger(__name__)


class FinalModelCandidates:
    """Mask key -> (fitness, variables) of whole-budget members, at most `keep_at_most` by
    fitness plus the keys in `keep_always`."""

    keep_models = False  # keep whole-budget members' models (the kept epoch's variables)
    keep_at_most: int | None = None  # ... only the best this many by fitness, and the keys in
    keep_always: frozenset = frozenset()  # `keep_always` (see `keep_final_models`)

    def __init__(self) -> None:
        self.models: dict[str, tuple[float, dict]] = {}

    def keep_final_models(self, cfg: Config, group_names) -> None:
        """Keep the whole-budget models a final model may be taken from (`final.reuse`,
        `final.ensemble` = k): the k best by fitness and the full mask's (what the
        "full-unless-1se-better" rule selects), so memory holds k + 1 models at most. The
        ensemble of the selected mask and the next k - 1 is always among them under the
        "best" and "full-unless-1se-better" rules ("smallest-within-1se" keeps them all)."""
        s = cfg.search
        self.keep_models = True
        if s.select == "smallest-within-1se":  # its pick may rank anywhere within the band
            return
        self.keep_at_most = max(1, cfg.final.ensemble)
        self.keep_always = frozenset({full_mask_key(group_names, s.threshold, s.space)})

    def store_model(self, key: str, fitness: float, variables: dict) -> None:
        """Keep one member's model, then forget the surplus."""
        self.models[key] = (fitness, variables)
        self.drop_surplus_models()

    def drop_surplus_models(self) -> None:
        """Forget the worst models beyond `keep_at_most` (never those in `keep_always`)."""
        if self.keep_at_most is None:
            return
        ranked = sorted((k for k in self.models if k not in self.keep_always), key=lambda k: self.models[k][0])
        for key in ranked[self.keep_at_most:]:
            del self.models[key]


def keeps_final_models(cfg: Config, evaluator) -> bool:
    """Whether the final model is taken from the search (`final.reuse`, `final.ensemble`):
    then `evaluator` is asked to keep the candidates (`FinalModelCandidates.keep_final_models`:
    every evaluation mode, in this process or in worker processes).
    Says so in a note when the config asks for it and cannot have it."""
    if not (cfg.final.reuse or cfg.final.ensemble > 1):
        return False
    if cfg.final.data == "train+val" and cfg.search.folds == 1:
        if cfg.final.member_masks == "full":  # no search ran: nothing to reuse, nothing to say
            return False
        logger.info("note: the search's models are not reused with final.data = train+val (they trained on "
                    "train only); the final model (final.ensemble of them) is trained on train+val")
        return False
    if cfg.search.folds > 1:
        logger.info("note: final.reuse / final.ensemble are not used with search.folds >= 2 (the search's "
                    "models are fold models, trained on part of train+val); the final model is trained on train+val")
        return False
    if not ensemble.wanted(cfg):
        logger.info("note: final.reuse / final.ensemble need search.schedule = \"final\" (a fitness "
                    "with the final recipe) and no experiment.learning_rates; the final model is trained as usual")
        return False
    if not getattr(evaluator, "can_keep_models", False):
        logger.info(f"note: final.reuse / final.ensemble need an evaluator that keeps its models (this "
                    f"run's, {getattr(evaluator, 'name', type(evaluator).__name__)}, does not); the "
                    "final model is trained as usual")
        return False
    evaluator.keep_final_models(cfg, evaluator.spec.group_names)
    return True
