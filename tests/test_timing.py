import warnings

import pytest
import torch
import torch.nn as nn

from harness import timing


def tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


def test_inference_and_train_step_report_median_and_iqr():
    quick = timing.TimingSetup(min_run_time=0.05)
    inf = timing.time_inference(tiny(), 4, 16, quick)
    step = timing.time_train_step(tiny(), 4, 16, 10, quick)
    for t in (inf, step):
        assert t.median > 0 and t.iqr >= 0 and t.runs >= 1


def test_train_step_really_updates_weights():
    model = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    timing.time_train_step(model, 4, 16, 10, timing.TimingSetup(min_run_time=0.01))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_thread_count_is_fixed_and_restored():
    prev = torch.get_num_threads()
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append(torch.get_num_threads())
            return x.mean((2, 3))

    timing.time_inference(Probe(), 2, 8, timing.TimingSetup(cpu_threads=1, min_run_time=0.01))
    assert set(seen) == {1} and torch.get_num_threads() == prev


def test_noisy_measurement_warns():
    assert timing.Timing(median=1.0, iqr=0.5, runs=5, best=0.9).noisy
    assert not timing.Timing(median=1.0, iqr=0.01, runs=5, best=0.9).noisy
    with pytest.warns(UserWarning, match="noisy timing for x: IQR/median = 0.50"):
        timing.warn_if_noisy(timing.Timing(median=1.0, iqr=0.5, runs=5, best=0.9), "x")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        timing.warn_if_noisy(timing.Timing(median=1.0, iqr=0.01, runs=5, best=0.9), "x")


def test_unknown_device_fails_cleanly():
    with pytest.raises((RuntimeError, ValueError)):
        timing.time_inference(tiny(), 2, 8, timing.TimingSetup(device="nonsense",
                                                               min_run_time=0.01))


def test_inference_in_a_low_precision_casts_a_copy_once():
    # The timed copy runs in bfloat16 (no autocast per call); the caller's model is untouched.
    model = tiny()
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append((m.weight.dtype, i[0].dtype)))
    timing.time_inference(model, 2, 8, timing.TimingSetup(amp_dtype=torch.bfloat16,
                                                          min_run_time=0.01))
    assert next(model.parameters()).dtype == torch.float32
    # deepcopy copies the hook too: the copy saw bf16 weights and inputs
    assert seen and set(seen) == {(torch.bfloat16, torch.bfloat16)}


def test_batch_doubling_ratio_tells_work_bound_from_dispatch_bound():
    def work_bound(b: int) -> timing.Timing:
        return timing.Timing.exact(0.001 * b)

    def dispatch_bound(b: int) -> timing.Timing:
        return timing.Timing.exact(0.05 + 1e-6 * b)

    assert timing.batch_doubling_ratio(work_bound, 64) == pytest.approx(2.0)
    assert timing.batch_doubling_ratio(dispatch_bound, 64) == pytest.approx(1.0, abs=0.01)


def test_interleaved_ratio_summarises_b_over_a_per_round():
    import time

    def fast():
        time.sleep(0.001)

    def slow():
        time.sleep(0.003)

    r = timing.interleaved_ratio(fast, slow, rounds=3, min_run_time=0.02)
    assert r.low <= r.median <= r.high and 1.5 < r.median < 5


def test_synchronised_waits_for_cuda_after_every_call_and_is_a_no_op_on_cpu(monkeypatch):
    calls = []

    def fn():
        calls.append("fn")

    assert timing.synchronised(fn, "cpu") is fn
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: calls.append("sync"))
    wrapped = timing.synchronised(fn, "cuda")
    wrapped()
    wrapped()
    assert calls == ["fn", "sync", "fn", "sync"]  # the timer stops after the GPU's work ends


def test_bench_device_follows_cuda_availability(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert timing.bench_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert timing.bench_device() == "cuda"


def test_the_dispatch_bound_rule():
    assert timing.DISPATCH_BOUND_BELOW == 1.6
    assert timing.dispatch_bound(1.0) and timing.dispatch_bound(1.59)
    assert not timing.dispatch_bound(1.6) and not timing.dispatch_bound(2.0)
    assert not timing.dispatch_bound(float("nan"))  # not measured: not flagged
    assert timing.dispatch_bound(1.7, below=1.8)
    from harness.scaling.study import DISPATCH_BOUND_BELOW

    assert DISPATCH_BOUND_BELOW == timing.DISPATCH_BOUND_BELOW  # one rule, one threshold


def test_compiling_checks_the_machine_first(monkeypatch):
    # A machine without what torch.compile needs: a clear error before torch.compile is called.
    from harness import compile_check

    monkeypatch.setattr(compile_check, "compile_problem",
                        lambda device: f"torch.compile on {device} cannot work: no C compiler")
    monkeypatch.setattr(torch, "compile", lambda *a, **k: pytest.fail("compiled anyway"))
    setup = timing.TimingSetup(compile=True, min_run_time=0.01)
    with pytest.raises(compile_check.CompileUnavailable, match="on cpu cannot work: no C comp"):
        timing.time_inference(tiny(), 2, 8, setup)
    with pytest.raises(compile_check.CompileUnavailable):
        timing.time_train_step(tiny(), 2, 8, 10, setup)
    # not asked to compile: not checked
    assert timing.time_inference(tiny(), 2, 8, timing.TimingSetup(min_run_time=0.01)).median > 0


def test_a_ratio_reads_the_fastest_blocks_so_load_on_one_side_does_not_move_it(monkeypatch):
    """Load that slows b in one round and a in another swings the rounds' ratios (6 and 0.67
    around a true 2) but not b's fastest block over a's."""
    import torch.nn as nn

    calls = iter([timing.Timing(2.0, 0, 3, 2.0), timing.Timing(1.0, 0, 3, 1.0),  # b, a
                  timing.Timing(6.0, 0, 3, 5.0), timing.Timing(1.0, 0, 3, 1.0),  # b loaded
                  timing.Timing(2.0, 0, 3, 2.0), timing.Timing(3.0, 0, 3, 2.5)])  # a loaded
    monkeypatch.setattr(timing, "time_inference", lambda *args, **kwargs: next(calls))
    r = timing.inference_ratio(nn.Identity(), nn.Identity(), 4, 8, rounds=3)
    assert r.best == pytest.approx(2.0)
    assert (r.low, r.median, r.high) == pytest.approx((2 / 3, 2.0, 6.0))
