"""Fixtures shared by several test files.

``one_thread`` is opt-in (``pytestmark = pytest.mark.usefixtures("one_thread")``): files of tiny
tensors use it, files that time or parallelise work do not. The digits fixtures are module-scoped,
as they were in each file: a test that modifies one affects only its own module.
"""

import pytest
import torch
from sklearn.datasets import load_digits

from l2o_lib.data import ArrayData


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for the module (its module-scoped fixtures included), restored after.

    Tiny tensors: one thread is as fast and leaves the other cores to parallel jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _digits(*, images: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    # sklearn's 1,797 8x8 digits, pixels scaled from 0..16 to [0, 1]: flat (N, 64) or images (N, 8, 8).
    d = load_digits()
    return torch.tensor(d.images if images else d.data, dtype=torch.float32) / 16, torch.tensor(d.target)


@pytest.fixture(scope="module")
def digits_xy():
    """``(x, y)``: the first 512 digits, flat (512, 64)."""
    x, y = _digits()
    return x[:512], y[:512]


@pytest.fixture(scope="module")
def digits_data(digits_xy):
    """The first 512 digits, flat, as an :class:`~l2o_lib.data.ArrayData`."""
    return ArrayData(*digits_xy)


@pytest.fixture(scope="module")
def digits_images():
    """``(x, y)``: the first 512 digits as (512, 1, 8, 8) images."""
    x, y = _digits(images=True)
    return x[:512].unsqueeze(1), y[:512]


@pytest.fixture(scope="module")
def digits_split():
    """``(train, test)`` :class:`~l2o_lib.data.ArrayData`: digits 0-1199 and 1200-1796, flat."""
    x, y = _digits()
    return ArrayData(x[:1200], y[:1200]), ArrayData(x[1200:], y[1200:])


@pytest.fixture(scope="module")
def l3rs_family_parts(tmp_path_factory):
    """A small L3RS fine-tuning family (an MLP backbone pretrained on 2 of 6 Gaussian-mixture classes,
    tasks of 2 classes from the others): ``(family, backbone cache folder, data)``."""
    from l2o_lib.data import load_dataset
    from l2o_lib.finetuning import TaskFamily, pretrain_backbone

    data = load_dataset("gaussian_mixture", num_classes=6, dim=10, n_train=600, n_test=300, seed=0)
    cache = tmp_path_factory.mktemp("backbones")
    backbone = pretrain_backbone("mlp", data, [0, 1], steps=60, lr=1e-2, batch_size=64, cache_dir=cache,
                                 model_kwargs={"hidden": (16,)}, desc=None)
    family = TaskFamily(data, "mlp", backbone, {"train": [2, 3], "test": [4, 5]}, k=2, n_train=100,
                        model_kwargs={"hidden": (16,)})
    return family, cache, data
