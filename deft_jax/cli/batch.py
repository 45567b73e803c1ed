"""Batch prediction for `python -m deft_jax.predict`: the image files of the paths given
(a folder is searched recursively with the loader's rules, `deft_jax.data.layout`), the
CSV of every prediction, and for a folder whose class (or split/class) sub-folders are the
run's classes, its accuracy, macro-F1 and confusion matrix."""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path

import numpy as np

from deft_jax.core.metrics import classification_report
from deft_jax.data.images import IMAGE_EXTENSIONS
from deft_jax.data.layout import folder_label, image_files
from deft_jax.errors import UserError
from deft_jax.run import escape

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Inputs:
    paths: list[str]  # every image, in the order given (a folder's files sorted)
    labels: list[str | None]  # its class from the folder layout, None if unknown
    labelled: dict[str, list[int]]  # folder given -> its images' indices, if all are labelled


def collect(args: list[str], class_names: list[str]) -> Inputs:
    """The images of the paths on the command line (a missing path or an empty folder is
    a UserError, before any work)."""
    out = Inputs([], [], {})
    for arg in args:
        path = Path(arg)
        if path.is_dir():
            files = image_files(path)
            if not files:
                raise UserError(f"no images found in {arg} (extensions: {', '.join(IMAGE_EXTENSIONS)}, "
                                "any letter case; hidden files are skipped)")
            labels = [folder_label(f.relative_to(path), class_names) for f in files]
            start = len(out.paths)
            out.paths += [str(f) for f in files]
            out.labels += labels
            known = sum(label is not None for label in labels)
            if known == len(files):
                out.labelled[arg] = list(range(start, len(out.paths)))
            elif known:
                logger.info(f"{escape.terminal(arg)}: {len(files) - known} of {len(files)} images are not in "
                            "a sub-folder named after one of the run's classes: no accuracy for it")
        elif path.exists():
            out.paths.append(arg)
            out.labels.append(None)
        else:
            raise UserError(f"not found: {arg}")
    return out


def check_writable(csv_path: str) -> None:
    parent = Path(csv_path).resolve().parent
    if not parent.is_dir():
        raise UserError(f"--csv {csv_path}: folder {parent} does not exist")
    if Path(csv_path).is_dir():
        raise UserError(f"--csv {csv_path} is a folder")


def write_csv(csv_path: str, paths: list[str], probs: np.ndarray, class_names: list[str]) -> None:
    """One row per image: path, predicted class, its probability, every class's probability
    (the header names the classes)."""
    try:
        with open(csv_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "predicted", "probability", *class_names])
            for path, row in zip(paths, probs):
                i = int(row.argmax())
                writer.writerow([path, class_names[i], f"{row[i]:.6f}", *(f"{p:.6f}" for p in row)])
    except OSError as err:
        raise UserError(f"cannot write {csv_path}: {err.strerror or err}") from None


def report_lines(where: str, probs: np.ndarray, labels: list[str], class_names: list[str]) -> list[str]:
    """Accuracy, macro-F1 and the confusion matrix (rows: true class) of a labelled folder."""
    y = np.array([class_names.index(label) for label in labels])
    report = classification_report(probs, y, class_names)  # argmax of probabilities = of logits
    names = [escape.terminal(c) for c in class_names]
    matrix = report["confusion_matrix"]
    width = max([len(n) for n in names] + [len(str(v)) for row in matrix for v in row])
    lines = [f"{escape.terminal(where)}: {report['n']} labelled images, accuracy {report['accuracy']:.4f}, "
             f"macro-F1 {report['macro_f1']:.4f}",
             "confusion matrix (rows: true class, columns: predicted class):",
             " " * width + "  " + " ".join(n.rjust(width) for n in names)]
    lines += [name.rjust(width) + "  " + " ".join(str(v).rjust(width) for v in row)
              for name, row in zip(names, matrix)]
    return lines
