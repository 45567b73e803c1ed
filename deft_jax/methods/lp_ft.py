"""`lp-ft` (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution", ICLR): first a linear probe (backbone frozen, head trained), then full
fine-tuning of every group starting from the probed head instead of a random one.

The epoch budget is the other methods': `experiment.lp_ft_probe_epochs` probe epochs (0 =
half of final.epochs, at least 1), then final.epochs minus those (at least 1) of full
fine-tuning with the final recipe (its learning-rate grid, `final.keep`). The probe trains
at the final learning rate and keeps the model `final.keep` says."""

from __future__ import annotations

from deft_jax.core import final as final_training
from deft_jax.methods.common import MethodContext, MethodResult, all_groups, fit_with_learning_rates


def epochs(cfg) -> tuple[int, int]:
    """(probe epochs, fine-tune epochs)."""
    probe = cfg.experiment.lp_ft_probe_epochs or max(1, cfg.final.epochs // 2)
    return probe, max(1, cfg.final.epochs - probe)


def run(ctx: MethodContext) -> MethodResult:
    cfg, spec = ctx.cfg, ctx.spec
    probe_epochs, ft_epochs = epochs(cfg)
    probe_tuner = ctx.programs.tuner(spec, cfg.finetune, cfg.final.learning_rate, probe_epochs)
    probed = final_training.train_final(cfg, spec, ctx.variables, ctx.mask_of([]), ctx.data, tuner=probe_tuner)

    def tuner_for(learning_rate):
        return ctx.programs.tuner(spec, cfg.finetune, learning_rate, ft_epochs)

    result, _ = fit_with_learning_rates(ctx, all_groups(spec), tuner_for, variables=probed.variables)
    result.extra.update({"probe_epochs": probe_epochs, "fine_tune_epochs": ft_epochs,
                         "probe_val_accuracy": float((probed.val_logits.argmax(-1) == ctx.data.arrays.y_val).mean())})
    return result
