"""Orbax checkpoint of a trained model with everything inference needs.

Restoring is checked before anything large is allocated: the JSON metadata is read
first and validated (model name, class names and their count, input size, normalisation,
sampling), then the stored arrays' shapes (orbax metadata only, no data read) are compared
with the shapes the metadata's model has. Any mismatch, or files that cannot be read, is
one `UserError` line.

A single model's checkpoint holds `state` = {params, batch_stats} and its metadata. An
ensemble's (`final.ensemble`) holds `state` = {member0: {params, batch_stats}, member1:
...} and says so in its metadata: `ensemble` = {"members": k, "masks": [each member's
mask]} (member 0 is the selected mask, also `mask`). A checkpoint without `ensemble` is a
single model, as every checkpoint written before ensembles were.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from deft_jax.config.sources import MAX_CROP, MAX_INPUT_SIZE
from deft_jax.core.divergence import all_finite
from deft_jax.data.dataset import MAX_CLASSES
from deft_jax.errors import UserError
from deft_jax.runtime import rundir

logger = logging.getLogger(__name__)


ENSEMBLE = "ensemble"  # the metadata field of an ensemble checkpoint
MAX_MEMBERS = 100  # as final.ensemble's bound
COLLECTIONS = ("params", "batch_stats")


def member_name(i: int) -> str:
    return f"member{i}"


def save_checkpoint(path: Path, variables: dict, meta: dict, members: list[tuple[dict, dict]] | None = None) -> None:
    """`variables` = {'params', 'batch_stats'}; `meta` = JSON metadata (model name, class
    names, preprocessing, mask ...). `members`: an ensemble's (variables, mask) pairs, the
    selected mask's first (then `variables` is not used); one member is a single model."""
    path = Path(path).absolute()

    def arrays(v: dict) -> dict:
        return jax.tree.map(np.asarray, {c: v[c] for c in COLLECTIONS})

    if members is not None and len(members) > 1:
        state = {member_name(i): arrays(v) for i, (v, _) in enumerate(members)}
        meta = {**meta, ENSEMBLE: {"members": len(members), "masks": [dict(m) for _, m in members]}}
    else:
        state = arrays(variables if not members else members[0][0])
    meta = {**meta, FINGERPRINT: checkpoint_fingerprint(meta, stored_shapes(state, len(members or ())))}
    # a save is this process's own business: in a multi-process run only process 0 saves,
    # and orbax must not wait at barriers for processes that never call it
    local = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                               active_processes={jax.process_index()})
    handler = ocp.CompositeCheckpointHandler(
        state=ocp.StandardCheckpointHandler(multiprocessing_options=local),
        meta=ocp.JsonCheckpointHandler(multiprocessing_options=local),
        composite_options=ocp.CompositeOptions(multiprocessing_options=local))
    checkpointer = ocp.Checkpointer(handler, multiprocessing_options=local)
    # on a full disk orbax's writer threads log each failure with its traceback (absl ERROR)
    # and leave callbacks that find the event loop closed; the error below says it once
    _quiet_closed_loop_callbacks()
    absl, level = logging.getLogger("absl"), logging.getLogger("absl").level
    absl.setLevel(logging.CRITICAL)
    try:
        checkpointer.save(path, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    except Exception as err:  # only a full disk becomes a user error; anything else is a bug
        if not rundir.is_disk_full(err):
            raise
        raise UserError(rundir.disk_full_message(path)) from None
    finally:
        absl.setLevel(level)


FINGERPRINT = "fingerprint"


def checkpoint_fingerprint(meta: dict, shapes: dict) -> str:
    """sha256 of the metadata (preprocessing: model, classes, input size, mean/std,
    sampling, mask ...) and the stored arrays' shapes, written with the checkpoint: an
    edited metadata file (an input_size that still fits the weights) would otherwise give
    silently wrong predictions."""
    content = {k: v for k, v in meta.items() if k != FINGERPRINT}
    return rundir.fingerprint({"meta": content,
                               "shapes": {c: {n: list(s) for n, s in v.items()} for c, v in shapes.items()}})


def _first_line(err: BaseException) -> str:
    """orbax/tensorstore messages carry a long JSON spec after the reason; keep the reason."""
    line = (str(err).splitlines() or [type(err).__name__])[0]
    return line.split(" [tensorstore_spec=")[0][:400]


def validate_meta(meta, where) -> dict:
    """The checkpoint's metadata as inference needs it, or a one-line UserError."""
    from deft_jax.models.groups import GRANULARITIES
    from deft_jax.models.registry import MODEL_NAMES

    def need(ok: bool, message: str):
        if not ok:
            raise UserError(f"checkpoint {where} has invalid metadata: {message}")

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def numbers(v) -> bool:
        return (isinstance(v, list) and len(v) in (1, 3) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v))

    need(isinstance(meta, dict), "not a JSON object")
    need(meta.get("model") in MODEL_NAMES, f"unknown model {meta.get('model')!r}")
    names = meta.get("class_names")
    need(isinstance(names, list) and 2 <= len(names) <= MAX_CLASSES
         and all(isinstance(n, str) for n in names),
         f"class_names must be a list of 2 to {MAX_CLASSES} names")
    need(is_int(meta.get("num_classes")) and meta["num_classes"] == len(names),
         f"num_classes {meta.get('num_classes')!r} does not match the {len(names)} class_names")
    need(is_int(meta.get("input_size")) and 8 <= meta["input_size"] <= MAX_INPUT_SIZE,
         f"input_size must be an integer in [8, {MAX_INPUT_SIZE}], got {meta.get('input_size')!r}")
    need(numbers(meta.get("mean")), "mean must be one or three finite numbers")
    need(numbers(meta.get("std")) and all(x > 0 for x in meta["std"]),
         "std must be one or three positive numbers")
    need(meta.get("granularity", "block") in GRANULARITIES,
         f"granularity must be {' or '.join(GRANULARITIES)}, got {meta.get('granularity')!r}")
    sampling = meta.get("sampling") or {}
    need(isinstance(sampling, dict), "sampling must be an object")
    # bounded before anything is allocated: image_size as model.input_size is (every crop
    # is resized to it), a crop by the largest image this reads
    for key, top in (("crop", MAX_CROP), ("crop_stride", MAX_CROP), ("image_size", MAX_INPUT_SIZE)):
        value = sampling.get(key)
        need(value is None or (is_int(value) and 1 <= value <= top),
             f"sampling.{key} must be empty or an integer in [1, {top}], got {value!r}")
    ensemble = meta.get(ENSEMBLE)
    if ensemble is not None:
        need(isinstance(ensemble, dict) and is_int(ensemble.get("members"))
             and 2 <= ensemble["members"] <= MAX_MEMBERS,
             f"ensemble.members must be an integer in [2, {MAX_MEMBERS}]")
        masks = ensemble.get("masks")
        need(isinstance(masks, list) and len(masks) == ensemble["members"]
             and all(isinstance(m, dict) for m in masks),
             f"ensemble.masks must be a list of {ensemble['members']} masks")
    return meta


