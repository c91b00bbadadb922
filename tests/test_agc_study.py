"""The AGC study: the training hook, the rule suite, the grid runner and the verdict rules.

Training here is tiny (8 px, 64 images, a step or two); the verdict rules are fed fabricated
grids, including ones where the claim must fail.
"""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch
import torch.nn as nn

from harness import models
from harness.agc import check_model_agc, classifier_of, study, unitwise_norm, verdicts
from harness.agc.known_bad import inverted_trigger_agc
from harness.agc.study import GridConfig, RuleConfig
from harness.agc.verdicts import AGC, BN, NF
from harness.claim import Claim, Evidence, Verdict
from harness.data import DataSpec, load_dataset, synthetic_dataset
from harness.train import StepState, TrainConfig, cache_key, train

TINY = dict(stem_width=4, widths=(4, 8, 8), resolution=8)


def model_with_grads(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = models.build("nf_resnet_tiny", **TINY)
    for name, p in model.named_parameters():
        if name.endswith("skip_gain"):
            nn.init.ones_(p)  # at 0 (SkipInit) the branches get no gradient
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    (100 * nn.functional.cross_entropy(model(x), y)).backward()  # large grads: many units clip
    return model


def apply(hook, model: nn.Module) -> None:
    hook(StepState(model, None, 0, torch.zeros(())))


# ----------------------------------------------------------------------------- the hook


def test_hook_clips_every_unit_but_leaves_the_classifier_alone():
    lam = 0.01
    model = model_with_grads()
    assert check_model_agc(study._hook_step(study.agc_hook), model, lam) == []
    fc = classifier_of(model)
    before = fc.weight.grad.clone()
    model = model_with_grads()
    apply(study.agc_hook(model, lam), model)
    assert torch.equal(classifier_of(model).weight.grad, before)


def test_hook_can_clip_the_classifier_too():
    lam = 0.01
    model = model_with_grads()
    fc = classifier_of(model)
    ratio = unitwise_norm(fc.weight.grad) / unitwise_norm(fc.weight.detach()).clamp_min(1e-3)
    assert (ratio > lam).any()  # otherwise this test would show nothing
    apply(study.agc_hook(model, lam, exclude=()), model)
    ratio = unitwise_norm(fc.weight.grad) / unitwise_norm(fc.weight.detach()).clamp_min(1e-3)
    assert (ratio <= lam * (1 + 1e-5)).all()
    # ...which the model check, excluding the classifier by default, reports.
    assert any("classifier" in v
               for v in check_model_agc(study._hook_step(
                   lambda m, c, e: study.agc_hook(m, c, e, exclude=())), model_with_grads(), lam))


def test_hook_is_bound_to_its_model():
    a, b = model_with_grads(0), model_with_grads(1)
    with pytest.raises(ValueError, match="another model"):
        apply(study.agc_hook(a, 0.01), b)


def test_hook_inside_the_training_loop_sees_and_clips_every_step():
    lam = 0.02
    data = synthetic_dataset(resolution=8, train_size=64, test_size=16, seed=1)
    model = models.build("nf_resnet_tiny", **TINY)
    fc = classifier_of(model)
    seen = []

    def check(state: StepState) -> None:  # runs after AGC, before the optimizer step
        for p in study.parameters_to_clip(state.model, [fc]):
            r = unitwise_norm(p.grad) / unitwise_norm(p.detach()).clamp_min(1e-3)
            assert (r <= lam * (1 + 1e-5)).all()
        seen.append(state.step)

    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.5, warmup_epochs=0, check_every=2)
    train(lambda: model, data.train, data.test, cfg, before_step=[study.agc_hook(model, lam),
                                                                  check], progress=False)
    assert seen == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- the rule

RULE = RuleConfig(case_seeds=(0, 1, 2), dtypes=("float32", "float64"), lambdas=(0.01, 0.16),
                  model="nf_resnet_tiny", model_batch=4, model_resolution=8)


def test_rule_suite_passes_the_harness_and_catches_every_known_bad():
    report = study.rule_study(RULE)
    assert report.violations == []
    assert report.cases == 3 * 2 * 2 + 2
    assert 0 < report.units_clipped < report.units_checked
    assert set(report.bad_caught) == {"inverted_trigger", "dim0_linear_norm", "no_eps_floor"}
    assert all(n > 0 for n in report.bad_caught.values()), report.bad_caught


@pytest.mark.parametrize("hook_factory", [
    lambda model, lam, eps: (lambda state: None),  # forgets to clip
    lambda model, lam, eps: study.agc_hook(model, lam, eps, exclude=()),  # clips the head
    lambda model, lam, eps: study.agc_hook(model, 2 * lam, eps),  # the wrong threshold
], ids=["no_clip", "clips_classifier", "wrong_lambda"])
def test_a_broken_hook_fails_the_rule(hook_factory):
    report = study.rule_study(RULE, hook_factory=hook_factory, known_bad={})
    assert report.violations


