"""Search options past the paper: learning-rate genes, fitness with the final recipe,
best-validation-epoch models, successive halving, baseline seeding, the one-SE rule,
per-class training subsets and auto-rgn's head."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from deft_jax.evolution.evaluators.choice import build_evaluator, make_evaluator
from deft_jax.evolution.loop import baseline_genomes, run_search
from deft_jax.evolution.selection import select_mask
from deft_jax.core.final import train_final
from deft_jax.core.finetune import FineTuner
from deft_jax.evolution.evaluators.recipe import FitnessRecipe
from deft_jax.evolution.evaluators.sequential import SequentialEvaluator
from deft_jax.evolution.fitness import Halving, MemoTable, evaluate_population
from deft_jax.models.groups import LayerGroups
from deft_jax.data.inputs import prepare_data
from deft_jax.data import load_dataset
from deft_jax.core.masks import LR_LEVELS, decode_genome, mask_from_key, mask_from_names, mask_key
from deft_jax.methods.auto_rgn import head_tree, rgn_multipliers
from deft_jax.models import build_model
from deft_jax.models.small_cnn import small_cnn
from deft_jax.data.splits import subsample_per_class

from helpers import small_cnn_problem, tiny_config

GROUPS = ("g0", "g1", "g2", "g3", "head")
PARAMS = {g: {"w": np.zeros(10 * (i + 1))} for i, g in enumerate(GROUPS)}
LAYER_GROUPS = LayerGroups({"params": PARAMS}, tuple((rf"^{g}/", g) for g in GROUPS), GROUPS)


def problem(**cfg):
    return small_cnn_problem(**{"epochs": 3, **cfg})


# --- learning-rate genes ------------------------------------------------------------------


def test_a_learning_rate_gene_freezes_below_the_threshold_and_sets_a_log_scale_multiplier_above():
    names = ("a", "b", "c", "d", "head")
    mask = decode_genome([0.2, 0.5001, 0.75, 1.0], names, threshold=0.5, space="mask+lr")
    assert mask["a"] is False and mask["head"] is True
    assert mask["b"] == LR_LEVELS[0] == pytest.approx(0.01)
    assert mask["c"] == LR_LEVELS[4] == pytest.approx(0.1)  # halfway up the gene: 10^-1
    assert mask["d"] is True  # the base rate: the same mask as the paper's space
    assert mask_key(mask) == "0ae11"
    assert mask_from_key(mask_key(mask), names) == mask
    plain = decode_genome([0.2, 0.6, 0.75, 1.0], names, threshold=0.5)
    assert mask_key(plain) == "01111"


def test_a_groups_multiplier_scales_its_first_update_exactly_and_leaves_other_groups_alone():
    spec, variables, data, cfg = problem(epochs=1, momentum=0.0, batch_size=64)
    base = mask_from_names(["conv3", "conv4"], spec.group_names)
    scaled = {**base, "conv3": 0.1}
    tuner = FineTuner(spec, cfg)
    one, _ = tuner.fine_tune(variables, base, data.x_train, data.y_train, seed=0)
    tenth, _ = tuner.fine_tune(variables, scaled, data.x_train, data.y_train, seed=0)
    p0, p1, p2 = variables["params"], one["params"], tenth["params"]
    for leaf0, leaf1, leaf2 in zip(jax.tree.leaves(p0["conv3"]), jax.tree.leaves(p1["conv3"]),
                                   jax.tree.leaves(p2["conv3"])):
        np.testing.assert_allclose(np.asarray(leaf2) - leaf0, 0.1 * (np.asarray(leaf1) - leaf0),
                                   rtol=1e-4, atol=1e-7)
    for a, b in zip(jax.tree.leaves(p1["conv4"]), jax.tree.leaves(p2["conv4"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # one step: same gradient there
    for a, b in zip(jax.tree.leaves(p0["conv1"]), jax.tree.leaves(p2["conv1"])):
        np.testing.assert_array_equal(a, b)  # frozen: bit-identical


@pytest.mark.parametrize("mode", ["vmap", "vmap-1"])
def test_gated_members_with_learning_rate_genes_train_what_the_static_mask_trains(mode):
    spec, variables, data, cfg = problem()
    names = spec.group_names
    masks = [decode_genome(g, names, 0.5, "mask+lr")
             for g in ([0.9, 0.1, 0.7, 1.0], [0.1, 0.6, 0.1, 0.8], [0.1, 0.1, 0.1, 0.1])]
    assert any(isinstance(v, float) for m in masks for v in m.values())
    reference = SequentialEvaluator(spec, variables, data, FitnessRecipe(cfg)).evaluate_logits(masks)
    gated = build_evaluator(mode, spec, variables, data, FitnessRecipe(cfg, lr_multipliers=True))
    np.testing.assert_allclose(gated.evaluate_logits(masks), reference, atol=1e-4)


# --- best-validation epoch, fitness with the final recipe ------------------------------------


def test_best_val_fitness_is_the_best_epoch_of_the_same_fine_tune():
    spec, variables, data, cfg = problem(epochs=4)
    mask = mask_from_names(["conv2", "conv4"], spec.group_names)
    last = SequentialEvaluator(spec, variables, data, FitnessRecipe(cfg))  # one compiled program for every length
    per_epoch = [last.evaluate([mask], epochs=e)[0] for e in range(1, 5)]
    assert len(set(per_epoch)) > 1  # the curve moves, so the test can tell epochs apart
    for mode in ("sequential", "vmap-1"):
        best = build_evaluator(mode, spec, variables, data, FitnessRecipe(cfg, keep="best-val")).evaluate([mask])[0]
        assert best == pytest.approx(min(per_epoch), abs=1e-6)
        short = build_evaluator(mode, spec, variables, data, FitnessRecipe(cfg, keep="best-val")).evaluate([mask], epochs=2)[0]
        assert short == pytest.approx(min(per_epoch[:2]), abs=1e-6)


def test_with_the_final_schedule_a_masks_fitness_is_its_final_models_validation_score():
    cfg = tiny_config(**{"search.schedule": '"final"', "final.keep": '"best-val"', "final.epochs": "3",
                         "final.learning_rate": "0.02", "search.evaluation": '"sequential"'})
    dataset = load_dataset(cfg.data.source, input_size=cfg.model.input_size)
    spec = build_model(cfg.model.name, len(dataset.class_names), "none", cfg.model.input_size)
    variables = spec.init(cfg.seed)
    data = prepare_data(cfg, spec, dataset)
    evaluator, _, _ = make_evaluator(cfg, spec, variables, data.arrays)
    for names in (["conv4"], ["conv1", "conv2", "conv3", "conv4"], []):
        mask = mask_from_names(names, spec.group_names)
        final = train_final(cfg, spec, variables, mask, data)
        accuracy = float(np.mean(np.argmax(final.val_logits, -1) == data.arrays.y_val))
        assert evaluator.evaluate([mask])[0] == pytest.approx(1.0 - accuracy, abs=1e-9)
        assert 0 <= final.epoch_kept < 3


# --- successive halving, seeding, selection --------------------------------------------------


class EpochEvaluator:
    """Fake fitness that improves with epochs (as best-val fitness does): base - 0.01 * epochs."""

    def __init__(self, base: dict[str, float], whole: int = 5):
        self.base, self.whole, self.calls = base, whole, []

    def evaluate(self, masks, epochs=None):
        e = self.whole if epochs is None else epochs
        self.calls.append((e, [mask_key(m) for m in masks]))
        return [self.base[mask_key(m)] - 0.01 * e for m in masks]

    def stats(self):
        return {}


def masks_of(*keys):
    return [mask_from_key(k, GROUPS) for k in keys]


def test_halving_trains_only_the_most_promising_share_with_the_whole_budget():
    base = {"10001": 0.5, "01001": 0.3, "00101": 0.4, "00011": 0.6, "11001": 0.7, "10101": 0.45}
    ev, memo = EpochEvaluator(base), MemoTable()
    fitness, info = evaluate_population(ev, masks_of(*base), memo, LAYER_GROUPS, halving=Halving(1, 0.34))
    assert ev.calls[0] == (1, list(base))               # everyone: the short budget
    assert ev.calls[1:] == [(5, ["01001", "00101"])]    # round(0.34 * 6) = 2 best, best first
    assert info["promoted"] == 2
    assert fitness == pytest.approx([0.49, 0.25, 0.35, 0.59, 0.69, 0.44])
    assert memo.epochs == {"10001": 1, "00011": 1, "11001": 1, "10101": 1}  # kept the short budget
    assert set(memo.full_budget()) == {"01001", "00101"}


class TableEvaluator:
    """Fake fitness from two tables: short budget and whole budget (which may be worse:
    the last epoch of a model that overfits)."""

    def __init__(self, short, whole):
        self.short, self.whole, self.calls = short, whole, []

    def evaluate(self, masks, epochs=None):
        keys = [mask_key(m) for m in masks]
        self.calls.append((epochs, keys))
        return [(self.short if epochs else self.whole)[k] for k in keys]

    def stats(self):
        return {}


def test_halving_also_promotes_any_member_whose_short_score_beats_the_incumbent():
    ev = TableEvaluator(short={"10001": 0.30, "01001": 0.35, "00101": 0.50},
                        whole={"10001": 0.45, "01001": 0.33, "00101": 0.49})
    memo = MemoTable()
    memo.put("11111", 0.40)  # the incumbent, scored with the whole budget
    fitness, info = evaluate_population(ev, masks_of("10001", "01001", "00101"), memo, LAYER_GROUPS,
                                        halving=Halving(1, 0.34))
    # 10001 is the top third and gets worse with the whole budget (0.45); 01001's short score
    # 0.35 beats the incumbent 0.40, so it gets the whole budget too; 00101 does not
    assert ev.calls == [(1, ["10001", "01001", "00101"]), (None, ["10001"]), (None, ["01001"])]
    assert fitness == [0.45, 0.33, 0.50] and info["promoted"] == 2


def test_a_seeded_population_starts_with_the_baselines_and_never_ends_worse_than_them():
    cfg = tiny_config(**{"search.seed_baselines": "true", "search.population_size": "6",
                         "search.generations": "2"})
    genes = len(GROUPS) - 1
    seen = []

    class Recorder:
        def evaluate(self, masks, epochs=None):
            seen.extend(mask_key(m) for m in masks)
            return [0.9 - 0.1 * sum(bool(v) for v in m.values()) / len(m) for m in masks]

        def stats(self):
            return {}

    result = run_search(cfg, Recorder(), LAYER_GROUPS)
    assert [mask_key(decode_genome(g, GROUPS)) for g in baseline_genomes(genes)] == \
        ["00001", "11111", "00011", "00111"]
    assert seen[:4] == ["00001", "11111", "00011", "00111"]
    assert result.best_fitness <= min(result.memo[k] for k in ("00001", "11111", "00011", "00111"))


def test_the_one_se_rule_picks_the_smallest_mask_within_one_standard_error_of_the_best():
    memo = MemoTable({"11111": 0.20, "01111": 0.25, "00011": 0.27, "00001": 0.40})
    memo.epochs["00001"] = 1  # a lower-fidelity score never wins
    key, how = select_mask(memo, LAYER_GROUPS, "smallest-within-1se", n_val=25)
    se = np.sqrt(0.2 * 0.8 / 25)  # 0.08: 0.25 and 0.27 are within, 0.40 is not
    assert how["standard_error"] == pytest.approx(se)
    assert key == "00011" and how["best_mask"] == "11111" and how["candidates_within"] == 3
    assert select_mask(memo, LAYER_GROUPS, "best", n_val=25)[0] == "11111"
    key, _ = select_mask(memo, LAYER_GROUPS, "smallest-within-1se", n_val=10_000)
    assert key == "11111"  # a tiny standard error leaves only the best


def test_the_keep_full_rule_returns_the_full_mask_unless_the_best_beats_it_by_more_than_one_se():
    se = np.sqrt(0.2 * 0.8 / 25)  # 0.08 around the best fitness 0.20
    near = MemoTable({"00011": 0.20, "11111": 0.26, "00001": 0.40})
    key, how = select_mask(near, LAYER_GROUPS, "full-unless-1se-better", n_val=25, full_key="11111")
    assert key == "11111" and not how["best_beats_full"] and how["standard_error"] == pytest.approx(se)
    far = MemoTable({"00011": 0.20, "11111": 0.30, "00001": 0.40})
    key, how = select_mask(far, LAYER_GROUPS, "full-unless-1se-better", n_val=25, full_key="11111")
    assert key == "00011" and how["best_beats_full"] and how["full_fitness"] == 0.30
    unscored = MemoTable({"00011": 0.20, "11111": 0.21})
    unscored.epochs["11111"] = 1  # the full mask only at a lower fidelity: the best is kept
    key, how = select_mask(unscored, LAYER_GROUPS, "full-unless-1se-better", n_val=25, full_key="11111")
    assert key == "00011" and how["full_fitness"] is None


def test_a_search_under_the_keep_full_rule_returns_the_seeded_full_mask_when_nothing_beats_it_clearly():
    cfg = tiny_config(**{"search.seed_baselines": "true", "search.population_size": "6",
                         "search.generations": "1", "search.select": "full-unless-1se-better"})
    fitness = {"00011": 0.50, "11111": 0.52}

    class Table:
        def evaluate(self, masks, epochs=None):
            return [fitness.get(mask_key(m), 0.9) for m in masks]

        def stats(self):
            return {}

    result = run_search(cfg, Table(), LAYER_GROUPS, n_val=25)  # SE 0.1: 0.50 does not beat 0.52
    assert mask_key(result.best_mask) == "11111" and result.selection["best_mask"] == "00011"
    result = run_search(cfg, Table(), LAYER_GROUPS, n_val=100_000)  # SE 0.002: now it does
    assert mask_key(result.best_mask) == "00011" and result.selection["best_beats_full"]


def test_halving_gives_the_full_mask_only_the_whole_budget_beside_the_promoted_ones_under_the_keep_full_rule():
    ev = TableEvaluator(short={"10001": 0.30, "01001": 0.35, "11111": 0.60},
                        whole={"10001": 0.45, "01001": 0.33, "11111": 0.40})
    memo = MemoTable()
    fitness, info = evaluate_population(ev, masks_of("10001", "01001", "11111"), memo, LAYER_GROUPS,
                                        halving=Halving(1, 0.34, always=("11111",)))
    # 11111 skips the short run; 10001 is the better of the others and is promoted beside it;
    # 01001's short score (0.35) beats the best whole-budget one (0.40): promoted as well
    assert ev.calls == [(1, ["10001", "01001"]), (None, ["10001", "11111"]), (None, ["01001"])]
    assert "11111" in memo.full_budget() and fitness[2] == 0.40


# --- data and baselines ----------------------------------------------------------------------


def test_a_per_class_training_subset_is_seeded_and_keeps_at_most_k_of_each_class():
    labels = np.repeat([0, 1, 2], [50, 8, 30])
    train = np.arange(0, 88, 1)[::2]  # 25 / 4 / 15 per class
    a = subsample_per_class(train, labels, 10, seed=3)
    assert np.array_equal(a, subsample_per_class(train, labels, 10, seed=3))
    assert not np.array_equal(a, subsample_per_class(train, labels, 10, seed=4))
    assert [int(np.sum(labels[a] == c)) for c in range(3)] == [10, 4, 10]
    assert set(a) <= set(train)


def test_the_tiny_configs_split_keeps_val_and_test_when_the_training_split_is_subsampled():
    cfg = tiny_config()
    small = tiny_config(**{"data.train_per_class": "3"})
    dataset = load_dataset(cfg.data.source, input_size=cfg.model.input_size)
    spec = build_model(cfg.model.name, len(dataset.class_names), "none", cfg.model.input_size)
    full, sub = prepare_data(cfg, spec, dataset), prepare_data(small, spec, dataset)
    assert np.array_equal(full.splits["val"], sub.splits["val"])
    assert np.array_equal(full.splits["test"], sub.splits["test"])
    counts = np.bincount(np.asarray(dataset.labels)[sub.splits["train"]])
    assert counts.max() == 3 and sub.split_origin["train_per_class"]["kept"] == len(sub.splits["train"])


def test_a_per_class_validation_subset_is_seeded_leaves_train_and_test_alone_and_is_in_the_help():
    cfg = tiny_config()
    small = tiny_config(**{"data.val_per_class": "2"})
    dataset = load_dataset(cfg.data.source, input_size=cfg.model.input_size)
    spec = build_model(cfg.model.name, len(dataset.class_names), "none", cfg.model.input_size)
    full, sub = prepare_data(cfg, spec, dataset), prepare_data(small, spec, dataset)
    again = prepare_data(small, spec, dataset)
    other = prepare_data(tiny_config(**{"data.val_per_class": "2", "data.split_seed": "1"}), spec, dataset)
    labels = np.asarray(dataset.labels)
    assert np.array_equal(full.splits["train"], sub.splits["train"])
    assert np.array_equal(full.splits["test"], sub.splits["test"])
    assert set(sub.splits["val"]) < set(full.splits["val"])
    assert np.bincount(labels[sub.splits["val"]]).max() == 2
    assert np.array_equal(sub.splits["val"], again.splits["val"])
    assert len(sub.arrays.y_val) == len(sub.splits["val"]) == sub.split_origin["val_per_class"]["kept"]
    # its own stream: not the indices train_per_class would draw from the same split
    assert not np.array_equal(np.sort(sub.splits["val"]), subsample_per_class(
        full.splits["val"], labels, 2, cfg.data.split_seed))
    assert len(other.splits["val"]) == len(sub.splits["val"])
    from deft_jax.cli.search import build_parser
    assert "data.val_per_class" in build_parser().format_help()


def test_auto_rgn_gives_the_new_head_the_base_rate_and_ranks_only_the_pretrained_tensors():
    spec = small_cnn(3, input_size=16)
    params = spec.init(0)["params"]
    grads = jax.tree.map(lambda p: np.full(np.shape(p), 0.01, np.float32), params)
    head_grads = jax.tree.map(lambda g: 1000 * g, grads["head"])  # a huge head gradient
    grads = {**grads, "head": head_grads}
    m = rgn_multipliers(grads, params, head_tree(params, spec.layer_groups.labels))
    assert all(float(v) == 1.0 for v in jax.tree.leaves(m["head"]))

    def ranked(multipliers):  # backbone tensors with ||w|| > 0 (zero-initialised biases get 1)
        return [float(v) for g, sub in multipliers.items() if g != "head"
                for v, w in zip(jax.tree.leaves(sub), jax.tree.leaves(params[g])) if np.any(w)]

    assert max(ranked(m)) == 1.0  # the most surprised pretrained tensor gets the full rate
    old = rgn_multipliers(grads, params)  # the head in the maximum: the backbone all but frozen
    assert max(ranked(old)) < 0.1
