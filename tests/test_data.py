"""Tests for harness.data (synthetic dataset, CIFAR loaders) and harness.batches."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.batches import augment_batch, batches
from harness.data import (
    CIFAR_STATS,
    DATA_ENV_VAR,
    DIFFICULTIES,
    SYNTH_MEAN,
    SYNTH_STATS,
    SYNTH_STD,
    DatasetCorrupt,
    DatasetMissing,
    DatasetSplits,
    DataSpec,
    load_cifar,
    load_dataset,
    resolve_data_root,
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


# --------------------------------------------------------------------------------------------
# CIFAR loaders
# --------------------------------------------------------------------------------------------


def _dump(path: Path, obj: object) -> None:
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def _fake_batch(rng: np.random.Generator, n: int, label_key: bytes, num_classes: int) -> dict:
    return {
        b"batch_label": b"fake",
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key: [int(v) for v in rng.integers(0, num_classes, size=n)],
    }


def _write_cifar10(root: Path, per_batch: int = 3, n_test: int = 4) -> Path:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        _dump(base / f"data_batch_{i}", _fake_batch(rng, per_batch, b"labels", 10))
    _dump(base / "test_batch", _fake_batch(rng, n_test, b"labels", 10))
    _dump(base / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)],
                                  b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    return base


def _write_cifar100(root: Path, n_train: int = 5, n_test: int = 3) -> Path:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = _fake_batch(rng, n, b"fine_labels", 100)
        batch[b"coarse_labels"] = [int(v) for v in rng.integers(0, 20, size=n)]
        _dump(base / name, batch)
    _dump(base / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                          b"coarse_label_names": [f"k{i}".encode() for i in range(20)]})
    return base


def _unnormalise(x: torch.Tensor, name: str) -> torch.Tensor:
    mean, std = CIFAR_STATS[name]
    return x * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)


def test_load_cifar10(tmp_path: Path) -> None:
    base = _write_cifar10(tmp_path)
    ds = load_cifar("cifar10", tmp_path)
    (xtr, ytr), (xte, yte) = ds.train, ds.test
    assert xtr.shape == (15, 3, 32, 32) and xte.shape == (4, 3, 32, 32)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert ds.num_classes == 10 and ds.resolution == 32
    # Batches are concatenated in order 1..5, rows are channel-major 32x32 planes.
    with (base / "data_batch_2").open("rb") as f:
        b2 = pickle.load(f, encoding="bytes")
    expected = torch.from_numpy(b2[b"data"]).view(3, 3, 32, 32).float() / 255
    torch.testing.assert_close(_unnormalise(xtr[3:6], "cifar10"), expected, atol=1e-5, rtol=0)
    assert ytr[3:6].tolist() == b2[b"labels"]
    with (base / "test_batch").open("rb") as f:
        tb = pickle.load(f, encoding="bytes")
    assert yte.tolist() == tb[b"labels"]
    # Red plane of the first test image is the first 1024 bytes.
    red = torch.from_numpy(tb[b"data"][0, :1024]).view(32, 32).float() / 255
    torch.testing.assert_close(_unnormalise(xte[:1], "cifar10")[0, 0], red, atol=1e-5, rtol=0)


def test_load_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    base = _write_cifar100(tmp_path)
    ds = load_cifar("cifar100", str(tmp_path))
    assert ds.num_classes == 100
    assert ds.train[0].shape == (5, 3, 32, 32) and ds.test[0].shape == (3, 3, 32, 32)
    with (base / "train").open("rb") as f:
        tr = pickle.load(f, encoding="bytes")
    assert ds.train[1].tolist() == tr[b"fine_labels"]
    expected = torch.from_numpy(tr[b"data"]).view(5, 3, 32, 32).float() / 255
    torch.testing.assert_close(_unnormalise(ds.train[0], "cifar100"), expected, atol=1e-5,
                               rtol=0)


def test_cifar_missing_directory_says_what_to_put_where(tmp_path: Path) -> None:
    with pytest.raises(DatasetMissing) as info:
        load_cifar("cifar10", tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    msg = str(info.value)
    for needle in ("cifar-10-batches-py", "data_batch_1", "data_batch_5", "test_batch",
                   "batches.meta", f"tar xzf cifar-10-python.tar.gz -C {tmp_path}"):
        assert needle in msg, needle
    with pytest.raises(DatasetMissing, match=r"cifar-100-python.*train, test, meta"):
        load_cifar("cifar100", tmp_path)


def test_cifar_missing_file_is_named(tmp_path: Path) -> None:
    base = _write_cifar10(tmp_path)
    (base / "data_batch_3").unlink()
    with pytest.raises(DatasetMissing, match=r"cifar-10-batches-py/data_batch_3"):
        load_cifar("cifar10", tmp_path)
    base100 = _write_cifar100(tmp_path)
    (base100 / "meta").unlink()
    with pytest.raises(DatasetMissing, match=r"cifar-100-python/meta"):
        load_cifar("cifar100", tmp_path)


def test_cifar_no_root_mentions_flag_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetMissing) as info:
        load_cifar("cifar10", None)
    assert "--data-root" in str(info.value) and DATA_ENV_VAR in str(info.value)


def test_cifar_corrupt_pickle_names_file(tmp_path: Path) -> None:
    base = _write_cifar10(tmp_path)
    (base / "data_batch_2").write_bytes(b"this is not a pickle")
    with pytest.raises(DatasetCorrupt, match="data_batch_2"):
        load_cifar("cifar10", tmp_path)


@pytest.mark.parametrize(
    "bad",
    [
        {b"data": np.zeros((3, 100), dtype=np.uint8), b"labels": [0, 1, 2]},  # wrong width
        {b"data": np.zeros((3, 3072), dtype=np.float32), b"labels": [0, 1, 2]},  # wrong dtype
        {b"data": np.zeros((3, 3072), dtype=np.uint8), b"labels": [0, 1]},  # label count
        {b"data": np.zeros((3, 3072), dtype=np.uint8), b"labels": [0, 1, 10]},  # label range
        {b"data": np.zeros((3, 3072), dtype=np.uint8)},  # missing labels key
        [1, 2, 3],  # not a dict
    ],
)
def test_cifar_malformed_batch_names_file(tmp_path: Path, bad: object) -> None:
    base = _write_cifar10(tmp_path)
    _dump(base / "test_batch", bad)
    with pytest.raises(DatasetCorrupt, match="test_batch"):
        load_cifar("cifar10", tmp_path)


def test_cifar_bad_meta_names_file(tmp_path: Path) -> None:
    base = _write_cifar10(tmp_path)
    _dump(base / "batches.meta", {b"label_names": [b"a", b"b"]})
    with pytest.raises(DatasetCorrupt, match="batches.meta"):
        load_cifar("cifar10", tmp_path)


def test_cifar_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cifar10"):
        load_cifar("svhn", tmp_path)


def test_resolve_data_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(DATA_ENV_VAR, raising=False)
    assert resolve_data_root(None) is None
    assert resolve_data_root("") is None
    assert resolve_data_root(str(tmp_path)) == tmp_path
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "env"))
    assert resolve_data_root(None) == tmp_path / "env"
    assert resolve_data_root(str(tmp_path / "cli")) == tmp_path / "cli"  # flag wins
    monkeypatch.setenv(DATA_ENV_VAR, "~/data")
    assert resolve_data_root(None) == Path("~/data").expanduser()


def test_resolved_env_root_feeds_loader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path))
    ds = load_cifar("cifar10", resolve_data_root(None))
    assert ds.train[0].shape[0] == 15


def test_load_dataset_cifar_subset_and_resize(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    ds = load_dataset(DataSpec("cifar10", train_size=7, test_size=2), 24, tmp_path)
    assert ds.train[0].shape == (7, 3, 24, 24) and ds.test[0].shape == (2, 3, 24, 24)
    assert ds.resolution == 24 and ds.num_classes == 10
    full = load_cifar("cifar10", tmp_path)
    assert torch.equal(ds.train[1], full.train[1][:7])
    same = load_dataset(DataSpec("cifar10"), 32, tmp_path)
    assert torch.equal(same.train[0], full.train[0])


def test_load_dataset_synthetic_and_errors(tmp_path: Path) -> None:
    ds = load_dataset(DataSpec("synthetic", train_size=20, test_size=10, seed=4), 16, None)
    ref = synthetic_dataset(resolution=16, train_size=20, test_size=10, seed=4)
    assert torch.equal(ds.train[0], ref.train[0]) and torch.equal(ds.test[1], ref.test[1])
    with pytest.raises(DatasetMissing):
        load_dataset(DataSpec("cifar100"), 32, tmp_path)
    with pytest.raises(ValueError):
        load_dataset(DataSpec("imagenet"), 32, tmp_path)
    assert DataSpec("cifar100").dry_run().name == "synthetic"


# --------------------------------------------------------------------------------------------
# Batch iterator
# --------------------------------------------------------------------------------------------


def _indexed(n: int, res: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    # Image i is constant i, so a batch's images can be traced back to their labels.
    labels = torch.arange(n)
    images = labels.float().view(n, 1, 1, 1).expand(n, 3, res, res).contiguous()
    return images, labels


def test_batches_cover_every_sample_once() -> None:
    x, y = _indexed(103)
    got = list(batches(x, y, 10, shuffle=True, generator=torch.Generator().manual_seed(0),
                       drop_last=False))
    assert [len(b[1]) for b in got] == [10] * 10 + [3]
    seen = torch.cat([b[1] for b in got])
    assert sorted(seen.tolist()) == list(range(103))
    assert not torch.equal(seen, torch.arange(103))  # actually shuffled
    for bx, by in got:
        assert torch.equal(bx[:, 0, 0, 0].long(), by)  # images stay paired with labels


def test_batches_drop_last_and_no_shuffle() -> None:
    x, y = _indexed(103)
    got = list(batches(x, y, 10, shuffle=False, generator=None, drop_last=True))
    assert [len(b[1]) for b in got] == [10] * 10
    assert torch.equal(torch.cat([b[1] for b in got]), torch.arange(100))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 60), bs=st.integers(1, 25), drop_last=st.booleans(),
       shuffle=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_batches_partition_property(n: int, bs: int, drop_last: bool, shuffle: bool,
                                    seed: int) -> None:
    x, y = _indexed(n, res=2)
    got = [b[1] for b in batches(x, y, bs, shuffle=shuffle,
                                 generator=torch.Generator().manual_seed(seed),
                                 drop_last=drop_last)]
    seen = torch.cat(got) if got else torch.empty(0, dtype=torch.int64)
    assert len(set(seen.tolist())) == len(seen)  # never repeats a sample
    if drop_last:
        assert all(len(b) == bs for b in got) and len(seen) == (n // bs) * bs
    else:
        assert len(seen) == n


def test_batches_deterministic_given_generator() -> None:
    x = torch.randn(50, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(50)

    def epoch(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        return list(batches(x, y, 16, shuffle=True, generator=g, drop_last=False, augment=True))

    a, b, c = epoch(7), epoch(7), epoch(8)
    assert all(torch.equal(p[0], q[0]) and torch.equal(p[1], q[1])
               for p, q in zip(a, b, strict=True))
    assert not all(torch.equal(p[1], q[1]) for p, q in zip(a, c, strict=True))


def test_batches_state_advances_between_epochs() -> None:
    x, y = _indexed(40)
    g = torch.Generator().manual_seed(0)
    e1 = torch.cat([b[1] for b in batches(x, y, 8, shuffle=True, generator=g, drop_last=False)])
    e2 = torch.cat([b[1] for b in batches(x, y, 8, shuffle=True, generator=g, drop_last=False)])
    assert not torch.equal(e1, e2)


def test_augment_is_crop_and_flip_of_original() -> None:
    x = torch.randn(12, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    out = augment_batch(x, torch.Generator().manual_seed(3), pad=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = F.pad(x, (2, 2, 2, 2), mode="reflect")
    n_flipped = 0
    for i in range(len(x)):
        candidates = [(padded[i, :, r:r + 10, c:c + 10], flip)
                      for r in range(5) for c in range(5) for flip in (False, True)]
        matches = [flip for crop, flip in candidates
                   if torch.equal(out[i], crop.flip(2) if flip else crop)]
        assert matches, f"sample {i} is not a crop/flip of the input"
        n_flipped += matches[0]
    assert 0 < n_flipped < len(x)  # both branches exercised with this seed


def test_batches_augment_keeps_labels_and_device() -> None:
    x, y = _indexed(20)
    for bx, by in batches(x, y, 7, shuffle=True, generator=torch.Generator().manual_seed(0),
                          drop_last=False, augment=True, device="cpu"):
        assert bx.device.type == "cpu" and bx.shape[1:] == x.shape[1:]
        assert torch.equal(bx[:, 0, 0, 0].long(), by)  # constant images survive crop/flip


def test_batches_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError):
        list(batches(torch.zeros(3, 3, 4, 4), torch.zeros(4), 2, shuffle=False, generator=None,
                     drop_last=False))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_on_cuda_with_cpu_generator() -> None:
    x, y = _indexed(33)
    xs, ys = x.cuda(), y.cuda()
    got = list(batches(xs, ys, 8, shuffle=True, generator=torch.Generator().manual_seed(0),
                       drop_last=False, augment=True))
    assert all(b[0].is_cuda and b[1].is_cuda for b in got)
    assert sorted(torch.cat([b[1] for b in got]).tolist()) == list(range(33))
