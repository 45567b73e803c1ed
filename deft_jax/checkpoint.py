"""Orbax checkpoint of a trained model with everything inference needs."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from deft_jax.errors import UserError


def save_checkpoint(path: Path, variables: dict, meta: dict) -> None:
    """`variables` = {'params', 'batch_stats'}; `meta` = JSON metadata (model name, class
    names, preprocessing, mask ...)."""
    path = Path(path).absolute()
    state = jax.tree.map(np.asarray, {"params": variables["params"],
                                      "batch_stats": variables["batch_stats"]})
    # a save is this process's own business: in a multi-process run only process 0 saves,
    # and orbax must not wait at barriers for processes that never call it
    local = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                               active_processes={jax.process_index()})
    handler = ocp.CompositeCheckpointHandler(
        state=ocp.StandardCheckpointHandler(multiprocessing_options=local),
        meta=ocp.JsonCheckpointHandler(multiprocessing_options=local),
        composite_options=ocp.CompositeOptions(multiprocessing_options=local))
    checkpointer = ocp.Checkpointer(handler, multiprocessing_options=local)
    checkpointer.save(path, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)


def load_checkpoint(path: Path) -> tuple[dict, dict]:
    path = Path(path).absolute()
    if not path.is_dir():
        raise UserError(f"no checkpoint at {path}")
    try:
        checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        restored = checkpointer.restore(path, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    except Exception as err:  # orbax raises many types; the user needs one line
        raise UserError(f"cannot restore checkpoint {path}: {str(err).splitlines()[0]}") from None
    return dict(restored["state"]), dict(restored["meta"])
