"""report.md: what was searched (or that nothing was), what won, how well it does on the test split."""

from __future__ import annotations

from deft_jax.core.masks import GroupMask, lr_multiplier, mask_key, trains
from deft_jax.core.metrics import fitness_formula, quantity_name, quantity_of
from deft_jax.run.escape import markdown
from deft_jax.run.search_view import (Candidate, candidates, describe_mask, direction, search_kind, search_line,
                                      whole_budget_epochs)


def render_report(*, cfg: dict, description: str, model: str, pretrained: str | None,
                  group_sizes: dict[str, int], best_mask: GroupMask, best_fitness: float | None,
                  history: list[dict], metrics: dict, class_names: list[str],
                  split_sizes: dict[str, int], seconds: dict[str, float],
                  warning: str | None = None, memo: dict[str, float] | None = None,
                  memo_short: dict[str, int] | None = None) -> str:
    """`best_fitness` None: no search ran (`search_view`); `memo`: every evaluated mask's
    fitness (a screen's candidates), `memo_short`: those scored with the short budget only."""
    s, f = cfg["search"], cfg.get("finetune", {})
    metric = s["metric"]
    kind = search_kind(cfg, best_fitness)
    rows = candidates(history, memo or {}, memo_short or {}, list(best_mask), metric, mask_key(best_mask)) \
        if kind == "screen" else []
    total = sum(group_sizes.values())
    class_names = [markdown(c) for c in class_names]  # the user's data: never raw in the report
    lines = [
        "# DEFT run report", "",
        f"- Data: {markdown(description)}; split sizes (train/val/test): "
        f"{split_sizes['train']}/{split_sizes['val']}/{split_sizes['test']} (grouped, stratified, "
        f"split seed {cfg['data']['split_seed']})",
        f"- Model: {model}, pretrained weights: {markdown(pretrained) if pretrained else 'none (random init)'}, "
        f"input {cfg['model']['input_size']} px",
        f"- Search: {search_line(cfg, kind, len(rows), sum(r.whole is not None for r in rows))}",
        f"- Fine-tune: {f.get('optimizer')} lr {f.get('learning_rate')}, batch {f.get('batch_size')}; "
        + (f"per candidate {f.get('epochs')} epoch(s); " if kind != "none" else "")
        + f"final model: {cfg['final']['epochs']} epochs",
        *(["", f"**Warning: the search's fitness carried no signal** ({markdown(warning)}): the chosen "
           "mask is arbitrary; check the learning rate, the epochs and the data."] if warning else []),
        "", "## Chosen layer groups", "",
        ("No search: every group fine-tuned; " if kind == "none" else
         f"Selected mask: {fitness_formula(metric)} = {best_fitness:.4f} "
         f"(val {quantity_name(metric)} {quantity_of(metric, best_fitness):.4f}); ")
        + f"trainable parameters {metrics['trainable_fraction']:.1%} of {total:,}.", "",
        "| group | parameters | fine-tuned |", "|---|---:|:---:|",
    ]
    lines += [f"| {g} | {group_sizes.get(g, 0):,} | {_trains(on)} |" for g, on in best_mask.items()]
    lines += _search_section(kind, cfg, history, rows)
    t, v = metrics["test"], metrics["val"]
    source = final_model_source(metrics)
    lines += ["", "## Final model", "", *([markdown(source), ""] if source else []),
              "| split | n | accuracy | macro-F1 |", "|---|---:|---:|---:|",
              (f"| val{' (out-of-fold)' if v.get('out_of_fold') else ''} | {v['n']} | {v['accuracy']:.4f} | {v['macro_f1']:.4f} |"
               if v.get("n") else "| val | 0 | none held out: trained on train+val | |"),
              f"| test | {t['n']} | {t['accuracy']:.4f} | {t['macro_f1']:.4f} |", "",
              "Per-class test recall: " + ", ".join(
                  f"{markdown(c)} {r:.3f}" if r is not None else f"{markdown(c)} n/a"
                  for c, r in t["per_class_recall"].items()), "",
              "Test confusion matrix (rows: true, columns: predicted):", "",
              "| | " + " | ".join(class_names) + " |", "|---" * (len(class_names) + 1) + "|"]
    lines += [f"| {c} | " + " | ".join(str(x) for x in row) + " |"
              for c, row in zip(class_names, t["confusion_matrix"])]
    lines += ["", "## Time", ""] + [f"- {k}: {v:.1f} s" for k, v in seconds.items()]
    lines += ["", f"The test split was used once, for the final model only; {what_was_seen(metrics, kind)}.", ""]
    return "\n".join(lines)