def member_count(meta: dict) -> int:
    """How many models a (validated) checkpoint's metadata says it holds."""
    return meta[ENSEMBLE]["members"] if meta.get(ENSEMBLE) else 1


def stored_shapes(state: dict, members: int) -> dict:
    """"collection" (a single model) or "memberI/collection" (an ensemble) -> name -> shape."""
    if members <= 1:
        return {c: _shapes(state.get(c) or {}) for c in COLLECTIONS}
    return {f"{member_name(i)}/{c}": _shapes((state.get(member_name(i)) or {}).get(c) or {})
            for i in range(members) for c in COLLECTIONS}


def _shapes(tree) -> dict:
    flat = traverse_util.flatten_dict(tree, sep="/") if tree else {}
    return {k: tuple(v.shape) for k, v in flat.items()}


def _quiet_closed_loop_callbacks() -> None:
    """Reading a corrupt checkpoint leaves tensorstore reads in flight whose completion
    callbacks later find orbax's asyncio loop closed; Python prints each as an
    'unraisable' RuntimeError('Event loop is closed') traceback after our one error line.
    Drop exactly those; every other unraisable exception still reaches the previous hook."""
    previous = sys.unraisablehook
    if getattr(previous, "deft_jax_quiet", False):
        return

    def hook(unraisable):
        value = unraisable.exc_value
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return
        previous(unraisable)

    hook.deft_jax_quiet = True
    sys.unraisablehook = hook


