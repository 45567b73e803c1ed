"""The final model of a search run: trained again with the final recipe, or, with
`final.reuse` / `final.ensemble` and a final-recipe fitness (`search.schedule = "final"`),
taken from the models the evaluator kept during the search
(`deft_jax.core.ensemble`): the selected mask's model, or the average of its and the next
best ones' probabilities. Where the selected mask's model was not kept (restored from the
journal on a resume) it is trained again, with a logged note."""

from __future__ import annotations

import logging

from deft_jax.config.schema import Config
from deft_jax.core import ensemble
from deft_jax.core.final import FinalModel, train_final
from deft_jax.core.masks import GroupMask
from deft_jax.data.inputs import PreparedData
from deft_jax.models.base import ModelSpec

logger = logging.getLogger(__name__)


def final_model(cfg: Config, spec: ModelSpec, variables: dict, mask: GroupMask, data: PreparedData,
                models: ensemble.FitnessModels | None, retrain: list[GroupMask] | None = None
                ) -> tuple[FinalModel, ensemble.Members | None]:
    """(the final model, its members when it is an ensemble or was taken from the search's
    `models`, else None). `models` None: train it; `retrain` of two or more masks: train each
    (on `data`) and average them."""
    if retrain is not None and len(retrain) > 1:
        chosen = ensemble.trained_members(cfg, spec, variables, retrain, data)
        return ensemble.final_from_members(spec, chosen, data.arrays.x_val, data.x_test), chosen
    if models is not None:
        chosen = ensemble.members_from_models(mask, models, cfg.final.ensemble)
        if chosen is not None:
            wanted = max(1, cfg.final.ensemble)
            if len(chosen) < wanted:
                logger.info(f"note: final.ensemble = {wanted} but the search kept {len(chosen)} "
                            f"whole-budget model(s); the ensemble has {len(chosen)}")
            what = (f"an ensemble of {len(chosen)} of the search's models" if len(chosen) > 1
                    else "the selected mask's model from the search")
            logger.info(f"final model: {what}, no retraining")
            return ensemble.final_from_members(spec, chosen, data.arrays.x_val, data.x_test), chosen
        logger.info("note: the selected mask's model was not kept by the search (restored from the "
                    "journal on a resume); training the final model again")
    return train_final(cfg, spec, variables, mask, data), None


def final_model_record(chosen: ensemble.Members | None, retrained: bool = False) -> dict:
    """What metrics.json says of where the final model came from: trained, or the search's
    models, one or an ensemble (`retrained`: an ensemble trained after the search)."""
    if chosen is None:
        return {"source": "trained", "ensemble": 1}
    return {"source": "trained" if retrained else "search", "ensemble": len(chosen),
            "members": list(chosen.keys), "masks": [dict(m) for m in chosen.masks]}


def checkpoint_members(chosen: ensemble.Members | None) -> list[tuple[dict, dict]] | None:
    """The (variables, mask) pairs an ensemble checkpoint holds; None for a single model."""
    if chosen is None or len(chosen) == 1:
        return None
    return list(zip(chosen.variables, chosen.masks))
