"""report.md and report.html name every score by the quantity it is, in its own sign: an
accuracy run says val accuracy and 1 - accuracy, a log-loss run a positive val log-loss and
1 + log-loss; a differential evolution shows its generations, a screen its candidates and
finalists, and a run with no search says so and draws no search figure."""

import re

import numpy as np
import pytest

from deft_jax.core.metrics import fitness_formula, quantity_of
from deft_jax.run import figures
from deft_jax.run.report import render_report
from deft_jax.run.report_html import render_html
from deft_jax.run.search_view import candidates

GROUPS = {"stem": 100, "stage1": 2000, "stage2": 8000, "head": 40}
NAMES = list(GROUPS)
ALT = re.compile(r"alt='([^']*)'")


def shown(metric: str, kind: str) -> dict:
    """The arguments both reports take, for a run of `kind` ("de", "screen", "none")."""
    test = {"n": 10, "accuracy": 0.9, "macro_f1": 0.9, "confusion_matrix": [[4, 1], [0, 5]],
            "per_class_recall": {"a": 0.8, "b": 1.0}}
    nll = metric == "nll"
    memo = {"1111": 1.35, "0001": 1.9, "0011": 1.6, "0111": 1.5} if nll else \
        {"1111": 0.2, "0001": 0.5, "0011": 0.35, "0111": 0.3}
    history = [{"generation": 0, "best_fitness": min(memo.values()), "mean_fitness": float(np.mean(list(memo.values()))),
                "generation_best_fitness": min(memo.values()), "masks_evaluated": 4, "memo_hits": 0,
                "seconds": 1.0, "distinct_masks_so_far": 4}]
    memo_short: dict[str, int] = {}
    if kind == "screen":  # the full mask skips the screen; 0111 is promoted after its short run
        memo_short = {"0001": 1, "0011": 1}
        history[0]["short_fitness"] = {"0001": memo["0001"], "0011": memo["0011"],
                                       "0111": 1.7 if nll else 0.4}
    if kind == "de":
        history.append({**history[0], "generation": 1, "memo_hits": 4, "masks_evaluated": 0})
    cfg = {"search": {"metric": metric, "population_size": 4, "generations": 1 if kind == "de" else 0,
                      "differential_weight": 0.5, "crossover_rate": 0.9, "elitism": True, "select": "best",
                      "fidelity": "halving" if kind == "screen" else "full", "schedule": "final"},
           "finetune": {"optimizer": "sgd", "learning_rate": 0.01, "epochs": 1, "batch_size": 8},
           "final": {"epochs": 8, "ensemble": 3, "member_masks": "full" if kind == "none" else "search"},
           "data": {"split_seed": 0}, "model": {"input_size": 16}}
    none = kind == "none"
    return dict(cfg=cfg, description="digits", model="small_cnn", pretrained=None, group_sizes=GROUPS,
                best_mask=dict.fromkeys(NAMES, True), best_fitness=None if none else memo["1111"],
                history=[] if none else history, memo={} if none else memo, memo_short=memo_short,
                metrics={"test": test, "val": test, "trainable_fraction": 1.0}, class_names=["a", "b"],
                split_sizes={"train": 20, "val": 10, "test": 10}, seconds={"total": 1.0})


def page(args: dict) -> str:
    rng = np.random.default_rng(0)
    return render_html(**args, test_images=rng.integers(0, 255, (10, 16, 16, 3), dtype=np.uint8),
                       test_labels=np.array([0, 1] * 5), test_logits=_logits())


def _logits():
    """Ten test images, one misclassified."""
    logits = np.zeros((10, 2))
    logits[np.arange(10), np.array([0, 1] * 5)] = 2.0
    logits[0] = [0.0, 3.0]
    return logits


def numbers_after(text: str, label: str) -> list[float]:
    return [float(x) for x in re.findall(re.escape(label) + r"[^0-9\-|<]{0,40}(-?\d+\.\d+)", text)]


