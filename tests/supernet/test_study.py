"""The supernet study: the law suite on random and real gradient pairs (the harness's rule
passes, every known-bad one is caught), and the grid's cells and jobs."""

import pytest

from harness.data import DataSpec, synthetic_dataset
from harness.supernet import study
from harness.supernet.known_bad import KNOWN_BAD
from harness.supernet.sandwich import Sandwich, project_conflict_
from harness.train import TrainConfig


def test_the_random_pairs_cover_conflict_agreement_zero_and_orthogonal():
    pairs = study.random_pairs(50, seed=0)
    dots = [float(a.double().flatten() @ b.double().flatten()) for _, a, b in pairs]
    assert sum(d < 0 for d in dots) >= 10 and sum(d > 0 for d in dots) >= 10
    assert sum(d == 0 for d in dots) >= 10  # g₂ = 0 and exactly orthogonal
    again = study.random_pairs(50, seed=0)
    assert all((a == c).all() and (b == d).all() for (_, a, b), (_, c, d) in zip(pairs, again))


def test_the_rule_study_passes_the_rule_and_catches_every_known_bad_one():
    cfg = study.RuleConfig(model="hybrid_supernet_tiny", resolution=8, real_steps=2,
                           random_pairs=40, batch_size=8)
    report = study.rule_study(cfg)
    assert report.violations == []
    assert report.pairs > 40 and report.conflicts > 0
    assert set(report.bad_caught) == set(KNOWN_BAD) and all(report.bad_caught.values())
    # a known-bad rule as the harness's: the suite reports it
    bad = study.rule_study(cfg, rule=KNOWN_BAD["wrong_sign"], known_bad={})
    assert bad.violations and "not orthogonal" in bad.violations[0]


def test_real_pairs_come_from_the_sandwich_steps():
    cfg = study.RuleConfig(model="cnn_supernet_tiny", resolution=8, real_steps=1,
                           random_pairs=0, batch_size=8)
    pairs = study.real_pairs(cfg)
    assert pairs and all(a.shape == b.shape for _, a, b in pairs)
    assert study.law_violations(project_conflict_, pairs)[0] == []


GRID = study.GridConfig(cnn="cnn_supernet_tiny", hybrid="hybrid_supernet_tiny",
                        data=DataSpec("synthetic", train_size=64, test_size=32), resolution=8,
                        seeds=(0, 1), train=TrainConfig(epochs=1, batch_size=16))


def test_grid_cells_and_jobs():
    cells = study.grid_cells(GRID)
    assert len(cells) == 10
    data = synthetic_dataset(resolution=8, train_size=64, test_size=32)
    jobs = [study.cell_job(GRID, c, data, "cpu") for c in cells]
    keys = [str(sorted(j.key.items())) for j in jobs]
    assert len(set(keys)) == len(keys)
    for cell, job in zip(cells, jobs):
        if cell.method == study.STANDALONE:
            assert job.step_fn is None and not job.keep_weights and "arch" in job.key
            assert job.model_fn().arch == study.named_arch(GRID, cell.net, cell.arch)
        else:
            assert isinstance(job.step_fn, Sandwich) and job.keep_weights
            assert job.step_fn.cfg.project == (cell.method == study.PROJECTED)


def test_the_grid_has_each_cell_once_with_its_arch_on_standalone_cells_only():
    cells = study.grid_cells(GRID)
    assert all(isinstance(c, study.SupernetCell) for c in cells)
    triples = [(c.net, c.method, c.seed) for c in cells if c.method != study.STANDALONE]
    expected = {(net, method, seed) for seed in GRID.seeds
                for net, method in ((study.HYBRID, study.NAIVE), (study.HYBRID, study.PROJECTED),
                                    (study.CNN, study.NAIVE))}
    assert sorted(triples) == sorted(expected)  # each supernet run once per seed
    assert [c for c in cells if c.method != study.STANDALONE and c.arch is not None] == []
    alone = [(c.net, c.arch, c.seed) for c in cells if c.method == study.STANDALONE]
    assert sorted(alone) == sorted((study.HYBRID, arch, seed) for seed in GRID.seeds
                                   for arch in (study.SMALLEST, study.MID))
    assert len(cells) == len(expected) + len(alone) == 5 * len(GRID.seeds)
    assert len(set(cells)) == len(cells)
    labels = [c.label() for c in cells]
    assert len(set(labels)) == len(labels)  # a failed cell's name says which one


def _space(net):
    from harness.models.supernet import MODEL_CFGS

    return MODEL_CFGS[GRID.cnn if net == study.CNN else GRID.hybrid].stages


# (StageArch field, StageSpace choices): the dimensions each stage kind chooses
_DIMS = {"conv": (("depth", "depths"), ("width", "widths")),
         "transformer": (("depth", "depths"), ("width", "widths"), ("heads", "heads"),
                         ("mlp_ratio", "mlp_ratios"))}


