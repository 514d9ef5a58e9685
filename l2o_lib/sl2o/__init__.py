"""SL2O (Chen et al.): a coordinate-wise LSTM optimizer acting on subspace coordinates.

The learned optimizer is :mod:`~l2o_lib.rnnprop`'s :class:`~l2o_lib.rnnprop.LSTMRule` seeing the
RNNprop features of Lv et al. (:func:`~l2o_lib.rnnprop.rnnprop`; both, and ``RNNpropState``, are
re-exported here). Acting on the d coordinates of a :class:`~l2o_lib.subspace.Subspace`
(``W = W0 + zᵀ P``) is SL2O; acting on every parameter of a small model is plain L2O.

What is here (a package; every name below imports from ``l2o_lib.sl2o``):

=================  ===========================================================================
``optimizer``      the learned optimizer, from the core outwards: :func:`sl2o`
                   (``dagger(rnnprop(rule), subspace)``), :class:`SL2O` (the ``torch.optim``
                   adapter) and :class:`Trained` (a meta-trained rule and its subspace, saved and
                   loaded as kind ``"sl2o"`` by :mod:`~l2o_lib.artifacts`)
``problem``        :class:`Problem`: one task family (a model, the space the optimizer acts in,
                   training data and the validation split that selects the best epoch)
``meta_training``  :func:`meta_train`: truncated-BPTT meta-training (Algorithm 1): tasks of
                   ``steps_per_task`` inner steps, a meta-step every ``unroll`` steps on the summed
                   training losses, Adam on the rule's weights, first- or second-order
                   meta-gradients (its module docstring explains the first-order surrogate), K tasks
                   per meta-step, a divergence guard, per-task checkpoints and the selection of the
                   best weights on a validation split (:func:`selection_curve`; the paper selects
                   by test loss, selecting on the reported split would inflate it), recorded in a
                   :class:`MetaHistory`; the public inner loop :func:`run_task` with
                   :func:`step_on_unroll`, and :func:`meta_gradient`
=================  ===========================================================================

Differences from the public reference code (see DESIGN.md): no hard stop after 10k steps, one
LSTM cell definition, and the paper's convergence-step metric in :mod:`~l2o_lib.metrics`.
"""

from ..rnnprop import LSTMRule, RNNpropState, rnnprop
from .meta_training import (SELECTION_SEED, MetaHistory, meta_gradient, meta_train, run_task, selection_curve,
                            step_on_unroll)
from .optimizer import SL2O, Trained, sl2o
from .problem import Problem

# LSTMRule, RNNpropState and rnnprop live in l2o_lib.rnnprop; re-exported because notebooks import them from here.
__all__ = ["LSTMRule", "RNNpropState", "rnnprop", "sl2o", "SL2O", "Problem", "MetaHistory", "run_task",
           "step_on_unroll", "meta_train", "meta_gradient", "selection_curve", "SELECTION_SEED", "Trained"]
