"""Inference from a finished run's checkpoint, without the training data.

    python -m deft_jax.predict --run RUN_DIR PATH [PATH ...] [--csv OUT.csv]

A PATH is an image file or a folder (searched recursively; the loader's image types and
hidden-file rules). Prints one line per image: path, predicted class name, probability
(control characters in a path or class name shown as escapes such as \\x1b, so a line is
always one line); with `--csv OUT` those rows, with every class's probability, go to the
CSV file instead. For a folder whose images are all in class sub-folders (or
split/class sub-folders) named after the run's classes it then prints accuracy, macro-F1
and the confusion matrix. A progress bar (stderr) on a terminal, plain lines otherwise.
"""

from __future__ import annotations

import sys

from deft_jax import api
from deft_jax.cli import arguments, batch, logs
from deft_jax.cli.progress import ItemProgress
from deft_jax.errors import exit_on_user_error
from deft_jax.run import escape
from deft_jax.runtime import huge_pages

PROGRESS_FROM = 32  # more images than this: show progress


def build_parser() -> arguments.ArgumentParser:
    p = arguments.ArgumentParser(prog="python -m deft_jax.predict",
                                 description="Classify images with a finished DEFT run's checkpoint.")
    p.add_argument("--run", required=True, help="run directory written by python -m deft_jax.search")
    p.add_argument("--csv", metavar="OUT", help="write path, predicted class, probability and every "
                                                "class's probability to this CSV file")
    p.add_argument("images", nargs="+", metavar="PATH", help="image files (jpg, png, ...) or folders of them")
    return p


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # the process's own command line: start it again with huge pages
        huge_pages.restart_with_huge_pages()
    if args.csv:
        batch.check_writable(args.csv)
    from deft_jax.runtime import compile_cache
    with logs.printed("stderr"):  # stdout is the predictions
        compile_cache.enable()
        model = api.load(args.run)
        names = model.class_names
        inputs = batch.collect(args.images, names)
        if len(inputs.paths) > PROGRESS_FROM:
            with ItemProgress(len(inputs.paths), "classified") as progress:
                probs = model.predict(inputs.paths, on_progress=progress.advance)
        else:
            probs = model.predict(inputs.paths)
        if args.csv:
            batch.write_csv(args.csv, inputs.paths, probs, names)
            print(f"wrote {len(inputs.paths)} predictions to {escape.terminal(args.csv)}")
        else:
            for path, row in zip(inputs.paths, probs):
                i = int(row.argmax())
                print(f"{escape.terminal(path)}\t{escape.terminal(names[i])}\t{row[i]:.4f}")
        for where, indices in inputs.labelled.items():
            lines = batch.report_lines(where, probs[indices], [inputs.labels[i] for i in indices], names)
            print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
