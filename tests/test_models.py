"""Tests of l2o_lib.models: parameter counts, shapes, validation, seeding, vmap and pickling."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch.func import functional_call, vmap

from l2o_lib.models import MODELS, build_model, count_parameters

# Reference counts for 10 classes: akamaster (ResNet-20/32), kuangliu (ResNet-18/34, VGG-16),
# LeNet-5 on 32x32 / padded 28x28, MNIST-1D ConvBase; the MLP and ViT counts are our own.
PARAM_COUNTS = [
    ("mlp", (40,), 15_210),
    ("convnet", (40,), 5_210),
    ("lenet5", (1, 32, 32), 61_706),
    ("lenet5", (1, 28, 28), 61_706),
    ("resnet20", (3, 32, 32), 269_722),
    ("resnet32", (3, 32, 32), 464_154),
    ("resnet18", (3, 32, 32), 11_173_962),
    ("resnet34", (3, 32, 32), 21_282_122),
    ("vgg16", (3, 32, 32), 14_728_266),
    ("vit_tiny", (3, 32, 32), 142_026),
]

# Every registered model with an input it accepts; the large ones only at 32x32.
SHAPES = [
    ("mlp", (40,)),
    ("mlp", (1, 8, 8)),
    ("convnet", (40,)),
    ("convnet", (1, 40)),
    ("convnet", (1, 8, 8)),
    ("convnet", (3, 32, 32)),
    ("lenet5", (1, 28, 28)),
    ("lenet5", (3, 32, 32)),
    ("resnet20", (3, 32, 32)),
    ("resnet32", (3, 32, 32)),
    ("resnet18", (3, 32, 32)),
    ("resnet34", (3, 32, 32)),
    ("vgg16", (3, 32, 32)),
    ("vit_tiny", (3, 32, 32)),
]


@pytest.fixture(autouse=True)
def _few_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def test_registry_names():
    assert set(MODELS) == {"mlp", "convnet", "lenet5", "resnet20", "resnet32", "resnet18", "resnet34", "vgg16", "vit_tiny"}
    assert {name for name, _ in SHAPES} == set(MODELS)


@pytest.mark.parametrize("name,shape,expected", PARAM_COUNTS)
def test_parameter_counts(name, shape, expected):
    assert count_parameters(build_model(name, shape, 10, seed=0)) == expected


def test_count_parameters_trainable_only():
    model = build_model("mlp", (40,), 10, seed=0, hidden=(8,))
    model.net[0].requires_grad_(False)
    assert count_parameters(model) == 40 * 8 + 8 + 8 * 10 + 10
    assert count_parameters(model, trainable_only=True) == 8 * 10 + 10


@pytest.mark.parametrize("name,shape", SHAPES)
def test_forward_shape(name, shape):
    model = build_model(name, shape, 7, seed=0).eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_mlp_options_and_logistic_regression():
    model = build_model("mlp", (1, 8, 8), 10, seed=0, hidden=())
    assert count_parameters(model) == 64 * 10 + 10
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_vit_qkv_are_separate_linears():
    model = build_model("vit_tiny", (3, 16, 16), 10, seed=0, depth=2, dim=32, heads=2)
    names = {n for n, _ in model.named_modules()}
    for i in range(2):
        for proj in ("q", "k", "v", "proj"):
            assert f"blocks.{i}.attn.{proj}" in names
            assert isinstance(model.get_submodule(f"blocks.{i}.attn.{proj}"), torch.nn.Linear)
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())


def test_resnet_training_step_backward():
    model = build_model("resnet20", (3, 16, 16), 10, seed=0).train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# ----------------------------------------------------------------------------- validation


def test_unknown_name():
    with pytest.raises(ValueError, match="resnet1000") as info:
        build_model("resnet1000", (3, 32, 32), 10)
    for allowed in MODELS:
        assert allowed in str(info.value)


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.0, "10", True, None])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", (40,), num_classes)


@pytest.mark.parametrize("name", ["lenet5", "resnet20", "resnet18", "vgg16", "vit_tiny"])
@pytest.mark.parametrize("shape", [(40,), (1, 40)])
def test_image_models_reject_signals(name, shape):
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_model(name, shape, 10)


@pytest.mark.parametrize("shape", [(), (0, 40), (1, -2), (3, 32.0, 32), "3x32x32", None, (1, 2, 3, 4)])
def test_bad_input_shape(shape):
    with pytest.raises(ValueError, match="input_shape"):
        build_model("convnet", shape, 10)


@pytest.mark.parametrize(
    "name,shape,kwargs",
    [
        ("vgg16", (3, 16, 16), {}),
        ("lenet5", (1, 8, 8), {}),
        ("convnet", (2,), {}),
        ("vit_tiny", (3, 30, 30), {}),
        ("vit_tiny", (3, 32, 32), {"dim": 30, "heads": 4}),
        ("mlp", (40,), {"hidden": (10, 0)}),
        ("mlp", (40,), {"width": 10}),
    ],
)
def test_bad_sizes_and_options(name, shape, kwargs):
    with pytest.raises(ValueError):
        build_model(name, shape, 10, **kwargs)


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        build_model("mlp", (40,), 10, seed=seed)


# ----------------------------------------------------------------------------- seeding


@pytest.mark.parametrize("name,shape", [("mlp", (40,)), ("resnet20", (3, 32, 32)), ("vit_tiny", (3, 32, 32))])
def test_seeding(name, shape):
    a = build_model(name, shape, 10, seed=1).state_dict()
    b = build_model(name, shape, 10, seed=1).state_dict()
    c = build_model(name, shape, 10, seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    weights = [k for k in a if k.endswith("weight") and a[k].dim() > 1]
    assert all(not torch.equal(a[k], c[k]) for k in weights)


def test_seed_leaves_global_rng_untouched():
    state = torch.get_rng_state()
    build_model("convnet", (40,), 10, seed=3)
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------- torch.func


@pytest.mark.parametrize(
    "name,shape,kwargs",
    [
        ("mlp", (40,), {}),
        ("convnet", (40,), {}),
        ("convnet", (1, 8, 8), {}),
        ("vit_tiny", (3, 16, 16), {"depth": 2}),
        ("resnet20", (3, 8, 8), {}),
    ],
)
def test_vmap_over_stacked_parameters(name, shape, kwargs):
    model = build_model(name, shape, 10, seed=0, **kwargs).eval()
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    base = {k: v.detach() for k, v in model.named_parameters()}
    copies = [{k: v + 0.05 * torch.randn(v.shape, generator=gen) for k, v in base.items()} for _ in range(3)]
    stacked = {k: torch.stack([c[k] for c in copies]) for k in base}

    with torch.no_grad():
        batched = vmap(lambda p: functional_call(model, p, (x,)))(stacked)
        looped = torch.stack([functional_call(model, c, (x,)) for c in copies])
    assert batched.shape == (3, 2, 10)
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)
    # The perturbations must matter, or the comparison above proves little.
    assert not torch.allclose(looped[0], looped[1])


# ----------------------------------------------------------------------------- pickling


@pytest.mark.parametrize("name,shape", [("resnet20", (3, 32, 32)), ("vit_tiny", (3, 32, 32)), ("convnet", (40,))])
def test_pickle_and_deepcopy(name, shape):
    model = build_model(name, shape, 10, seed=0).eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        expected = model(x)
        for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
            torch.testing.assert_close(clone(x), expected)
