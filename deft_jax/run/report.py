"""report.md: what was searched, what won, how well it does on the test split."""

from __future__ import annotations

from deft_jax.core.masks import GroupMask, lr_multiplier, trains
from deft_jax.run.escape import markdown


def render_report(*, cfg: dict, description: str, model: str, pretrained: str | None,
                  group_sizes: dict[str, int], best_mask: GroupMask, best_fitness: float,
                  history: list[dict], metrics: dict, class_names: list[str],
                  split_sizes: dict[str, int], seconds: dict[str, float],
                  warning: str | None = None) -> str:
    s = cfg["search"]
    total = sum(group_sizes.values())
    class_names = [markdown(c) for c in class_names]  # the user's data: never raw in the report
    lines = [
        "# DEFT run report", "",
        f"- Data: {markdown(description)}; split sizes (train/val/test): "
        f"{split_sizes['train']}/{split_sizes['val']}/{split_sizes['test']} (grouped, stratified, "
        f"split seed {cfg['data']['split_seed']})",
        f"- Model: {model}, pretrained weights: {markdown(pretrained) if pretrained else 'none (random init)'}, "
        f"input {cfg['model']['input_size']} px",
        f"- Search: differential evolution, population {s['population_size']}, "
        f"{s['generations']} generations after the initial one, F={s['differential_weight']}, "
        f"CR={s['crossover_rate']}, elitism={s['elitism']}, fitness = 1 - val {s['metric']}",
        f"- Short fine-tune per candidate: {cfg['finetune']['optimizer']} lr {cfg['finetune']['learning_rate']}, "
        f"{cfg['finetune']['epochs']} epoch(s), batch {cfg['finetune']['batch_size']}; "
        f"final fine-tune: {cfg['final']['epochs']} epochs",
        *(["", f"**Warning: the search's fitness carried no signal** ({markdown(warning)}): the chosen "
           "mask is arbitrary; check the learning rate, the epochs and the data."] if warning else []),
        "", "## Chosen layer groups", "",
        f"Best search fitness {best_fitness:.4f} (val {s['metric']} {1 - best_fitness:.4f}); "
        f"trainable parameters {metrics['trainable_fraction']:.1%} of {total:,}.", "",
        "| group | parameters | fine-tuned |", "|---|---:|:---:|",
    ]
    lines += [f"| {g} | {group_sizes.get(g, 0):,} | {_trains(on)} |" for g, on in best_mask.items()]
    lines += ["", "## Search progress", "",
              "| generation | best fitness | mean fitness | masks trained | memo hits | seconds |",
              "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {h['generation']} | {h['best_fitness']:.4f} | {h['mean_fitness']:.4f} | "
              f"{h['masks_evaluated']} | {h['memo_hits']} | {h['seconds']:.1f} |" for h in history]
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
    seen = (f"train+val in {metrics['folds']['k']} folds, and the final model trained on all of it"
            if metrics.get("folds") else "val, and the final model trained on train+val"
            if metrics.get("final_trained_on") else "val only")
    lines += ["", f"The test split was used once, for the final model only; the search saw {seen}.", ""]
    return "\n".join(lines)


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


def describe_mask(mask: GroupMask) -> str:
    """The groups a mask trains, with any learning-rate multiplier: 'conv3 (x0.1 lr), head'."""
    return ", ".join(g if _trains(v) == "yes" else f"{g} {_trains(v)[4:]}" for g, v in mask.items() if trains(v))
