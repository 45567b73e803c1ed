"""What a search's fine-tunes start from (`search.start`): the pretrained backbone with the
fresh random head of `spec.init`, or with the head of a linear probe fitted once per run on
the frozen features of train and val (`deft_jax.core.probe.fit_head`, as `lp-ft`). Every
fitness fine-tune and the final training start from the same variables; the probe trains
no epoch (one inference pass and a full-batch fit of the head)."""

from __future__ import annotations

import logging

from deft_jax.config.schema import Config
from deft_jax.core.probe import Probe, fit_head
from deft_jax.data.inputs import SplitArrays
from deft_jax.models.base import ModelSpec
from deft_jax.runtime.program_cache import ProgramCache

logger = logging.getLogger(__name__)


def start_variables(cfg: Config, spec: ModelSpec, variables: dict, data: SplitArrays,
                    cache: ProgramCache | None = None) -> tuple[dict, Probe | None]:
    """(the variables the search's fine-tunes start from, the probe or None)."""
    if cfg.search.start == "head":
        return variables, None
    probe = fit_head(spec, variables, data.x_train, data.y_train, data.x_val, data.y_val, cache=cache)
    logger.info(f"search start: the head of a linear probe (L2 {probe.l2:g}, validation log-loss "
                f"{probe.val_log_loss[str(probe.l2)]:.4f})")
    return probe.variables, probe


def probe_extra(probe: Probe | None) -> dict:
    """What a result records about its start."""
    if probe is None:
        return {"start": "head"}
    return {"start": "probe", "probe_l2": probe.l2, "probe_val_log_loss": probe.val_log_loss[str(probe.l2)]}