def test_a_broken_clip_function_fails_the_rule():
    report = study.rule_study(RULE, clip_fn=inverted_trigger_agc, known_bad={})
    assert any("tensor" in v for v in report.violations)


# ----------------------------------------------------------------------------- the grid

GRID = GridConfig(
    nf_model="nf_resnet_tiny", bn_model="bn_resnet_tiny",
    model_overrides=(("stem_width", 4), ("widths", (4, 8, 8))),
    data=DataSpec("synthetic", train_size=64, test_size=32, seed=2), resolution=8,
    batch_sizes=(8, 16), lambdas=(0.01, 0.1), seeds=(0, 1),
    train=TrainConfig(epochs=1, max_steps=2, warmup_epochs=0, check_every=1))


def test_grid_cells_cover_methods_batches_lambdas_and_seeds():
    cells = study.grid_cells(GRID)
    assert len(cells) == 2 * 2 * (1 + 2 + 1)
    assert {(c.method, c.lam) for c in cells} == {(NF, None), (AGC, 0.01), (AGC, 0.1), (BN, None)}
    assert len(set(cells)) == len(cells)
    assert study.skip_final_cells(GRID, 0.1) == [study.Cell(AGC, 16, s, 0.1, True) for s in (0, 1)]


def test_cache_key_holds_everything_that_determines_a_run():
    cell = study.Cell(AGC, 8, 0, 0.01)
    key = study.cell_key(GRID, cell, "cpu")
    assert key["train"].batch_size == 8 and key["train"].lr == GRID.lr(8) and key["seed"] == 0
    assert key["model_config"].widths == (4, 8, 8) and key["model_config"].resolution == 8
    assert key["device_class"] == "cpu" and key["cpu_threads"] == 1 and key["data"] == GRID.data
    base = cache_key(key)
    variants = [
        (GRID, dataclasses.replace(cell, lam=0.1)),
        (GRID, dataclasses.replace(cell, clip_head=True)),
        (GRID, dataclasses.replace(cell, seed=1)),
        (GRID, dataclasses.replace(cell, method=NF, lam=None)),
        (dataclasses.replace(GRID, resolution=12), cell),
        (dataclasses.replace(GRID, data=dataclasses.replace(GRID.data, seed=3)), cell),
        (dataclasses.replace(GRID, base_lr=0.2), cell),
        (dataclasses.replace(GRID, cpu_threads=2), cell),
        (dataclasses.replace(GRID, model_overrides=()), cell),
        (dataclasses.replace(GRID, train=dataclasses.replace(GRID.train, epochs=2)), cell),
    ]
    keys = {cache_key(study.cell_key(c, x, "cpu")) for c, x in variants}
    assert base not in keys and len(keys) == len(variants)
    # Verdict margins do not change a run, so they do not change its key.
    same = dataclasses.replace(GRID, bn_margin=0.5, clearly_below=0.5, learned_margin=0.5)
    assert cache_key(study.cell_key(same, cell, "cpu")) == base


def test_cells_train_once_then_come_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    calls = []
    clips = []
    real_clip = study.clip_grads_
    monkeypatch.setattr(study, "clip_grads_", lambda ps, c, e: (clips.append(len(ps)),
                                                                 real_clip(ps, c, e)))

    def load():
        calls.append(1)
        return load_dataset(GRID.data, GRID.resolution, None)

    cells = study.grid_cells(GRID)[:4] + study.skip_final_cells(GRID, 0.1)[:1]
    first = study.run_cells(GRID, cells + cells[:1], device="cpu", load=load)
    assert list(first.method) == [NF, AGC, AGC, BN, AGC, NF] and first.steps.tolist() == [2] * 6
    # AGC ran on every step of the AGC cells only; with the head clipped it sees 2 more tensors.
    # The repeated cell trained once.
    assert len(clips) == 3 * 2 and clips[-1] == clips[0] + 2
    again = study.run_cells(GRID, cells, device="cpu", load=load)
    assert again.from_cache.all() and len(clips) == 6
    pd.testing.assert_series_equal(first.test_acc[:5], again.test_acc)


def test_agc_hook_pickles_and_binds_to_one_model():
    import pickle

    hook = pickle.loads(pickle.dumps(study.AGCHook(0.01)))
    model = models.build("nf_resnet_tiny", widths=(4, 8, 8), stem_width=4, resolution=8)
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    hook(study.StepState(model, None, 0, torch.zeros(())))  # type: ignore[arg-type]
    other = models.build("nf_resnet_tiny", widths=(4, 8, 8), stem_width=4, resolution=8)
    with pytest.raises(ValueError, match="bound to another model"):
        hook(study.StepState(other, None, 1, torch.zeros(())))  # type: ignore[arg-type]