def restore_models(path: Path):
    """(ModelSpec, [variables of each member], meta) from a checkpoint written by
    `save_checkpoint`: one member for a single model, the selected mask's first for an
    ensemble. Every weight comes from the checkpoint; the model's structure comes from the
    validated metadata, and the stored shapes must be exactly that structure's."""
    from deft_jax.models import build_model

    path = Path(path).absolute()
    if not path.is_dir():
        raise UserError(f"no checkpoint at {path}")
    _quiet_closed_loop_callbacks()
    absl, level = logging.getLogger("absl"), logging.getLogger("absl").level
    absl.setLevel(logging.ERROR)  # orbax warns on stderr about a missing file; we say it once
    try:
        meta = ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(
            path, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        stored = ocp.Checkpointer(ocp.StandardCheckpointHandler()).metadata(path / "state").item_metadata
    except (OSError, ValueError, KeyError, TypeError) as err:  # missing or corrupt files; one line
        raise UserError(f"cannot restore checkpoint {path}: {_first_line(err)}") from None
    finally:
        absl.setLevel(level)
    if stored is None or not isinstance(getattr(stored, "tree", None), dict):
        raise UserError(f"cannot restore checkpoint {path}: its arrays' metadata is unreadable")
    stored = stored.tree
    meta = validate_meta(dict(meta) if isinstance(meta, dict) else meta, path)
    spec = build_model(meta["model"], meta["num_classes"], "none", meta["input_size"],
                       meta.get("granularity", "block"))
    count = member_count(meta)
    one = spec.variable_shapes()  # tracing only: nothing is allocated
    expected = one if count == 1 else {member_name(i): one for i in range(count)}
    have, want = stored_shapes(stored, count), stored_shapes(expected, count)
    unexpected = sorted(set(stored) - ({*COLLECTIONS} if count == 1 else {member_name(i) for i in range(count)}))
    if unexpected:
        raise UserError(f"checkpoint {path} does not match its metadata ({count} model(s)): it also "
                        f"stores {unexpected[0]}")
    for collection in want:
        needed, got = want[collection], have.get(collection, {})
        for name in sorted(set(needed) | set(got)):
            if needed.get(name) != got.get(name):
                raise UserError(
                    f"checkpoint {path} does not match its metadata ({meta['model']}, "
                    f"{meta['num_classes']} classes): {collection}/{name} is stored as "
                    f"{got.get(name, 'missing')}, the model needs {needed.get(name, 'none')}")
    if meta.get(FINGERPRINT) is None:
        logger.warning(f"warning: checkpoint {path} has no fingerprint (written by an older version): "
                       "cannot check that its metadata is unchanged since it was saved")
    elif checkpoint_fingerprint(meta, have) != meta[FINGERPRINT]:
        raise UserError(f"checkpoint {path} was modified after it was saved: its metadata or arrays do not "
                        "match the fingerprint written with them (predictions would use the wrong "
                        "preprocessing); restore the original checkpoint")
    try:
        state = ocp.Checkpointer(ocp.CompositeCheckpointHandler()).restore(
            path, args=ocp.args.Composite(state=ocp.args.StandardRestore(expected)))["state"]
    except (OSError, ValueError, KeyError, TypeError) as err:  # missing or corrupt array files
        raise UserError(f"cannot restore checkpoint {path}: {_first_line(err)}") from None
    trees = [state] if count == 1 else [state[member_name(i)] for i in range(count)]
    members = [{"params": dict(t["params"]), "batch_stats": dict(t.get("batch_stats") or {})} for t in trees]
    if not all(all_finite(v) for v in members):
        raise UserError(f"checkpoint {path} holds non-finite parameters (a diverged model)")
    return spec, members, meta
