"""Datasets held as device tensors, seeded on-device batch sampling and synthetic problems.

Everything here keeps a whole split as two tensors (``x``, ``y``) on the training device;
there is no ``DataLoader``.  Batches are drawn by index sampling with a
``torch.Generator`` that lives on the same device as the data, so a training loop never
waits on the host: no worker processes, no per-step copies, no ``.item()``.

Datasets (see :data:`DATASETS` and :func:`load_dataset`):

* ``mnist1d`` -- generated offline with the ``mnist1d`` package and cached as ``.npz``;
* ``digits`` -- scikit-learn's bundled 8x8 digits;
* ``logistic`` / ``gaussian_mixture`` -- seeded synthetic classification problems;
* ``cifar10`` / ``cifar100`` -- the python-pickle CIFAR folders (optionally downloaded).

Also: the quadratic family :class:`Quadratic` / :func:`random_quadratic`, class subsets for
fine-tuning tasks (:func:`class_subset`, :func:`split_classes`), :class:`BatchSampler`,
the vectorised augmentation :func:`random_crop_flip`, and :func:`make_cifar_folder`, which
writes a tiny CIFAR-format folder for offline tests.

=================  ===========================================================================
``containers``     ``ArrayData`` (one split), ``Dataset`` (train + test and their description)
``registry``       ``DATASETS``, ``load_dataset``; the MNIST-1D and digits loaders
``synthetic``      ``logistic`` / ``gaussian_mixture`` loaders, ``Quadratic``, ``random_quadratic``
``cifar``          CIFAR-10/100 loaders, ``CIFAR_STATS``, ``make_cifar_folder``
``subsets``        ``class_subset``, ``split_classes``
``sampling``       ``BatchSampler``, ``random_crop_flip``
=================  ===========================================================================

Everything public is re-exported here: ``from l2o_lib.data import load_dataset, BatchSampler``.
"""

from .cifar import CIFAR_STATS, make_cifar_folder
from .containers import ArrayData, Dataset, DeviceLike
from .registry import DATASETS, DatasetSpec, load_dataset
from .sampling import BatchSampler, random_crop_flip
from .subsets import class_subset, split_classes
from .synthetic import Quadratic, random_quadratic

__all__ = [
    "ArrayData",
    "Dataset",
    "DatasetSpec",
    "DATASETS",
    "CIFAR_STATS",
    "load_dataset",
    "Quadratic",
    "random_quadratic",
    "class_subset",
    "split_classes",
    "BatchSampler",
    "random_crop_flip",
    "make_cifar_folder",
]