def test_a_diverged_run_counts_as_chance():
    rec = study.TrainRecord(test_acc=math.nan, test_loss=math.nan, diverged=True, steps=3,
                            loss_curve=[(3, math.inf)], epoch_seconds=[0.1],
                            images_per_second=1.0, peak_memory_mb=None, train_seconds=0.1)
    row = study._row(GRID, study.Cell(NF, 16, 0), rec)
    assert row["diverged"] and row["acc"] == GRID.chance == 0.1


def test_dry_run_keeps_every_cell_distinct_and_tiny():
    full = dataclasses.replace(GRID, batch_sizes=(256, 1024, 4096), data=DataSpec("cifar10"),
                               train=TrainConfig(amp="bf16", channels_last=True))
    dry = full.dry_run()
    assert dry.batch_sizes == (2, 4, 6) and dry.data.name == "synthetic"
    assert dry.train.max_steps == 1 and dry.train.amp is None
    assert len(study.grid_cells(dry)) == len(study.grid_cells(full))


# ------------------------------------------------------------------------ verdict rules

SMALL, LARGE = 64, 1024
D = None  # a diverged run


def fake_runs(grid: dict[tuple, list[float | None]], chance: float = 0.1) -> pd.DataFrame:
    """Rows like ``run_cells``'s from {(method, batch, lam[, clip_head]): [acc per seed]}."""
    rows = []
    for key, accs in grid.items():
        method, b, lam, *head = key
        for seed, a in enumerate(accs):
            rows.append({"method": method, "batch_size": b,
                         "lam": math.nan if lam is None else lam, "clip_head": bool(head),
                         "seed": seed, "acc": chance if a is None else a, "diverged": a is None,
                         "lr": 0.1 * b / 256, "final_train_loss": math.nan})
    return pd.DataFrame(rows)


# What the paper reports, in miniature: NF collapses at large batch, AGC with a small λ
# rescues it near BN, large λ is best at small batch, clipping the head hurts.
PAPER_LIKE = {
    (NF, SMALL, None): [0.80, 0.81], (AGC, SMALL, 0.01): [0.79, 0.80],
    (AGC, SMALL, 0.16): [0.805, 0.815], (BN, SMALL, None): [0.80, 0.81],
    (NF, LARGE, None): [D, D], (AGC, LARGE, 0.01): [0.78, 0.785],
    (AGC, LARGE, 0.16): [0.60, 0.62], (BN, LARGE, None): [0.79, 0.795],
    (AGC, LARGE, 0.01, True): [0.70, 0.71],
}
CFG = dataclasses.replace(GRID, batch_sizes=(SMALL, LARGE), lambdas=(0.01, 0.16),
                          clearly_below=0.05, bn_margin=0.03, learned_margin=0.05)
STABILIZES = Claim("agc.stabilizes_large_batch", "AGC stabilizes large batch", "test")


def verdict(judgement) -> Verdict:
    ev = Evidence(STABILIZES, "cpu")
    return ev.decide(judgement.holds, judgement.reason)


def test_paper_like_grid_reproduces_every_grid_claim():
    runs = fake_runs(PAPER_LIKE)
    assert verdicts.best_lambdas(runs) == {SMALL: 0.16, LARGE: 0.01}
    j = verdicts.judge_stabilizes_large_batch(runs, CFG)
    assert verdict(j) is Verdict.REPRODUCED, j.reason
    assert j.numbers["nf_diverged"] == 2 and j.numbers["nf_acc"] == pytest.approx(0.1)
    assert verdicts.judge_small_batch_benefit(runs).holds
    assert verdicts.judge_lambda_shrinks(runs, CFG).holds
    assert verdicts.judge_skip_final_layer(runs).holds


def test_stabilizes_fails_when_agc_diverges_too():
    runs = fake_runs({**PAPER_LIKE, (AGC, LARGE, 0.01): [D, D], (AGC, LARGE, 0.16): [D, 0.5]})
    j = verdicts.judge_stabilizes_large_batch(runs, CFG)
    assert verdict(j) is Verdict.NOT_REPRODUCED
    assert j.numbers["agc_diverged"] >= 1


def test_stabilizes_fails_when_nf_is_fine_without_agc():
    runs = fake_runs({**PAPER_LIKE, (NF, LARGE, None): [0.785, 0.79]})
    assert verdict(verdicts.judge_stabilizes_large_batch(runs, CFG)) is Verdict.NOT_REPRODUCED


def test_stabilizes_fails_when_agc_is_far_below_bn():
    runs = fake_runs({**PAPER_LIKE, (AGC, LARGE, 0.01): [0.70, 0.71]})
    assert verdict(verdicts.judge_stabilizes_large_batch(runs, CFG)) is Verdict.NOT_REPRODUCED


