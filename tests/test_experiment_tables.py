"""Result tables (docs/results.md) from committed experiment results: the judged variant, the goal check and
the block replacement."""

from __future__ import annotations

import json

from conftest import REPO

from deft_jax.experiment.tables import goal, main


def summary(variant_mean=0.80, full_mean=0.75, random_mean=0.78, ci=(-0.05, 0.15), x_epochs=8.0,
            lp_ft_mean=0.805):
    def row(method, mean):
        d = {"mean": mean, "std": 0.01, "n": 5}
        return {"method": method, "seeds": 5, "test_accuracy": d, "test_macro_f1": d, "test_auc": d,
                "trainable_fraction": d, "wall_seconds": d, "fitness_evaluations": {"mean": 0, "std": 0, "n": 5}}

    comparison = {"n": 5, "mean_difference": variant_mean - full_mean, "ci95": list(ci), "p": 0.3,
                  "p_holm": 0.6, "p_wilcoxon": 0.25, "verdict": "better" if ci[0] > 0 else "not resolved"}
    return {"model": "resnet20", "data": "toy", "seeds": [0, 1, 2, 3, 4],
            "table": [row("full", full_mean), row("lp-ft", lp_ft_mean), row("deft", 0.9),
                      row("deft-lr-mf", variant_mean), row("random-search", random_mean)],
            "paired": {"deft-lr-mf": [{"method": "full", **comparison},
                                      {"method": "random-search", **comparison}]},
            "cost": {"full": {"wall_seconds": 10, "x_full": 1.0, "x_full_epochs": 1.0},
                     "deft-lr-mf": {"wall_seconds": 10 * x_epochs, "x_full": x_epochs, "x_full_epochs": x_epochs}},
            "search_honesty": []}


def test_the_goal_is_judged_on_the_fixed_variant_not_the_best_by_test_accuracy():
    g = goal(summary())
    assert g["variant"] == "deft-lr-mf"  # although deft has the higher test mean here
    assert g["best_simple"] == "lp-ft" and g["within_best_simple"] and g["at_least_random_search"]
    assert not g["resolved_better_than_full"] and not g["within_epoch_budget"]
    declared = summary()
    declared["judged"] = "deft"  # experiment.judged, recorded in summary.json, wins over the default
    assert goal(declared)["variant"] == "deft"
    assert goal(declared, judged="deft-lr-mf")["variant"] == "deft-lr-mf"  # a method declared later wins
    assert goal(declared, judged="deft-keep")["variant"] == "deft"  # did not run here: the paper's deft, as always


def test_the_goal_needs_the_best_simple_recipe_minus_a_point_the_full_verdict_and_3x_the_epochs():
    assert not goal(summary(lp_ft_mean=0.811))["within_best_simple"]  # 0.800 < 0.811 - 0.01
    assert goal(summary(lp_ft_mean=0.81))["within_best_simple"]
    assert not goal(summary(random_mean=0.801))["at_least_random_search"]
    assert goal(summary(ci=(0.01, 0.2)))["resolved_better_than_full"]
    assert goal(summary(x_epochs=3.0))["within_epoch_budget"]