@pytest.mark.parametrize("net", [study.HYBRID, study.CNN])
@pytest.mark.parametrize("which", [study.LARGEST, study.SMALLEST, study.MID])
def test_named_archs_lie_in_the_space(net, which):
    from harness.models.supernet import StageArch

    space = _space(net)
    arch = study.named_arch(GRID, net, which)
    assert len(arch) == len(space)
    for i, (a, s) in enumerate(zip(arch, space, strict=True)):
        assert isinstance(a, StageArch)
        if s.kind == "conv":
            assert (a.heads, a.mlp_ratio) == (0, 0.0), f"stage {i} is a conv stage"
        for field, choices in _DIMS[s.kind]:
            value, allowed = getattr(a, field), getattr(s, choices)
            assert value in allowed, f"stage {i}: {field}={value} not in {allowed}"
            # largest: every dimension's largest choice; smallest: its smallest; mid: the
            # middle one (the lower of two middles)
            want = {study.LARGEST: max(allowed), study.SMALLEST: min(allowed),
                    study.MID: sorted(allowed)[(len(allowed) - 1) // 2]}[which]
            assert value == want, f"{which} stage {i}: {field}={value}, want {want}"


@pytest.mark.parametrize("net", [study.HYBRID, study.CNN])
def test_the_named_archs_are_three_distinct_sizes(net):
    from harness.models.supernet import MODEL_CFGS, subnet_complexity

    archs = {w: study.named_arch(GRID, net, w) for w in (study.LARGEST, study.SMALLEST, study.MID)}
    assert len(set(archs.values())) == 3
    cfg = MODEL_CFGS[GRID.cnn if net == study.CNN else GRID.hybrid]
    params = {w: subnet_complexity(cfg, a).params for w, a in archs.items()}
    assert params[study.SMALLEST] < params[study.MID] < params[study.LARGEST]


def test_dry_run_shrinks_every_cell():
    dry = GRID.dry_run()
    assert dry.seeds == (0,) and dry.train.max_steps == 2 and dry.resolution == 8
    assert GRID.chance == 0.1


def test_subnet_evaluations_share_one_device_copy_of_the_calibration_images(monkeypatch):
    # 3 subnets of a trained supernet, as _rows evaluates them: the images move to the device
    # once, not once per evaluation, and each accuracy is bit-identical to the former code's
    # (the whole training set moved per evaluation).
    import dataclasses

    import torch

    from harness import models
    from harness.models.supernet import extract
    from harness.supernet.sandwich import recalibrate_bn
    from harness.train import evaluate

    grid = dataclasses.replace(GRID, calib_batches=2)  # reads 32 of the 64 images
    data = synthetic_dataset(resolution=8, train_size=64, test_size=32)
    torch.manual_seed(0)
    trained = models.build(grid.hybrid, resolution=grid.resolution)
    trained(torch.randn(16, 3, 8, 8))  # BN statistics of its own, as a trained one has
    weights = trained.state_dict()

    def former(which):
        supernet = models.build(grid.hybrid, resolution=grid.resolution)
        supernet.load_state_dict(weights)
        sub = extract(supernet, study.named_arch(grid, study.HYBRID, which)).to("cpu")
        recalibrate_bn(sub, data.train[0].to("cpu"), grid.train.batch_size, grid.calib_batches)
        return evaluate(sub, data.test, "cpu", grid.train), sub.state_dict()

    copies, seen = [], []
    real = study._to_device

    def counting(t, device):
        copies.append((tuple(t.shape), device))
        return real(t, device)

    def evaluated(sub, *args):  # what evaluate_subnet evaluates: accuracy, loss, BN statistics
        seen.append((evaluate(sub, *args), sub.state_dict()))
        return seen[-1][0]

    monkeypatch.setattr(study, "_to_device", counting)
    monkeypatch.setattr(study, "evaluate", evaluated)
    study._CALIBRATION.clear()
    whiches = (study.LARGEST, study.SMALLEST, study.MID)
    accs = [study.evaluate_subnet(grid, study.HYBRID, weights, which, data, "cpu")
            for which in whiches]
    assert copies == [((32, 3, 8, 8), "cpu")]  # once, and only what recalibration reads
    assert accs == [result[0] for result, _ in seen]
    for (result, state), which in zip(seen, whiches, strict=True):
        before, before_state = former(which)
        assert result == before  # (accuracy, loss) bit for bit
        assert state.keys() == before_state.keys()
        assert all(torch.equal(state[k], before_state[k]) for k in state)
    study._CALIBRATION.clear()


def test_the_calibration_copy_is_per_images_count_and_device():
    import torch

    study._CALIBRATION.clear()
    a, b = torch.randn(10, 3, 4, 4), torch.randn(10, 3, 4, 4)
    first = study.calibration_images(a, 4, "meta")
    assert first.device.type == "meta" and first.shape[0] == 4
    assert study.calibration_images(a, 4, "meta") is first  # reused
    assert study.calibration_images(b, 4, "meta") is not first  # other images
    assert study.calibration_images(b, 6, "meta").shape[0] == 6  # another count
    cpu = study.calibration_images(b, 6, "cpu")
    assert torch.equal(cpu, b[:6]) and cpu.data_ptr() == b.data_ptr()  # on the CPU: a view
