"""`WorkerPoolEvaluator`: population members scored one per CPU core, in worker processes.

XLA:CPU runs one fine-tune at a time faster per core than two at once in one process, and
its compiles use one core, so on a multi-core CPU `search.workers = N` starts N processes
(`worker_main`), each pinned to its own core, each with the evaluator the run asked for
(`sequential` or `vmap-1`, built from the same model, starting variables, data and fitness
recipe). Members go to whichever worker is free; fitness comes back in mask order, and the
callbacks (`on_member_scored`, `on_member_done`) fire as each member finishes.

A member's fitness does not depend on which worker scored it or on how many there are: every
worker computes it alone on one core, so N workers give one worker's numbers bit for bit.
They are not the in-process evaluator's numbers on a multi-core machine (XLA:CPU's results
depend on the cores a process may use). Epochs trained in the workers count in this
process's `epoch_count`; whole-budget models come back for `final.reuse` /
`final.ensemble` (`FinalModelCandidates`).
"""

from __future__ import annotations

import logging
import os
import selectors
import subprocess
import sys
import weakref
from collections.abc import Sequence

import jax
import numpy as np

from deft_jax.core import epoch_count
from deft_jax.core.masks import GroupMask, mask_key
from deft_jax.data.inputs import SplitArrays
from deft_jax.evolution.evaluators import frames
from deft_jax.evolution.evaluators.kept_models import FinalModelCandidates
from deft_jax.evolution.evaluators.recipe import FitnessRecipe
from deft_jax.evolution.evaluators.worker_main import JAX_SETTINGS
from deft_jax.models.base import ModelSpec

logger = logging.getLogger(__name__)

INNER_MODES = ("sequential", "vmap-1")  # what a worker may run


class WorkerFailed(RuntimeError):
    """A worker process raised or died; carries its traceback."""


def worker_cores(n: int) -> list[int]:
    """The core each of n workers is pinned to: this process's cores, round robin."""
    cores = sorted(os.sched_getaffinity(0))
    return [cores[i % len(cores)] for i in range(n)]


def _close(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.stdin and not p.stdin.closed:
            try:
                p.stdin.close()  # the worker exits at end of input
            except OSError:
                pass
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        if p.stdout and not p.stdout.closed:
            p.stdout.close()


class WorkerPoolEvaluator(FinalModelCandidates):
    """`Evaluator` over `workers` processes, one core each, each running `mode`."""

    on_member_done = None
    on_member_scored = None
    can_keep_models = True  # the workers' evaluators keep them and send them here

    def __init__(self, spec: ModelSpec, variables: dict, data: SplitArrays, recipe: FitnessRecipe, *,
                 mode: str, workers: int, model: tuple[str, str]):
        """`model`: (registry name, granularity) the workers rebuild `spec` from (with random
        weights: the search's `variables` are sent to them)."""
        if mode not in INNER_MODES:
            raise ValueError(f"worker processes run {' or '.join(INNER_MODES)}, not {mode!r}")
        super().__init__()
        self.spec, self.name, self.workers = spec, mode, workers
        self.cores = worker_cores(workers)
        setup = {"model": model, "input_size": spec.input_size, "group_rules": spec.group_rules,
                 "mode": mode, "recipe": recipe, "data": data,
                 "variables": jax.tree.map(np.asarray, jax.device_get(variables)),
                 "jax": {k: getattr(jax.config, k, None) for k in JAX_SETTINGS}}
        env = {**os.environ, "JAX_PLATFORMS": "cpu"}
        self.procs: list[subprocess.Popen] = []
        self._finalizer = weakref.finalize(self, _close, self.procs)
        for core in self.cores:
            p = subprocess.Popen([sys.executable, "-m", "deft_jax.evolution.evaluators.worker_main", str(core)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env)
            self.procs.append(p)
            frames.write_frame(p.stdin, {**setup, "core": core})
        self.ready = [False] * workers
        self.worker_stats: list[dict] = [{} for _ in range(workers)]

    def _receive(self, w: int):
        try:
            kind, body = frames.read_frame(self.procs[w].stdout)
        except EOFError:
            self.close()
            raise WorkerFailed(f"fitness worker {w} (core {self.cores[w]}) exited with status "
                               f"{self.procs[w].wait()} without an answer") from None
        if kind == "error":
            self.close()
            raise WorkerFailed(f"fitness worker {w} (core {self.cores[w]}) failed:\n{body}")
        return body

    def _wait_ready(self) -> None:
        for w, ready in enumerate(self.ready):
            if not ready:
                self._receive(w)
                self.ready[w] = True

    def _run(self, jobs: list[tuple], on_reply) -> list[dict]:
        """Each job on the next free worker; `on_reply(index, reply)` as each finishes."""
        self._wait_ready()
        replies: list[dict | None] = [None] * len(jobs)
        todo, idle = list(range(len(jobs))), list(range(self.workers))
        with selectors.DefaultSelector() as sel:
            while todo or sel.get_map():
                while todo and idle:
                    w, j = idle.pop(0), todo.pop(0)
                    frames.write_frame(self.procs[w].stdin, jobs[j])
                    sel.register(self.procs[w].stdout, selectors.EVENT_READ, (w, j))
                for key, _ in sel.select():
                    w, j = key.data
                    sel.unregister(key.fileobj)
                    reply = self._receive(w)
                    self.worker_stats[w] = reply["stats"]
                    epoch_count.TOTAL.add(reply["epochs"])
                    replies[j] = reply
                    idle.append(w)
                    on_reply(j, reply)
        return replies

    def evaluate(self, masks: Sequence[GroupMask], epochs: int | None = None) -> list[float]:
        keep = self.keep_models and epochs is None

        def scored(i: int, reply: dict) -> None:
            if self.on_member_scored is not None:
                self.on_member_scored(i, reply["fitness"])
            if self.on_member_done is not None:
                self.on_member_done(1)

        replies = self._run([("fitness", m, epochs, keep) for m in masks], scored)
        for mask, reply in zip(masks, replies):  # in mask order, as an in-process evaluator keeps them
            if reply["model"] is not None:
                self.store_model(mask_key(mask), reply["fitness"], reply["model"])
        return [r["fitness"] for r in replies]

    def evaluate_logits(self, masks: Sequence[GroupMask], epochs: int | None = None) -> np.ndarray:
        replies = self._run([("logits", m, epochs, False) for m in masks], lambda i, r: None)
        return np.stack([r["logits"] for r in replies])

    def stats(self) -> dict:
        """The workers' own counters summed (compiles...), with how many ran on which cores."""
        total: dict = {"workers": self.workers, "worker_cores": self.cores}
        for s in self.worker_stats:
            for k, v in s.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    total[k] = total.get(k, 0) + v
        return total

    def close(self) -> None:
        """Stop the workers (also done when the evaluator is garbage-collected or at exit)."""
        self._finalizer()
