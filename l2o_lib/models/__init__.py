"""Network architectures trained (and meta-trained on) throughout l2o-lab.

Small models for the CPU profiles and the standard CIFAR models of the papers:

* :class:`MLP` — flatten + ReLU hidden layers (MNIST-1D, sklearn digits, anything).
* :class:`ConvNet` — the MNIST-1D "ConvBase": three strided convolutions and a linear head;
  ``Conv1d`` for signals ``(L,)`` / ``(C, L)``, ``Conv2d`` for images ``(C, H, W)``.
* :class:`LeNet5` — LeNet-5 with ReLU and max pooling (61,706 parameters on MNIST / 32x32 grey).
* :class:`CifarResNet` via :func:`resnet20` / :func:`resnet32` — He et al. (2016) CIFAR ResNets
  with option-A (parameter-free) shortcuts, as in the widely used "akamaster" code.
* :class:`ResNet` via :func:`resnet18` / :func:`resnet34` — the "kuangliu/pytorch-cifar"
  ImageNet-style ResNets adapted to 32x32 inputs (3x3 stem, no max pool).
* :class:`VGG` via :func:`vgg16` — VGG-16 with BatchNorm, kuangliu style.
* :class:`ViTTiny` via :func:`vit_tiny` — a tiny Vision Transformer whose attention is written
  by hand, with separate ``q`` / ``k`` / ``v`` linear layers (LoRA subspaces target them).

Every model takes ``input_shape`` (without the batch dimension) and ``num_classes`` and returns
logits of shape ``(batch, num_classes)``. Forward passes avoid in-place ops on parameters and
data-dependent Python branches, so each model works with :func:`torch.func.functional_call`
and :func:`torch.func.vmap` over a stacked set of parameters (in eval mode, where BatchNorm uses
its running statistics).

:func:`build_model` is the validated entry point used by notebooks and the CLI: it looks the
architecture up in :data:`MODELS`, checks the input shape, and seeds the initialisation without
touching the global RNG. :func:`count_parameters` counts parameters.
"""

from .registry import MODELS, build_model, count_parameters
from .resnet import CifarResNet, ResNet, resnet18, resnet20, resnet32, resnet34
from .small import MLP, ConvNet, LeNet5
from .vgg import VGG, VGG16_CFG, vgg16
from .vit import ViTTiny, vit_tiny

__all__ = [
    "MLP",
    "ConvNet",
    "LeNet5",
    "CifarResNet",
    "ResNet",
    "VGG",
    "VGG16_CFG",
    "ViTTiny",
    "resnet20",
    "resnet32",
    "resnet18",
    "resnet34",
    "vgg16",
    "vit_tiny",
    "MODELS",
    "build_model",
    "count_parameters",
]