def what_was_seen(metrics: dict, kind: str) -> str:
    """What the search and the final model saw besides test (plain text)."""
    if metrics.get("folds"):
        return f"the search saw train+val in {metrics['folds']['k']} folds, and the final model trained on all of it"
    trained_on_val = bool(metrics.get("final_trained_on"))
    if kind == "none":
        return "no search ran, and the final model trained on " + ("train+val" if trained_on_val else "train")
    return "the search saw val" + (", and the final model trained on train+val" if trained_on_val else " only")


def _search_section(kind: str, cfg: dict, history: list[dict], rows: list[Candidate]) -> list[str]:
    metric = cfg["search"]["metric"]
    q = f"val {quantity_name(metric)}"
    if kind == "none":
        return []
    if kind == "screen":
        short = cfg.get("finetune", {}).get("epochs")
        out = ["", "## Candidates", "",
               f"Each candidate's {q} ({direction(metric)}) after the screen's short run ({short} epoch(s)) and, "
               f"for the finalists, after the whole budget ({whole_budget_epochs(cfg)} epochs); "
               "the selected mask is the one shipped (with the final model's other members, below).", "",
               f"| candidate (fine-tuned groups) | {q}, screen | {q}, whole budget | role |", "|---|---:|---:|---|"]
        return out + [f"| {markdown(r.groups)} | {_number(r.screen)} | {_number(r.whole)} | {r.role} |" for r in rows]
    out = ["", "## Search progress", "", f"Fitness per generation ({fitness_formula(metric)}; lower is better).", "",
           "| generation | best fitness | mean fitness | masks trained | memo hits | seconds |",
           "|---:|---:|---:|---:|---:|---:|"]
    return out + [f"| {h['generation']} | {h['best_fitness']:.4f} | {h['mean_fitness']:.4f} | "
                  f"{h['masks_evaluated']} | {h['memo_hits']} | {h['seconds']:.1f} |" for h in history]


def _number(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _trains(value) -> str:
    """'yes', 'no', or 'yes (x0.1 lr)' for a learning-rate multiplier (`search.space = mask+lr`)."""
    if not trains(value):
        return "no"
    m = lr_multiplier(value)
    return "yes" if m == 1.0 else f"yes (x{m:.3g} lr)"


def final_model_source(metrics: dict) -> str | None:
    """Where the final model came from when it was not trained again (plain text): the
    selected mask's model from the search, or an ensemble of k and its members' masks."""
    record = metrics.get("final_model") or {}
    masks = record.get("masks") or []
    if record.get("source") == "trained" and len(masks) > 1 and no_search_ran(metrics):
        where = "train+val" if metrics.get("final_trained_on") else "train"
        return (f"The final model is an ensemble of {len(masks)} full fine-tunes (every group trained), each on "
                f"{where} with its own training seed, averaged (the mean of their softmax "
                "probabilities); no search chose them.")
    if record.get("source") == "trained" and len(masks) > 1:
        described = "; ".join(f"{i + 1}. {describe_mask(m)}" for i, m in enumerate(masks))
        return (f"The final model is an ensemble of {len(masks)} models trained after the search (the mean "
                f"of their softmax probabilities), the selected mask's first. Fine-tuned groups: {described}.")
    if record.get("source") != "search":
        return None
    if len(masks) <= 1:
        return "The final model is the selected mask's model from the search (final.reuse: no retraining)."
    described = "; ".join(f"{i + 1}. {describe_mask(m)}" for i, m in enumerate(masks))
    return (f"The final model is an ensemble of {len(masks)} models from the search (the mean of their "
            f"softmax probabilities, no retraining), the selected mask's first. Fine-tuned groups: {described}.")


def no_search_ran(metrics: dict) -> bool:
    """Whether the run's metrics record a run without a search (no fitness)."""
    return "search" in metrics and metrics["search"]["best_fitness"] is None