def test_the_block_between_the_markers_is_replaced(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(summary()))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- payoff:begin -->\nold\n<!-- payoff:end -->\noutro\n")
    assert main([str(folder), "--into", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("intro\n<!-- payoff:begin -->") and text.endswith("<!-- payoff:end -->\noutro\n")
    assert "old" not in text and "| deft-lr-mf | 0.800 ± 0.010 |" in text
    assert "at least random search in mean: yes" in text and "not met" in text
    assert "the goal is judged on it: declared before the runs" in text
    readme.write_text("no markers\n")
    assert main([str(folder), "--into", str(readme)]) == 2


def test_an_experiment_without_the_judged_variant_is_judged_on_deft_and_says_so(tmp_path):
    s = summary()
    s["table"] = [r for r in s["table"] if r["method"] != "deft-lr-mf"]
    s["paired"] = {"deft": s["paired"]["deft-lr-mf"]}
    s["cost"]["deft"] = s["cost"].pop("deft-lr-mf")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(s))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- payoff:begin -->\n<!-- payoff:end -->\n")
    assert main([str(folder), "--into", str(readme)]) == 0
    text = readme.read_text()
    assert "**deft** (the goal is judged on it: deft-lr-mf did not run here)" in text
    assert "every search option on" not in text


def test_the_committed_result_tables_are_what_the_committed_results_give(tmp_path):
    """docs/results.md's generated blocks equal a fresh run of the tables tool over the
    committed results (nobody edited a number by hand, and the tool still reads them)."""
    page = REPO / "docs" / "results.md"
    (tmp_path / "docs").mkdir()
    (tmp_path / "results").symlink_to(REPO / "results")  # the same layout: links stay ../results/...
    copy = tmp_path / "docs" / "results.md"
    copy.write_text(page.read_text())
    results = tmp_path / "results"
    payoff = [results / "payoff" / name for name in
              ("osteosarcoma_resnet20", "breastmnist_resnet20", "signdigits_resnet20", "osteosarcoma_lite0")]
    assert main([*map(str, payoff), "--into", str(copy)]) == 0
    assert main(["--block", "lrgrid", str(results / "payoff" / "osteosarcoma_resnet20_lrgrid"),
                 "--into", str(copy)]) == 0
    assert main(["--block", "bloodcells", str(results / "study" / "bloodcells28_resnet20_tpc10"),
                 "--into", str(copy)]) == 0
    assert main(["--block", "bloodcells50", str(results / "study" / "bloodcells28_resnet20_tpc50"),
                 "--into", str(copy)]) == 0
    assert main(["--block", "lite0", str(results / "study" / "bloodcells64_lite0_tpc25"),
                 "--into", str(copy)]) == 0
    ablation = [str(results / "ablation" / name) for name in
                ("bloodcells28_resnet20_tpc10", "bloodcells28_resnet20_tpc50")]
    assert main(["--block", "ablation", *ablation, "--into", str(copy)]) == 0
    assert main(["--block", "keep", str(results / "study" / "bloodcells28_resnet20_tpc10_keep"),
                 "--into", str(copy)]) == 0
    assert main(["--across", "full,lp-ft", "--block", "nll", str(results / "study" / "schedule" / "constant"),
                 str(results / "study" / "bloodcells28_resnet20_tpc10_nll"), "--into", str(copy)]) == 0
    schedules = [str(results / "study" / "schedule" / s) for s in ("constant", "cosine", "onecycle", "cosine-warm")]
    assert main(["--across", "full,lp-ft", "--block", "schedule", *schedules, "--into", str(copy)]) == 0
    studies = [results / "study" / name for name in
               ("bloodcells28_resnet20_tpc10", "bloodcells28_resnet20_tpc50", "bloodcells64_lite0_tpc25")]
    studies += [results / "payoff" / name for name in
                ("osteosarcoma_resnet20", "breastmnist_resnet20", "signdigits_resnet20")]
    assert main(["--goals", "--block", "goals", *map(str, studies), "--into", str(copy)]) == 0
    trainval = [results / "trainval" / study.name for study in studies]
    assert main(["--goals", "--block", "trainval-goals", *map(str, trainval), "--into", str(copy)]) == 0
    first = [str(folder) for folder in trainval if folder.name != "bloodcells64_lite0_tpc25"]
    assert main(["--goals", "--judged", "deft-trainval", "--block", "trainval-first-goals", *first,
                 "--into", str(copy)]) == 0
    assert main(["--block", "trainval", *map(str, trainval), "--into", str(copy)]) == 0
    ten = str(results / "osteosarcoma_10seeds")
    assert main(["--goals", "--block", "osteosarcoma10-goals", ten, "--into", str(copy)]) == 0
    assert main(["--block", "osteosarcoma10", ten, "--into", str(copy)]) == 0
    six = [*map(str, trainval[:3]), ten, *map(str, trainval[4:])]
    for method, block in (("deft-trio", "trio-goals"), ("deft-trio-full", "trio-full-goals"),
                          ("full-trainval-ensemble", "ftve-goals"),
                          ("full-valfolds-ensemble", "valfolds-goals")):
        assert main(["--same-budget", method, "--block", block, *six, "--into", str(copy)]) == 0
    earlier = [str(results / name) for name in ("osteosarcoma_resnet20", "osteosarcoma_lite0")]
    assert main(["--block", "earlier", *earlier, "--into", str(copy)]) == 0
    assert copy.read_text() == page.read_text()


def test_the_across_table_compares_each_recipe_with_the_first_by_the_fixed_split_test_on_their_records():
    import numpy as np

    from deft_jax.experiment.across import difference
    from deft_jax.experiment.records import read_runs
    from deft_jax.experiment.stats import paired_t

    folder = REPO / "results" / "study" / "schedule"
    runs = {s: {r["seed"]: r for r in read_runs(folder / s / "runs.jsonl") if r["method"] == "full"}
            for s in ("constant", "cosine")}
    d = difference(runs["cosine"], runs["constant"], fixed=True)
    by_hand = [runs["cosine"][k]["test"]["accuracy"] - runs["constant"][k]["test"]["accuracy"] for k in sorted(runs["cosine"])]
    assert d["mean_difference"] == np.mean(by_hand) and d["ci95"] == paired_t(by_hand)["ci"]
    assert d["ci95_bootstrap"] is not None and d["verdict"] == "worse"


def test_the_goals_table_has_one_row_per_study_saying_which_parts_of_the_goal_are_unmet(tmp_path):
    from deft_jax.experiment.goals import render_goals

    folders = []
    for name, s in (("meets", summary(x_epochs=2.9)), ("misses", summary(random_mean=0.81, x_epochs=8.0))):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps(s))
        folders.append(folder)
    rows = [line for line in render_goals(folders, tmp_path) if line.startswith("| [")]
    assert len(rows) == 2
    assert rows[0].startswith("| [meets](meets/summary.md) | 5 | deft-lr-mf | 0.800 | lp-ft 0.805 | 0.780 |")
    assert rows[0].endswith("| 2.9 | met |")
    assert rows[1].endswith("| 8.0 | not met: random search, <= 3x epochs |")
