"""l2o-lab: learning to optimize in PyTorch.

Everything works on a **flat parameter vector** ``theta`` of a model (:class:`FlatModel`), and
every optimizer, hand-designed or learned, is a pure pair ``init(theta) -> state`` /
``update(grad, state, theta, step) -> (delta, state)`` (:class:`~l2o_lib.optim.Transform`) that
:class:`~l2o_lib.optim.FlatOptimizer` turns into a ``torch.optim.Optimizer``.

Modules:

=================  ===========================================================================
``config``         profiles (``ci``, ``quick``, ``paper``) and argument validation
``data``           device-resident datasets (MNIST-1D, digits, synthetic, CIFAR), samplers;
                   package: ``containers``, ``registry``, ``synthetic``, ``cifar``, ``subsets``,
                   ``sampling``
``models``         MLP, ConvNet, LeNet-5, ResNet-20/32/18/34, VGG-16, tiny ViT; ``build_model``
``functional``     ``FlatModel``: flat parameters, loss / grad, batched evaluation with vmap
``corruptions``    input corruptions (noise, blur, contrast) for transfer tasks
``optim``          baselines, schedules, registry, ``torch.optim`` adapter, hypergradient SGD, masked
``training``       training loops for the functional core and for ``nn.Module`` + optimizer
``finetuning``     pretrained backbones, class-subset fine-tuning tasks, ``finetune``
``finite``         ``NonFiniteError``: every trainer ends with finite weights or says where it broke
``metrics``        convergence step, steps-to-target, speed-ups, mean ± std tables
``files``          atomic writes, JSON of numpy / torch values, damaged torch files named
``rundir``         run directories: params, metrics, results, checkpoints and resume
``results``        where notebooks keep runs and artifacts; re-exports ``rundir`` / ``files``
``plots``          plotly figure builders and ``save`` (HTML + PNG); package: ``style``,
                   ``charts``, ``landscapes``, ``learned``, ``export``
``runner``/``cli`` papermill notebook runner and the ``l2o`` command
``benchmark``      timing helpers, cases, targets and the table behind ``l2o bench``
``report``         the methods side by side (notebook 08, README) from summaries and bench records
``subspace``       DLDR / random subspaces, ``dagger`` (any optimizer on coordinates); ``lora``
``pbfgs``          P-BFGS / P+-BFGS in a subspace, with an Armijo line search
``rnnprop``        coordinate-wise LSTM rule, RNNprop transform, its fused step for ``torch.compile``
``sl2o``           SL2O: the RNNprop LSTM on subspace coordinates, truncated-BPTT meta-training
``mlrsnet``        MLR-SNet (package): schedule LSTM, meta-training, meta-test, comparison
``l3rs``           L3RS (package): learned per-layer mix of bases, fitness, comparison; NES: ``meta``
``meta``           divergence guard and meta-checkpoints shared by the meta-trainers
``artifacts``      save / load trained optimizers by kind (``sl2o``, ``mlrsnet``, ``l3rs``)
``population``     many runs of one architecture as one vmapped program (seeds x grids)
``landscape``      loss-landscape planes, batched grids, trajectory projection
=================  ===========================================================================
"""

from .config import PROFILES, Profile, get_profile, resolve_device
from .data import BatchSampler, Dataset, load_dataset
from .functional import FlatModel
from .models import MODELS, build_model
from .optim import OPTIMIZERS, FlatOptimizer, Transform, get_optimizer

__version__ = "0.1.0"

__all__ = [
    "PROFILES", "Profile", "get_profile", "resolve_device",
    "BatchSampler", "Dataset", "load_dataset",
    "FlatModel",
    "MODELS", "build_model",
    "OPTIMIZERS", "FlatOptimizer", "Transform", "get_optimizer",
]
