"""Inference from a finished run's checkpoint, without the training data.

    python -m deft_jax.predict --run RUN_DIR IMAGE [IMAGE ...]

Prints one line per image: path, predicted class name, probability (control characters
in a path or class name shown as escapes such as \\x1b, so a line is always one line).
"""

from __future__ import annotations

import sys
from pathlib import Path

from deft_jax.cli import arguments, logs
from deft_jax.errors import exit_on_user_error
from deft_jax.run import escape
from deft_jax.run.predictor import Predictor


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    p = arguments.ArgumentParser(prog="python -m deft_jax.predict",
                                description="Classify images with a finished DEFT run's checkpoint.")
    p.add_argument("--run", required=True, help="run directory written by python -m deft_jax.search")
    p.add_argument("images", nargs="+", help="image files (jpg, png, ...)")
    args = p.parse_args(argv)
    from deft_jax.runtime import compile_cache
    with logs.printed("stderr"):  # stdout is the predictions
        compile_cache.enable()
        predictor = Predictor(Path(args.run))
        for path, name, prob in predictor.predict_files(args.images):
            print(f"{escape.terminal(path)}\t{escape.terminal(name)}\t{prob:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
