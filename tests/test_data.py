"""Tests of l2o_lib.data: loaders, class subsets, on-device sampling, augmentation, quadratics."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from l2o_lib.data import (
    CIFAR_STATS,
    DATASETS,
    ArrayData,
    BatchSampler,
    Dataset,
    Quadratic,
    class_subset,
    load_dataset,
    make_cifar_folder,
    random_crop_flip,
    random_quadratic,
    split_classes,
)


# --- mnist1d (generated once per session: ~2 s) ----------------------------------------------


@pytest.fixture(scope="module")
def mnist1d_root(tmp_path_factory):
    return tmp_path_factory.mktemp("mnist1d")


@pytest.fixture(scope="module")
def mnist1d(mnist1d_root):
    return load_dataset("mnist1d", root=mnist1d_root, seed=3)


def test_mnist1d_shapes_and_labels(mnist1d):
    ds = mnist1d
    assert ds.name == "mnist1d" and ds.num_classes == 10 and ds.input_shape == (40,)
    assert ds.train.x.shape == (4000, 40) and ds.test.x.shape == (1000, 40)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    for split in (ds.train, ds.test):
        assert split.y.min() >= 0 and split.y.max() <= 9
    assert set(ds.train.y.tolist()) == set(range(10))
    assert ds.device == torch.device("cpu")


def test_mnist1d_second_load_hits_cache(mnist1d, mnist1d_root, monkeypatch):
    import random

    import mnist1d.data as mnist1d_data

    assert (mnist1d_root / "mnist1d_seed3.npz").is_file()
    assert not list(mnist1d_root.glob("*.tmp"))  # the atomic write left no temp file

    def boom(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(mnist1d_data, "make_dataset", boom)
    np.random.seed(123)
    random.seed(123)
    start = time.perf_counter()
    again = load_dataset("mnist1d", root=mnist1d_root, seed=3)
    assert time.perf_counter() - start < 1.0
    assert torch.equal(again.train.x, mnist1d.train.x) and torch.equal(again.test.y, mnist1d.test.y)
    # Loading does not disturb the caller's global random state.
    assert np.random.randint(10**9) == np.random.RandomState(123).randint(10**9)


def test_truncation_is_seeded_subset(mnist1d, mnist1d_root):
    a = load_dataset("mnist1d", root=mnist1d_root, seed=3, n_train=100, n_test=30)
    b = load_dataset("mnist1d", root=mnist1d_root, seed=3, n_train=100, n_test=30)
    assert len(a.train) == 100 and len(a.test) == 30
    assert torch.equal(a.train.x, b.train.x)
    # Every kept row is a row of the full split.
    full = mnist1d.train.x
    assert bool((a.train.x[:, None] == full[None]).all(-1).any(1).all())
    # More than available keeps everything.
    assert len(load_dataset("mnist1d", root=mnist1d_root, seed=3, n_test=10**6).test) == 1000


# --- digits and synthetic --------------------------------------------------------------------


def test_digits_shapes_and_split():
    ds = load_dataset("digits", seed=0)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.train) + len(ds.test) == 1797
    assert len(ds.test) == pytest.approx(0.2 * 1797, abs=1)
    assert ds.train.x.shape[1:] == (1, 8, 8) and ds.train.x.dtype == torch.float32
    assert ds.train.x.min() >= 0 and ds.train.x.max() <= 1
    assert set(ds.test.y.tolist()) == set(range(10))  # stratified
    other = load_dataset("digits", seed=1)
    assert not torch.equal(ds.test.y, other.test.y)


@pytest.mark.parametrize("name,kwargs,classes,shape", [
    ("logistic", {"dim": 7}, 2, (7,)),
    ("gaussian_mixture", {"num_classes": 3, "dim": 5}, 3, (5,)),
])
def test_synthetic_determinism(name, kwargs, classes, shape):
    a = load_dataset(name, seed=1, n_train=300, n_test=100, **kwargs)
    b = load_dataset(name, seed=1, n_train=300, n_test=100, **kwargs)
    c = load_dataset(name, seed=2, n_train=300, n_test=100, **kwargs)
    assert a.num_classes == classes and a.input_shape == shape
    assert a.train.x.shape == (300, *shape) and a.test.x.shape == (100, *shape)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)
    assert set(a.train.y.tolist()) == set(range(classes))


def test_synthetic_defaults_and_learnability():
    ds = load_dataset("logistic", seed=0)
    assert len(ds.train) == 4000 and len(ds.test) == 1000
    # The true weights classify far better than chance.
    acc = ((ds.test.x @ ds.info["true_weights"] > 0).long() == ds.test.y).float().mean()
    assert acc > 0.75
    gm = load_dataset("gaussian_mixture", seed=0, separation=6.0)
    nearest = torch.cdist(gm.test.x, gm.info["means"]).argmin(dim=1)
    assert (nearest == gm.test.y).float().mean() > 0.9


# --- CIFAR -----------------------------------------------------------------------------------


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_reader(tmp_path, classes):
    import pickle

    name = f"cifar{classes}"
    folder = make_cifar_folder(tmp_path, n_train=23, n_test=7, classes=classes, seed=5)
    ds = load_dataset(name, root=tmp_path)
    assert ds.num_classes == classes and ds.input_shape == (3, 32, 32)
    assert ds.train.x.shape == (23, 3, 32, 32) and ds.test.x.shape == (7, 3, 32, 32)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64

    # Labels and pixels equal what was written (raw pickles read independently here).
    label_key = b"labels" if classes == 10 else b"fine_labels"
    files = [f"data_batch_{i}" for i in range(1, 6)] if classes == 10 else ["train"]
    raw = [pickle.loads((folder / f).read_bytes()) for f in files]
    y = np.concatenate([np.asarray(r[label_key]) for r in raw])
    x = np.concatenate([r[b"data"] for r in raw]).reshape(-1, 3, 32, 32)
    assert ds.train.y.tolist() == y.tolist()
    test_raw = pickle.loads((folder / ("test_batch" if classes == 10 else "test")).read_bytes())
    assert ds.test.y.tolist() == list(test_raw[label_key])

    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in CIFAR_STATS[name])
    pixels = torch.round((ds.train.x * std + mean) * 255)
    assert torch.equal(pixels, torch.from_numpy(x).float())
    # Uniform uint8 pixels: per-channel mean/std of the normalised data follow from the stats.
    per_channel = ds.train.x.transpose(0, 1).reshape(3, -1)
    expect_mean = (127.5 / 255 - mean.view(3)) / std.view(3)
    expect_std = (73.9 / 255) / std.view(3)
    assert torch.allclose(per_channel.mean(1), expect_mean, atol=0.05)
    assert torch.allclose(per_channel.std(1), expect_std, rtol=0.05)
    assert len(ds.info["label_names"]) == classes


def test_cifar_missing_folder_mentions_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True") as err:
        load_dataset("cifar10", root=tmp_path / "nowhere")
    assert "cifar-10-batches-py" in str(err.value)
    with pytest.raises(FileNotFoundError, match="download=True"):
        load_dataset("cifar100", root=tmp_path)


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
    import pickle

    folder = make_cifar_folder(tmp_path, n_train=5, n_test=2, classes=10)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": time.time, b"labels": [0, 1]}, f, protocol=2)  # a global outside numpy
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_dataset("cifar10", root=tmp_path)


# --- class subsets ---------------------------------------------------------------------------


def _toy_dataset(n=60, k=6):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    y = torch.arange(n) % k
    return Dataset("toy", ArrayData(x, y), ArrayData(x[:30].clone(), y[:30].clone()), (3,), k)


def test_class_subset_relabels():
    ds = _toy_dataset()
    sub = class_subset(ds, [4, 1])
    assert sub.num_classes == 2 and sub.info["classes"] == [4, 1]
    assert len(sub.train) == 20 and len(sub.test) == 10
    keep = (ds.train.y == 4) | (ds.train.y == 1)
    assert torch.equal(sub.train.x, ds.train.x[keep])
    assert torch.equal(sub.train.y, torch.where(ds.train.y[keep] == 4, 0, 1))
    plain = class_subset(ds, [4, 1], relabel=False)
    assert plain.num_classes == 6 and set(plain.train.y.tolist()) == {1, 4}


@pytest.mark.parametrize("classes", [[], [1, 1], [6], [-1], [0.5], "ab"])
def test_class_subset_rejects_bad_classes(classes):
    with pytest.raises(ValueError, match="classes"):
        class_subset(_toy_dataset(), classes)


def test_split_classes():
    src, tgt = split_classes(10, 7, seed=1)
    assert len(src) == 7 and len(tgt) == 3 and sorted(src + tgt) == list(range(10))
    assert split_classes(10, 7, seed=1) == (src, tgt)
    assert any(split_classes(10, 7, seed=s) != (src, tgt) for s in range(2, 6))
    with pytest.raises(ValueError, match="n_source"):
        split_classes(10, 10)


# --- BatchSampler ----------------------------------------------------------------------------


def _indexed_data(n=64):
    # x holds the example index, so a batch tells which examples it took.
    return ArrayData(torch.arange(n, dtype=torch.float32).view(n, 1), torch.arange(n) % 4)


def test_epoch_covers_every_index_once():
    data = _indexed_data(64)
    sampler = BatchSampler(data, 16, seed=0)
    assert sampler.steps_per_epoch == 4 == len(sampler)
    batches = list(sampler)
    assert len(batches) == 4
    seen = torch.cat([x.view(-1) for x, _ in batches]).long()
    assert sorted(seen.tolist()) == list(range(64))
    for x, y in batches:
        assert torch.equal(y, x.view(-1).long() % 4)
    # A second epoch is a different permutation.
    second = torch.cat([x.view(-1) for x, _ in sampler]).long()
    assert not torch.equal(seen, second)


def test_sampler_seeding_and_no_shuffle():
    data = _indexed_data(64)
    first = lambda seed: torch.cat([x for x, _ in BatchSampler(data, 16, seed=seed)])
    assert torch.equal(first(3), first(3))
    assert not torch.equal(first(3), first(4))
    ordered = torch.cat([x for x, _ in BatchSampler(data, 10, shuffle=False, drop_last=False)])
    assert ordered.view(-1).tolist() == list(range(64))
    assert BatchSampler(data, 10, drop_last=False).steps_per_epoch == 7
    assert BatchSampler(data, 10).steps_per_epoch == 6


def test_sample_shapes_device_and_augment():
    data = _indexed_data(20)
    calls = []

    def augment(x, generator):
        calls.append(generator)
        return x + 1000

    sampler = BatchSampler(data, 32, seed=1, augment=augment, drop_last=False)
    x, y = sampler.sample()
    assert x.shape == (32, 1) and y.shape == (32,)
    assert x.device == data.x.device and y.device == data.y.device
    assert x.min() >= 1000 and x.max() < 1020 and calls[0] is sampler.generator
    a = BatchSampler(data, 8, seed=2).sample()[0]
    b = BatchSampler(data, 8, seed=2).sample()[0]
    assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sampler_stays_on_cuda():
    data = _indexed_data(64).to("cuda")
    sampler = BatchSampler(data, 16, augment=None)
    x, y = next(iter(sampler))
    assert x.is_cuda and y.is_cuda and sampler.sample()[0].is_cuda


# --- augmentation ----------------------------------------------------------------------------


def test_random_crop_flip_shape_and_flip_only():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, 6, 5)
    out = random_crop_flip(x, g)
    assert out.shape == x.shape and out.dtype == x.dtype
    flipped = random_crop_flip(x, g, padding=0)
    same = (flipped == x).flatten(1).all(1)
    mirror = (flipped == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirror).all())
    assert same.any() and mirror.any()  # both happen over 32 draws
    assert torch.equal(random_crop_flip(x, g, padding=0, flip=False), x)


def test_random_crop_is_a_shift_of_the_input():
    p, h, w = 4, 5, 6
    g = torch.Generator().manual_seed(1)
    x = torch.rand(12, 2, h, w) + 1  # strictly positive: padding zeros are recognisable
    out = random_crop_flip(x, g, padding=p, flip=False)
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    shifts = torch.stack([padded[:, :, dy:dy + h, dx:dx + w]
                          for dy in range(2 * p + 1) for dx in range(2 * p + 1)], dim=1)  # (N, 81, C, H, W)
    assert shifts.shape[1] == 81
    matches = (shifts == out[:, None]).flatten(2).all(2)
    assert bool(matches.any(1).all())
    # Reproducible with the same generator seed.
    again = random_crop_flip(x, torch.Generator().manual_seed(1), padding=p, flip=False)
    assert torch.equal(out, again)


def test_random_crop_flip_rejects_bad_input():
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(torch.zeros(1, 1, 4, 4), None, padding=-1)
    with pytest.raises(ValueError, match="N, C, H, W"):
        random_crop_flip(torch.zeros(4, 4), None)


# --- quadratics ------------------------------------------------------------------------------


def test_random_quadratic():
    q = random_quadratic(12, cond=50.0, seed=3, dtype=torch.float64)
    assert isinstance(q, Quadratic) and q.A.shape == (12, 12) and q.dim == 12
    eig = torch.linalg.eigvalsh(q.A)
    assert float(eig.max() / eig.min()) == pytest.approx(50.0, rel=1e-6)
    assert float(eig.min()) == pytest.approx(1.0, rel=1e-6)
    assert q.grad(q.minimizer).abs().max() < 1e-10
    assert float(q.loss(q.minimizer)) == pytest.approx(float(q.min_value), abs=1e-10)
    thetas = torch.randn(3, 4, 12, dtype=torch.float64)
    batched = q.loss(thetas)
    assert batched.shape == (3, 4)
    loop = torch.stack([0.5 * t @ q.A @ t - q.b @ t for t in thetas.view(-1, 12)]).view(3, 4)
    assert torch.allclose(batched, loop)
    assert q.grad(thetas).shape == thetas.shape
    assert torch.allclose(q.grad(thetas[0, 0]), q.A @ thetas[0, 0] - q.b)
    assert torch.equal(random_quadratic(12, cond=50.0, seed=3).A, random_quadratic(12, cond=50.0, seed=3).A)
    assert not torch.equal(random_quadratic(12, seed=3).b, random_quadratic(12, seed=4).b)
    assert random_quadratic(4).A.dtype == torch.float32


@pytest.mark.parametrize("kwargs,param", [({"dim": 0}, "dim"), ({"dim": 3, "cond": 0.5}, "cond")])
def test_random_quadratic_validation(kwargs, param):
    with pytest.raises(ValueError, match=param):
        random_quadratic(**kwargs)


# --- validation ------------------------------------------------------------------------------


def test_registry_names():
    assert set(DATASETS) == {"mnist1d", "digits", "logistic", "gaussian_mixture", "cifar10", "cifar100"}


@pytest.mark.parametrize("kwargs,param", [
    ({"name": "imagenet"}, "dataset"),
    ({"name": "mnist1d", "n_train": -5}, "n_train"),
    ({"name": "mnist1d", "n_test": 0}, "n_test"),
    ({"name": "logistic", "dim": 0}, "dim"),
    ({"name": "gaussian_mixture", "separation": -1.0}, "separation"),
    ({"name": "digits", "colour": True}, "colour"),
    ({"name": "mnist1d", "seed": -1}, "seed"),
])
def test_load_dataset_validation(tmp_path, kwargs, param):
    with pytest.raises(ValueError, match=param):
        load_dataset(root=tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # raised before any work


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="dataset=.imagenet.*mnist1d") as err:
        load_dataset("imagenet")
    assert "cifar100" in str(err.value)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, 100])
def test_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        BatchSampler(_indexed_data(20), batch_size)


def test_arraydata_helpers():
    data = _indexed_data(10)
    sub = data.subset(torch.tensor([3, 1]))
    assert sub.x.view(-1).tolist() == [3.0, 1.0] and len(sub) == 2
    assert len(data.subset(data.y == 0)) == 3
    assert data.to("cpu").device == torch.device("cpu")
    with pytest.raises(ValueError, match="same length"):
        ArrayData(torch.zeros(3, 2), torch.zeros(4))
