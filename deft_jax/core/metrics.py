"""Classification metrics from logits: accuracy, macro-F1, log-loss, per-class recall, confusion.

A validation *metric* (`search.metric`) is higher-is-better: "accuracy", "macro_f1", or
"nll", minus the mean log-loss (cross-entropy of the softmax); fitness = 1 - metric, so with
"nll" fitness = 1 + the val log-loss. What a person reads names the quantity in its own sign
(`quantity_name`, `quantity_of`): a log-loss is positive and lower is better."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, int), np.asarray(predictions, int)), 1)
    return cm


def accuracy(labels, predictions) -> float:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return float(np.mean(labels == predictions)) if labels.size else 0.0


def macro_f1(labels, predictions, num_classes: int) -> float:
    """Mean F1 over the classes present in labels or predictions (sklearn's convention)."""
    cm = confusion_matrix(labels, predictions, num_classes)
    tp = np.diag(cm).astype(float)
    support, predicted = cm.sum(1), cm.sum(0)
    present = (support + predicted) > 0
    denom = support + predicted
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    return float(f1[present].mean()) if present.any() else 0.0


def per_class_recall(labels, predictions, num_classes: int) -> list[float | None]:
    cm = confusion_matrix(labels, predictions, num_classes)
    support = cm.sum(1)
    return [float(cm[c, c] / support[c]) if support[c] else None for c in range(num_classes)]


def log_loss(logits, labels) -> float:
    """Mean cross-entropy of the softmax of `logits` [N, C] at the integer `labels` (float64)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    return float(-log_p[np.arange(labels.size), labels].mean()) if labels.size else 0.0


def metric_from_logits(name: str, logits: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """The validation metric `name` (higher is better): accuracy, macro_f1 or nll (minus the
    mean log-loss)."""
    if name == "nll":
        return -log_loss(logits, labels)
    predictions = np.argmax(logits, axis=-1)
    if name == "accuracy":
        return accuracy(labels, predictions)
    if name == "macro_f1":
        return macro_f1(labels, predictions, num_classes)
    raise ValueError(f"unknown metric {name!r}")


QUANTITY_NAMES = {"accuracy": "accuracy", "macro_f1": "macro-F1", "nll": "log-loss"}


def quantity_name(metric: str) -> str:
    """What a report calls `search.metric`'s quantity: "accuracy", "macro-F1", "log-loss"."""
    return QUANTITY_NAMES[metric]


def lower_is_better(metric: str) -> bool:
    """Whether the quantity `quantity_of` returns is better when lower (the log-loss)."""
    return metric == "nll"


def quantity_of(metric: str, fitness: float) -> float:
    """The val quantity behind a fitness, in its own sign: accuracy or macro-F1 (1 - fitness),
    or the mean log-loss (fitness - 1, never negative)."""
    return fitness - 1.0 if metric == "nll" else 1.0 - fitness


def fitness_formula(metric: str) -> str:
    """'fitness = 1 - val accuracy' or 'fitness = 1 + val log-loss' (lower fitness is better)."""
    return f"fitness = 1 {'+' if metric == 'nll' else '-'} val {quantity_name(metric)}"


def metric_from_report(name: str, report: dict) -> float:
    """The validation metric `name` of a `classification_report` (higher is better)."""
    return -report["log_loss"] if name == "nll" else report[name]


def classification_report(logits: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """Everything metrics.json records for one split."""
    c = len(class_names)
    predictions = np.argmax(logits, axis=-1)
    return {
        "n": int(len(labels)),
        "accuracy": accuracy(labels, predictions),
        "macro_f1": macro_f1(labels, predictions, c),
        "log_loss": log_loss(logits, labels),
        "per_class_recall": dict(zip(class_names, per_class_recall(labels, predictions, c))),
        "confusion_matrix": confusion_matrix(labels, predictions, c).tolist(),
    }


def roc_auc_ovr(labels, probabilities, num_classes: int | None = None) -> float:
    """Macro one-vs-rest ROC AUC from class probabilities [N, C].

    Per class c, AUC_c = P(score of a random positive > score of a random negative), ties
    counting 1/2: the Mann-Whitney U statistic from tie-averaged ranks of column c,
    (sum of the positives' ranks - P (P + 1) / 2) / (P * N). The result is the mean over the
    classes that have both positives and negatives in `labels` (a class absent from the
    labels has no AUC); nan if there is none. Equal to scikit-learn's
    roc_auc_score(multi_class="ovr", average="macro") when every class is present.
    """
    from scipy.stats import rankdata

    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    scores = np.asarray(probabilities, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != labels.size:
        raise ValueError(f"probabilities must be [N, C] with N = {labels.size}, got {list(scores.shape)}")
    num_classes = scores.shape[1] if num_classes is None else num_classes
    aucs = []
    for c in range(num_classes):
        positive = labels == c
        n_pos = int(positive.sum())
        n_neg = labels.size - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = rankdata(scores[:, c])  # ties share their average rank
        u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
        aucs.append(u / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else float("nan")


def softmax(logits) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row maximum is subtracted first)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def correctness_bits(logits: np.ndarray, labels: np.ndarray) -> str:
    """Which items `logits` classify correctly, compactly: the bits (item i = bit i, most
    significant first, as np.packbits) as a hex string; `bits_correct` reads it back."""
    correct = np.argmax(np.asarray(logits), axis=-1) == np.asarray(labels).reshape(-1)
    return np.packbits(correct.astype(np.uint8)).tobytes().hex()


def bits_correct(text: str, n: int) -> np.ndarray:
    """The bool vector of `n` items that `correctness_bits` wrote as `text`."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))[:n].astype(bool)
