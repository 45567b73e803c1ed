"""One fitness worker process of `WorkerPoolEvaluator` (`deft_jax.evolution.evaluators.workers`):

    python -m deft_jax.evolution.evaluators.worker_main CORE

It pins itself to CPU core CORE before JAX starts (XLA's threads then share that one core),
reads the evaluator's inputs once from stdin, answers `("ready", info)`, then scores one mask
per message - `("fitness" | "logits", mask, epochs, keep_model)` - with an ordinary in-process
evaluator (`sequential`, or `vmap-1`: a one-member population program) until stdin closes. Every answer is `("done", reply)` or
`("error", traceback)`; messages are `frames`. Nothing but frames goes to stdout.
"""

from __future__ import annotations

import os
import sys

from deft_jax.evolution.evaluators import frames

JAX_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                "jax_enable_x64", "jax_default_matmul_precision")  # copied from the parent


def serve(setup: dict, stdin, stdout) -> int:
    """Build the evaluator from `setup`, then answer requests; returns the exit status."""
    import logging
    import traceback

    import jax

    from deft_jax.core import epoch_count
    from deft_jax.core.masks import mask_key
    from deft_jax.evolution.evaluators.population import PopulationEvaluator
    from deft_jax.evolution.evaluators.sequential import SequentialEvaluator
    from deft_jax.models import build_model
    from deft_jax.runtime.compile_log import CompileLog

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"fitness worker on core {setup['core']}: %(message)s")
    for key, value in setup["jax"].items():
        if value is not None:
            jax.config.update(key, value)
    compiles = CompileLog().start()  # reported with every answer (the search sums the workers')
    try:
        name, granularity = setup["model"]
        spec = build_model(name, setup["data"].num_classes, "none", setup["input_size"], granularity)
        if spec.group_rules != setup["group_rules"]:
            raise RuntimeError(f"worker built {name} with other layer groups than the search's")
        inputs = (spec, setup["variables"], setup["data"], setup["recipe"])
        evaluator = (SequentialEvaluator(*inputs) if setup["mode"] == "sequential"
                     else PopulationEvaluator(*inputs, members_per_program=1))  # vmap-1
        frames.write_frame(stdout, ("ready", {"pid": os.getpid(), "cores": sorted(os.sched_getaffinity(0))}))
    except BaseException:
        frames.write_frame(stdout, ("error", traceback.format_exc()))
        return 1
    while True:
        try:
            kind, mask, epochs, keep_model = frames.read_frame(stdin)
        except EOFError:  # the search closed the pipe (or died): nothing more to do
            return 0
        try:
            before = epoch_count.TOTAL.epochs
            if kind == "fitness":
                evaluator.keep_models = keep_model
                reply = {"fitness": evaluator.evaluate([mask], epochs)[0], "model": None}
                if keep_model:  # the search keeps it; this process forgets it
                    reply["model"] = evaluator.models.pop(mask_key(mask), (None, None))[1]
            elif kind == "logits":
                reply = {"logits": evaluator.evaluate_logits([mask], epochs)[0]}
            else:
                raise ValueError(f"unknown request {kind!r}")
            reply["epochs"] = epoch_count.TOTAL.epochs - before
            reply["stats"] = {**evaluator.stats(), "worker_compile_s": compiles.seconds(),
                              "worker_programs": compiles.total_programs()}
            frames.write_frame(stdout, ("done", reply))
        except BaseException:
            frames.write_frame(stdout, ("error", traceback.format_exc()))
            return 1


def main(argv: list[str] | None = None) -> int:
    core = int((sys.argv[1:] if argv is None else argv)[0])
    if core >= 0:
        os.sched_setaffinity(0, {core})
    stdin = os.fdopen(sys.stdin.fileno(), "rb", buffering=0)
    stdout = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not enter the pipe
    sys.stdout = sys.stderr
    try:
        setup = frames.read_frame(stdin)
    except EOFError:
        return 0
    return serve(setup, stdin, stdout)


if __name__ == "__main__":
    sys.exit(main())