def test_stabilizes_says_nothing_when_nothing_was_learned():
    # Everything at chance and NF diverged: "AGC within a margin of BN" is then vacuous.
    flat = {k: [0.1, 0.1] for k in PAPER_LIKE}
    runs = fake_runs({**flat, (NF, LARGE, None): [D, D]})
    j = verdicts.judge_stabilizes_large_batch(runs, CFG)
    assert j.holds is False and "not learned" in j.reason


def test_benefit_rule_fails_when_the_benefit_is_larger_at_small_batch():
    runs = fake_runs({**PAPER_LIKE, (NF, SMALL, None): [D, D], (NF, LARGE, None): [0.77, 0.78]})
    j = verdicts.judge_small_batch_benefit(runs)
    assert j.holds is False and j.numbers["benefit_smallest_batch"] > j.numbers["benefit_largest_batch"]


def test_lambda_rule_fails_when_the_best_lambda_grows_or_is_tied():
    grows = fake_runs({**PAPER_LIKE, (AGC, SMALL, 0.01): [0.82, 0.83],
                       (AGC, LARGE, 0.16): [0.79, 0.80]})
    assert verdicts.best_lambdas(grows) == {SMALL: 0.01, LARGE: 0.16}
    assert verdicts.judge_lambda_shrinks(grows, CFG).holds is None  # 0.795 vs 0.7825: not established
    clearly = fake_runs({**PAPER_LIKE, (AGC, SMALL, 0.01): [0.82, 0.83],
                         (AGC, LARGE, 0.16): [0.90, 0.905]})
    j = verdicts.judge_lambda_shrinks(clearly, CFG)
    assert j.holds is False and "detectable" in j.reason
    tied = fake_runs({**PAPER_LIKE, (AGC, LARGE, 0.16): [0.78, 0.785]})
    j = verdicts.judge_lambda_shrinks(tied, CFG)
    assert j.holds is None and "tie" in j.reason


def test_skip_final_rule_fails_when_clipping_the_head_is_as_good():
    runs = fake_runs({**PAPER_LIKE, (AGC, LARGE, 0.01, True): [0.781, 0.786]})
    assert verdicts.judge_skip_final_layer(runs).holds is None  # as good: undecided
    better = fake_runs({**PAPER_LIKE, (AGC, LARGE, 0.01, True): [0.85, 0.855]})
    assert verdicts.judge_skip_final_layer(better).holds is False  # clipping clearly better


def test_bn_costs_rule():
    tiny = fake_runs({(NF, 4, None): [0.70, 0.71], (NF, 64, None): [0.705, 0.715],
                      (BN, 4, None): [0.50, 0.52], (BN, 64, None): [0.72, 0.73]})
    assert verdicts.judge_bn_costs(1.3, tiny, 0.03).holds
    assert verdicts.judge_bn_costs(0.95, tiny, 0.03).holds is False  # NF not faster
    bn_fine = fake_runs({(NF, 4, None): [0.70, 0.71], (NF, 64, None): [0.705, 0.715],
                         (BN, 4, None): [0.72, 0.725], (BN, 64, None): [0.72, 0.73]})
    assert not verdicts.judge_bn_costs(1.3, bn_fine, 0.03).holds


def test_undecided_comparisons_are_inconclusive_with_the_detectable_difference():
    noisy = fake_runs({**PAPER_LIKE, (AGC, LARGE, 0.01): [0.70, 0.86]})  # wide seeds
    j = verdicts.judge_stabilizes_large_batch(noisy, CFG)
    assert j.holds is None and "detectable ±" in j.reason
    assert verdict(j) is Verdict.INCONCLUSIVE


def test_tables_and_plot_from_a_grid():
    runs = fake_runs(PAPER_LIKE)
    summary = study.grid_summary(runs)
    assert len(summary) == len(PAPER_LIKE)
    row = summary[(summary.method == NF) & (summary.batch_size == LARGE)].iloc[0]
    assert row.diverged == 2 and row.acc_mean == pytest.approx(0.1)
    benefit = study.benefit_table(runs)
    assert benefit.best_lam.tolist() == [0.16, 0.01]
    fig = study.plot_grid(runs, 0.1)
    assert fig.axes[0].get_xlabel().startswith("batch size")


def test_step_timing_rounds_give_one_ratio_each():
    cfg = study.StepTimingConfig("nf_resnet_tiny", "bn_resnet_tiny", batch_size=2, resolution=8,
                                 rounds=2, min_run_time=0.0, model_overrides=GRID.model_overrides)
    times = study.time_bn_vs_nf(cfg, "cpu")
    assert len(times) == 2 and (times.bn_over_nf > 0).all()