@pytest.mark.parametrize("kind", ["de", "screen"])
def test_a_log_loss_run_names_a_positive_val_log_loss_and_its_fitness_as_one_plus_it(kind):
    args = shown("nll", kind)
    for text in (render_report(**args), page(args)):
        assert "1 - val nll" not in text and "val nll" not in text
        assert "fitness = 1 + val log-loss" in text
        values = numbers_after(text, "val log-loss")
        assert values and all(v >= 0 for v in values)
        assert "0.3500" in text  # the selected mask's log-loss, 1.35 - 1
    alts = ALT.findall(page(args))
    assert "val log-loss, val log-loss against trainable parameters (down and left is better)" in alts


def test_an_accuracy_run_names_val_accuracy_and_its_fitness_as_one_minus_it():
    args = shown("accuracy", "de")
    for text in (render_report(**args), page(args)):
        assert "fitness = 1 - val accuracy" in text and "log-loss" not in text
        assert "val accuracy 0.8000" in text  # the selected mask, fitness 0.2
    alts = ALT.findall(page(args))
    assert "val accuracy, val accuracy against trainable parameters (up and left is better)" in alts
    assert "fitness = 1 - val accuracy, fitness per generation (lower is better)" in alts


def test_a_differential_evolution_shows_its_generations_and_a_screen_its_candidates_instead():
    de, screen = shown("nll", "de"), shown("nll", "screen")
    assert "differential evolution" in render_report(**de) and "## Search progress" in render_report(**de)
    assert "Fitness per generation" in render_report(**de)
    md, html = render_report(**screen), page(screen)
    for text in (md, html):
        assert "differential evolution" not in text and "generations after the initial one" not in text
        assert "a screen of 4 candidate masks" in text and "then 2 finalists" in text
    assert "Search progress" not in html and not any("per generation" in a for a in ALT.findall(html))
    table = md[md.index("## Candidates"):md.index("## Final model")]
    rows = [line for line in table.splitlines() if line.startswith("| ") and "candidate" not in line]
    assert len(rows) == 4
    full = next(r for r in rows if r.startswith("| every group"))
    assert full.split("|")[2].strip() == "" and "selected" in full  # skipped the screen, then won
    promoted = next(r for r in rows if r.startswith("| stage1, stage2, head"))
    assert [c.strip() for c in promoted.split("|")[2:5]] == ["0.7000", "0.5000", "finalist"]
    assert sum("screened out" in r for r in rows) == 2


def test_a_run_with_no_search_says_so_and_draws_no_search_figure():
    args = shown("nll", "none")
    md, html = render_report(**args), page(args)
    for text in (md, html):
        assert "no search" in text.lower() and "fitness =" not in text
        assert "differential evolution" not in text and "Pareto" not in text and "Candidates" not in text
        assert "no search ran, and the final model trained on train" in text
    assert not any("fitness" in a or "against" in a for a in ALT.findall(html))  # only the thumbnails


def test_the_candidates_keep_the_short_score_of_a_promoted_mask():
    args = shown("accuracy", "screen")
    rows = candidates(args["history"], args["memo"], args["memo_short"], NAMES, "accuracy", "1111")
    assert [(r.screen, r.whole, r.role) for r in rows] == [
        (None, pytest.approx(0.8), "selected"), (pytest.approx(0.5), None, "screened out"),
        (pytest.approx(0.65), None, "screened out"), (pytest.approx(0.6), pytest.approx(0.7), "finalist")]


def test_the_pareto_front_of_a_log_loss_keeps_the_lowest_loss_per_size():
    points = [(0.1, 0.9), (0.2, 0.5), (0.3, 0.7), (0.5, 0.4), (0.6, 0.45)]
    assert figures.pareto_front(points, lower_is_better=True) == [(0.1, 0.9), (0.2, 0.5), (0.5, 0.4)]
    assert figures.pareto_front(points) == [(0.1, 0.9)]


def test_a_fitness_and_its_quantity_convert_in_both_signs():
    assert quantity_of("nll", 1.25) == pytest.approx(0.25) and quantity_of("accuracy", 0.25) == 0.75
    assert fitness_formula("macro_f1") == "fitness = 1 - val macro-F1"
