"""harness.data.synthetic and DataSpec: the generated dataset is deterministic, nested across
sizes and resolutions, balanced, and not solvable from colour."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from harness.data import (
    DIFFICULTIES,
    SYNTH_MEAN,
    SYNTH_STATS,
    SYNTH_STD,
    DatasetSplits,
    DataSpec,
    load_dataset,
    synthetic_dataset,
)

# --------------------------------------------------------------------------------------------
# Synthetic dataset
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_ds() -> DatasetSplits:
    return synthetic_dataset(train_size=600, test_size=300, seed=0)


def test_synthetic_is_deterministic(small_ds: DatasetSplits) -> None:
    again = synthetic_dataset(train_size=600, test_size=300, seed=0)
    for a, b in ((small_ds.train, again.train), (small_ds.test, again.test)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_synthetic_different_seed_differs(small_ds: DatasetSplits) -> None:
    other = synthetic_dataset(train_size=600, test_size=300, seed=1)
    assert not torch.equal(small_ds.train[0], other.train[0])
    assert not torch.equal(small_ds.train[1], other.train[1])
    assert not torch.equal(small_ds.test[0], other.test[0])


def test_synthetic_leaves_global_state_alone() -> None:
    state, threads = torch.get_rng_state(), torch.get_num_threads()
    synthetic_dataset(train_size=10, test_size=10, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    assert torch.get_num_threads() == threads


def test_synthetic_prefix_does_not_depend_on_size(small_ds: DatasetSplits) -> None:
    # Sample i is the same whatever the split size (fixed chunking), so size sweeps are nested.
    short = synthetic_dataset(train_size=300, test_size=100, seed=0)
    assert torch.equal(short.train[0], small_ds.train[0][:300])
    assert torch.equal(short.train[1], small_ds.train[1][:300])
    assert torch.equal(short.test[0], small_ds.test[0][:100])


@pytest.mark.parametrize("resolution", [24, 32, 40, 48])
def test_synthetic_shapes_and_dtypes(resolution: int) -> None:
    ds = synthetic_dataset(resolution=resolution, train_size=70, test_size=30, seed=0)
    (xtr, ytr), (xte, yte) = ds.train, ds.test
    assert xtr.shape == (70, 3, resolution, resolution) and xte.shape == (30, 3, resolution,
                                                                          resolution)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert ytr.shape == (70,) and yte.shape == (30,)
    assert ds.resolution == resolution and ds.num_classes == 10
    assert torch.isfinite(xtr).all()
    # Normalised images: values are (clip([0, 1]) - mean) / std.
    lo = (0 - max(SYNTH_MEAN)) / min(SYNTH_STD)
    hi = (1 - min(SYNTH_MEAN)) / min(SYNTH_STD)
    assert lo - 1e-4 <= xtr.min() and xtr.max() <= hi + 1e-4
    assert ds.description


def test_synthetic_normalisation_is_roughly_standard(small_ds: DatasetSplits) -> None:
    x = small_ds.train[0]
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.1
    assert ((x.std(dim=(0, 2, 3)) - 1).abs() < 0.15).all()


def test_synthetic_labels_cover_classes_and_are_balanced() -> None:
    ds = synthetic_dataset(train_size=2000, test_size=10, seed=0, resolution=8)
    assert ds.num_classes >= 10
    counts = torch.bincount(ds.train[1], minlength=ds.num_classes)
    assert counts.numel() == ds.num_classes
    expected = 2000 / ds.num_classes
    assert counts.min() > 0.7 * expected and counts.max() < 1.3 * expected


def test_synthetic_more_classes() -> None:
    ds = synthetic_dataset(num_classes=16, train_size=400, test_size=10, seed=0, resolution=16)
    assert ds.num_classes == 16 and int(ds.train[1].max()) == 15
    with pytest.raises(ValueError):
        synthetic_dataset(num_classes=17)
    with pytest.raises(ValueError):
        synthetic_dataset(num_classes=1)


def test_synthetic_train_test_are_disjoint_streams(small_ds: DatasetSplits) -> None:
    xtr = small_ds.train[0].flatten(1)
    xte = small_ds.test[0].flatten(1)
    assert not torch.equal(small_ds.train[1][:300], small_ds.test[1])
    # No test image is (close to) a train image: nearest-neighbour distance stays large.
    d = torch.cdist(xte, xtr)
    typical = d.median()
    assert d.min() > 0.25 * typical


def test_synthetic_not_solvable_from_mean_colour() -> None:
    # Nearest class centroid on per-image mean RGB must stay near chance (10%).
    ds = synthetic_dataset(train_size=2000, test_size=1000, seed=0, resolution=16)
    ftr, fte = ds.train[0].mean(dim=(2, 3)), ds.test[0].mean(dim=(2, 3))
    centroids = torch.stack([ftr[ds.train[1] == c].mean(0) for c in range(ds.num_classes)])
    pred = torch.cdist(fte, centroids).argmin(1)
    acc = (pred == ds.test[1]).float().mean().item()
    assert acc < 0.16


@pytest.mark.parametrize(("high", "low"), [(64, 32), (48, 24)])
def test_same_sample_consistent_across_resolutions(high: int, low: int) -> None:
    # Same latents rendered at two resolutions: area-downsampling the high-res render must
    # reproduce the low-res render up to anti-aliasing approximation error.
    hi = synthetic_dataset(resolution=high, train_size=64, test_size=0, seed=0, noise=0.0)
    lo = synthetic_dataset(resolution=low, train_size=64, test_size=0, seed=0, noise=0.0)
    assert torch.equal(hi.train[1], lo.train[1])
    down = F.interpolate(hi.train[0], size=(low, low), mode="area")
    err = down - lo.train[0]
    rel_rmse = err.pow(2).mean().sqrt() / lo.train[0].std()
    assert rel_rmse < 0.1
    # ... and far closer than a different sample would be.
    other = lo.train[0].roll(1, dims=0) - lo.train[0]
    assert err.abs().mean() < 0.1 * other.abs().mean()


def test_supersampling_agrees_with_analytic_antialiasing() -> None:
    a = synthetic_dataset(resolution=32, train_size=32, test_size=0, seed=0, noise=0.0)
    b = synthetic_dataset(resolution=32, train_size=32, test_size=0, seed=0, noise=0.0,
                          supersample=3)
    rel_rmse = (a.train[0] - b.train[0]).pow(2).mean().sqrt() / a.train[0].std()
    assert rel_rmse < 0.1


# --------------------------------------------------------------------------------------------
# Synthetic dataset: difficulty levels
# --------------------------------------------------------------------------------------------


def test_hard_is_the_default_and_pinned() -> None:
    # Fingerprint of the "hard" output as it was before difficulty levels existed (same latents,
    # same renderer): guards the bit-identity of the default level against refactors. Loose
    # tolerances only absorb last-ulp sin/cos differences between torch builds.
    ds = synthetic_dataset(resolution=24, train_size=40, test_size=8, seed=5)
    hard = synthetic_dataset(resolution=24, train_size=40, test_size=8, seed=5, difficulty="hard")
    assert torch.equal(ds.train[0], hard.train[0]) and torch.equal(ds.test[0], hard.test[0])
    assert ds.train[1].tolist() == [1, 0, 6, 8, 1, 1, 7, 7, 6, 1, 0, 8, 9, 7, 0, 3, 5, 0, 4, 6,
                                    3, 8, 4, 5, 1, 6, 4, 5, 4, 0, 6, 3, 5, 9, 1, 0, 4, 6, 7, 7]
    assert ds.test[1].tolist() == [5, 1, 2, 0, 3, 0, 7, 7]
    x, xt = ds.train[0].double(), ds.test[0].double()
    assert x.sum().item() == pytest.approx(-8056.2358, abs=0.05)
    assert x.abs().sum().item() == pytest.approx(57445.2948, abs=0.05)
    assert xt.sum().item() == pytest.approx(310.0512, abs=0.05)
    torch.testing.assert_close(ds.train[0][3, :, 7, 11], torch.tensor([0.84914, -1.00347, 1.01454]),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(ds.test[0][6, :, 20, 2], torch.tensor([1.69505, -1.65074, 0.0831]),
                               atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def medium_ds() -> DatasetSplits:
    return synthetic_dataset(train_size=600, test_size=300, seed=0, difficulty="medium")


def test_medium_is_deterministic_and_nested(medium_ds: DatasetSplits) -> None:
    again = synthetic_dataset(train_size=600, test_size=300, seed=0, difficulty="medium")
    for a, b in ((medium_ds.train, again.train), (medium_ds.test, again.test)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    short = synthetic_dataset(train_size=300, test_size=100, seed=0, difficulty="medium")
    assert torch.equal(short.train[0], medium_ds.train[0][:300])
    assert torch.equal(short.test[0], medium_ds.test[0][:100])
    other = synthetic_dataset(train_size=600, test_size=300, seed=1, difficulty="medium")
    assert not torch.equal(medium_ds.train[0], other.train[0])


def test_levels_share_labels_but_differ_in_images(small_ds: DatasetSplits,
                                                  medium_ds: DatasetSplits) -> None:
    # Same latents (labels, target shapes, stripes), different renders.
    assert torch.equal(small_ds.train[1], medium_ds.train[1])
    assert torch.equal(small_ds.test[1], medium_ds.test[1])
    diff = (small_ds.train[0] - medium_ds.train[0]).abs().flatten(1).amax(1)
    assert (diff > 0.5).all()  # every image changed somewhere (no clutter, eased target)
    assert "medium" in medium_ds.description and "hard" in small_ds.description


def test_medium_normalisation_is_roughly_standard(medium_ds: DatasetSplits) -> None:
    x = medium_ds.train[0]
    assert x.mean(dim=(0, 2, 3)).abs().max() < 0.1
    assert ((x.std(dim=(0, 2, 3)) - 1).abs() < 0.15).all()
    assert SYNTH_STATS["hard"] == (SYNTH_MEAN, SYNTH_STD) and set(SYNTH_STATS) == set(DIFFICULTIES)


@pytest.mark.parametrize("difficulty", ["hard", "medium"])
def test_only_the_target_breaks_background_smoothness(difficulty: str) -> None:
    # Away from the target, a medium image is background only (colour + gradient + a wave of at
    # most 2 cycles/width: tiny second differences), while hard images have clutter, decoy and
    # occluder edges there.
    from harness.data.synthetic import _CHUNK, _draw_latents, _easier

    res, n = 48, 64
    ds = synthetic_dataset(resolution=res, train_size=n, test_size=0, seed=2, noise=0.0,
                           difficulty=difficulty)
    mean, std = SYNTH_STATS[difficulty]
    img = ds.train[0] * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    lat = _easier(_draw_latents(2, 0, 0, _CHUNK, 10)) if difficulty == "medium" else \
        _draw_latents(2, 0, 0, _CHUNK, 10)
    tgt = lat["target"]
    pix = 2.0 / res
    c = (torch.arange(res, dtype=torch.float32) + 0.5) * pix - 1.0
    dist = torch.sqrt((c.view(1, 1, res) - tgt["cx"][:n].view(n, 1, 1)) ** 2
                      + (c.view(1, res, 1) - tgt["cy"][:n].view(n, 1, 1)) ** 2)
    # Every shape lies within 1.07 radii of its centre; keep 3 px clear of it (and the border).
    outside = (dist > 1.07 * tgt["r"][:n].view(n, 1, 1) + 3 * pix)[:, 1:-1, 1:-1]
    lap = (img[:, :, 2:, 1:-1] + img[:, :, :-2, 1:-1] + img[:, :, 1:-1, 2:] + img[:, :, 1:-1, :-2]
           - 4 * img[:, :, 1:-1, 1:-1]).abs().amax(1)
    worst = torch.where(outside, lap, torch.zeros(())).flatten(1).amax(1)
    if difficulty == "medium":
        assert worst.max() < 0.05
    else:
        assert (worst > 0.1).float().mean() > 0.75


def test_medium_target_is_larger_and_more_central() -> None:
    from harness.data.synthetic import _CHUNK, _draw_latents, _easier

    lat = _draw_latents(0, 0, 0, _CHUNK, 10)
    easy = _easier(lat)
    torch.testing.assert_close(easy["target"]["r"], lat["target"]["r"] * 1.1)
    assert easy["target"]["cx"].abs().max() <= 0.3 and easy["target"]["cy"].abs().max() <= 0.3
    torch.testing.assert_close(easy["target"]["cx"], lat["target"]["cx"] * 0.75)
    # Stripe colours pushed further apart along the same direction: never closer than in "hard"
    # and mostly >= 0.8 (clipping to the RGB cube leaves some pairs closer, as in "hard").
    d_hard = (lat["tgt_cols"][1] - lat["tgt_cols"][0]).norm(dim=1)
    d_easy = (easy["tgt_cols"][1] - easy["tgt_cols"][0]).norm(dim=1)
    assert (d_easy >= d_hard - 1e-6).all() and (d_easy > d_hard + 0.05).any()
    assert (d_easy >= 0.8 - 1e-5).float().mean() > 0.5
    assert torch.equal(easy["tgt_cols"][0], lat["tgt_cols"][0])
    for key in ("y", "back", "decoy", "front"):
        assert easy[key] is lat[key]  # untouched (clutter latents drawn, just not rendered)
    # Stripes half as fine, same orientation and phase.
    torch.testing.assert_close(easy["tgt_tex"][:, 0], lat["tgt_tex"][:, 0] * 0.5)
    assert torch.equal(easy["tgt_tex"][:, 1:], lat["tgt_tex"][:, 1:])
    assert easy["tgt_tex"][:, 0].min() >= 2.25 and easy["tgt_tex"][:, 0].max() <= 5.25
    torch.testing.assert_close(easy["bg"], 0.5 + (lat["bg"] - 0.5) * 0.5)
    torch.testing.assert_close(easy["bg_grad"], lat["bg_grad"] * 0.5)
    torch.testing.assert_close(easy["bg_wave"][:, 3], lat["bg_wave"][:, 3] * 0.5)
    assert torch.equal(easy["bg_wave"][:, :3], lat["bg_wave"][:, :3])


@pytest.mark.parametrize("difficulty", ["hard", "medium"])
def test_medium_consistent_across_resolutions_and_not_colour_solvable(difficulty: str) -> None:
    hi = synthetic_dataset(resolution=48, train_size=64, test_size=0, seed=0, noise=0.0,
                           difficulty=difficulty)
    lo = synthetic_dataset(resolution=24, train_size=64, test_size=0, seed=0, noise=0.0,
                           difficulty=difficulty)
    err = F.interpolate(hi.train[0], size=(24, 24), mode="area") - lo.train[0]
    # Area-pooling vs the analytic (two-pixel box) stripe attenuation: measured 0.056 (hard),
    # 0.039 (medium: coarser stripes, attenuated less at 24 px).
    assert err.pow(2).mean().sqrt() / lo.train[0].std() < 0.1
    other = lo.train[0].roll(1, dims=0) - lo.train[0]
    assert err.abs().mean() < 0.1 * other.abs().mean()
    ds = synthetic_dataset(train_size=2000, test_size=1000, seed=0, resolution=16,
                           difficulty=difficulty)
    ftr, fte = ds.train[0].mean(dim=(2, 3)), ds.test[0].mean(dim=(2, 3))
    centroids = torch.stack([ftr[ds.train[1] == c].mean(0) for c in range(ds.num_classes)])
    acc = (torch.cdist(fte, centroids).argmin(1) == ds.test[1]).float().mean().item()
    assert acc < 0.16


def test_unknown_difficulty_is_rejected() -> None:
    with pytest.raises(ValueError, match="difficulty"):
        synthetic_dataset(train_size=4, test_size=4, difficulty="easy")
    with pytest.raises(ValueError, match="difficulty"):
        load_dataset(DataSpec("synthetic", 4, 4, difficulty="Medium"), 16, None)


def test_dataspec_passes_difficulty_through() -> None:
    assert DataSpec("synthetic").difficulty == "hard"
    spec = DataSpec("synthetic", train_size=20, test_size=10, seed=4, difficulty="medium")
    ds = load_dataset(spec, 16, None)
    ref = synthetic_dataset(resolution=16, train_size=20, test_size=10, seed=4,
                            difficulty="medium")
    assert torch.equal(ds.train[0], ref.train[0]) and torch.equal(ds.test[0], ref.test[0])
    hard = load_dataset(DataSpec("synthetic", train_size=20, test_size=10, seed=4), 16, None)
    assert not torch.equal(ds.train[0], hard.train[0])
    dry = spec.dry_run()
    assert dry.difficulty == "medium" and dry.name == "synthetic" and dry.seed == 4
    assert DataSpec("cifar10").dry_run().difficulty == "hard"
