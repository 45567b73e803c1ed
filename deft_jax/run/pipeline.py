"""One DEFT run end to end: data -> model -> search -> final model -> checkpoint -> report."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from deft_jax.config.schema import Config
from deft_jax.core import divergence, epoch_count
from deft_jax.core.final import final_metrics
from deft_jax.core.metrics import classification_report
from deft_jax.core.masks import searchable_groups
from deft_jax.data import load_dataset, sampling_of
from deft_jax.data.folds import scored_items
from deft_jax.data.inputs import describe_origin, prepare_data
from deft_jax.data.splits import save_splits
from deft_jax.evolution.evaluators.choice import make_evaluator
from deft_jax.evolution.evaluators.kept_models import keeps_final_models
from deft_jax.evolution.final_inputs import final_inputs
from deft_jax.evolution.loop import run_search
from deft_jax.evolution.progress import SearchProgress
from deft_jax.evolution.start import probe_extra, start_variables
from deft_jax.models import build_model
from deft_jax.run.checkpoint import save_checkpoint
from deft_jax.run.final_model import checkpoint_members, final_model, final_model_record
from deft_jax.run.report import render_report
from deft_jax.run.report_html import render_html
from deft_jax.runtime import distributed, rundir

logger = logging.getLogger(__name__)


def resolve_run_dir(out: str | None, cfg: Config) -> Path:
    if out:
        return Path(out)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{cfg.model.name}-seed{cfg.seed}"


def inference_meta(cfg: Config, spec, class_names, mask, pretrained) -> dict:
    return {"model": cfg.model.name, "num_classes": len(class_names), "class_names": class_names,
            "input_size": spec.input_size, "mean": list(spec.mean), "std": list(spec.std),
            "granularity": cfg.model.granularity, "mask": mask, "pretrained": pretrained,
            # how one input image becomes samples (crops, resize), as at training time
            "sampling": sampling_of(cfg.data.source, spec.input_size)}


def run_pipeline(cfg: Config, run_dir: Path, resume: bool = False) -> dict:
    """Runs (or resumes) a whole DEFT search; returns metrics. Everything that can fail on
    user input fails before the run directory is created.

    Multi-process runs: every process runs all of this (same search, same final model);
    only process 0 creates and writes the run directory (the commands log on process 0 only)."""
    t_start = time.perf_counter()
    writer = distributed.is_writer()
    dataset = load_dataset(cfg.data.source, input_size=cfg.model.input_size)
    spec = build_model(cfg.model.name, len(dataset.class_names), cfg.model.weights,
                       cfg.model.input_size, cfg.model.granularity)
    data = prepare_data(cfg, spec, dataset, run_dir / rundir.SPLITS if resume else None)
    variables = spec.init(cfg.seed)
    groups = spec.layer_groups  # derived once, with the coverage check
    sizes = groups.sizes
    t_ready, epochs_before = time.perf_counter(), epoch_count.TOTAL.epochs

    if writer and not resume:
        rundir.create_fresh(run_dir)
        with rundir.first_files(run_dir):
            save_splits(run_dir / rundir.SPLITS, data.splits, dataset.groups,
                        seed=cfg.data.split_seed, fractions=list(cfg.data.fractions),
                        origin=data.split_origin)
            rundir.write_json(run_dir / rundir.CONFIG, cfg.to_dict())  # last: it marks a resumable run

    variables, probe = start_variables(cfg, spec, variables, data.arrays)  # search.start
    evaluator, mode, reason = make_evaluator(cfg, spec, variables, data.arrays)
    reusing = keeps_final_models(cfg, evaluator)  # final.reuse / final.ensemble
    n = {k: len(v) for k, v in data.splits.items()}
    logger.info(f"data: {dataset.description}; train/val/test {n['train']}/{n['val']}/{n['test']}; "
        f"{describe_origin(data.split_origin)}")
    logger.info(f"model: {spec.name} ({spec.pretrained or 'random init'}), {len(searchable_groups(spec.group_names))} "
        f"searchable layer groups + head, {sum(sizes.values()):,} parameters")
    logger.info(f"evaluation: {mode} ({reason}); run directory: {run_dir}")

    # other processes read a resumed run's state (shared file system) but never write it
    progress = SearchProgress(cfg.search.generations + 1, cfg.search.population_size) if writer else None
    result = run_search(cfg, evaluator, groups,
                        state_path=run_dir / rundir.STATE if writer or resume else None,
                        save_state=writer, n_val=scored_items(cfg.search.folds, data.arrays), progress=progress,
                        num_classes=len(dataset.class_names))
    if writer:
        rundir.write_jsonl(run_dir / rundir.HISTORY, result.history)
        rundir.write_json(run_dir / rundir.BEST, {"fitness": result.best_fitness, "mask": result.best_mask,
                                                  "selection": result.selection})
    t_search = time.perf_counter()
    chosen = [g for g, on in result.best_mask.items() if on]
    if result.best_fitness is not None:
        logger.info(f"best mask (fitness {result.best_fitness:.4f}): fine-tune {', '.join(chosen)}")

    whole_budget = {k: v for k, v in result.memo.items() if k not in result.memo_epochs}
    inputs = final_inputs(cfg, data, evaluator, result.best_mask, whole_budget)  # folds, final.data: train+val
    final, members = final_model(inputs.cfg, spec, variables, result.best_mask, inputs.data,
                                 evaluator.models if reusing else None, retrain=inputs.masks)
    divergence.check_final_model(cfg, final, run_dir)  # before any write
    trained, metrics = final.variables, final_metrics(inputs.cfg, final, inputs.data)
    held_out = inputs.validation(classification_report)  # None: the final model's own val stands
    if held_out is not None:  # it trained on val: out-of-fold scores (folds) or none
        metrics.update(val=held_out, final_trained_on=inputs.trained_on)
    if inputs.folds is not None:
        metrics["folds"] = inputs.folds
    metrics["final_model"] = final_model_record(members, retrained=len(inputs.masks) > 1)
    meta = inference_meta(cfg, spec, data.class_names, result.best_mask, spec.pretrained)
    ckpt = run_dir / rundir.CHECKPOINT
    if writer:
        rundir.clear_results(run_dir, cfg.to_dict())  # the old results go only now
        save_checkpoint(ckpt, trained, meta, members=checkpoint_members(members))
    t_end = time.perf_counter()
    seconds = {"setup (data, model)": t_ready - t_start, "search": t_search - t_ready,
               "final training + checkpoint": t_end - t_search, "total": t_end - t_start}
    metrics["fine_tune_epochs"] = epoch_count.TOTAL.epochs - epochs_before  # by this process
    metrics.update({"search": {"best_fitness": result.best_fitness, "selection": result.selection,
                               "distinct_masks_evaluated": len(result.memo),
                               "evaluation": mode, "no_signal": result.warning,
                               "restored_from_journal": result.restored_members, **probe_extra(probe),
                               **evaluator.stats()},
                    "seconds": {k: round(v, 2) for k, v in seconds.items()}})
    if not writer:
        return metrics
    rundir.write_json(run_dir / rundir.METRICS, metrics)
    shown = dict(cfg=cfg.to_dict(), description=dataset.description, model=spec.name,
                 pretrained=spec.pretrained, group_sizes=sizes, best_mask=result.best_mask,
                 best_fitness=result.best_fitness, history=result.history, memo=result.memo,
                 memo_short=result.memo_epochs, metrics=metrics, class_names=data.class_names,
                 split_sizes=n, seconds=seconds)
    rundir.write_text_atomic(run_dir / rundir.REPORT, render_report(**shown, warning=result.warning))
    page = render_html(**shown, test_images=data.x_test, test_labels=data.y_test,
                       test_logits=final.test_logits, test_ids=dataset.groups[data.splits["test"]])
    rundir.write_text_atomic(run_dir / rundir.REPORT_HTML, page)
    t = metrics["test"]
    logger.info(f"test accuracy {t['accuracy']:.4f}, macro-F1 {t['macro_f1']:.4f} (n={t['n']}); "
        f"total {seconds['total']:.0f} s; report: {run_dir / rundir.REPORT} and {rundir.REPORT_HTML}")
    return metrics
