"""L3RS: a learned per-layer mix of base optimizers for fine-tuning (Narrowing the Focus, Sec. 4).

For every layer ``l`` (one parameter tensor: kernels and biases are separate layers, as in the
paper) and base optimizers ``p`` (SGD and Adam by default)::

    delta_l = lambda_l * sum_p mu_{l,p} * d_{l,p} / ||d_{l,p}||            (paper eq. 2)

where ``d_{l,p}`` is base optimizer ``p``'s update direction on layer ``l`` (its step with LR 1,
e.g. ``-g`` for SGD, ``-m_hat / (sqrt(v_hat) + eps)`` for Adam), ``mu_{l,.}`` is a softmax over
the bases and ``lambda_l > 0`` the length of the layer's update. A two-layer ReLU MLP shared by
all layers maps each layer's feature row to ``(log-scale, mu logits)``. Features (paper 4.1):

* EMAs at three decays of the layer's log weight norm, log gradient norm and of the loss (shared
  by all layers), bias-corrected ``e_t / (1 - beta^t)``: ``3 + 3 + 3`` values;
* relative time ``tanh(s * (t/T - r_i))`` for ``r_i`` evenly spaced in ``[0, 1]``;
* absolute time ``tanh(T / x_j)`` for ``x_j`` log-spaced in ``[10, 10^4]`` (an encoding of the
  run length ``T``, which the optimizer must be told up front, as for a cosine schedule);
* a learned 16-d embedding of the layer;
* ``log ||d_{l,p}||`` of every base direction.

Everything is a tensor program over all layers at once: per-layer norms come from one
``index_add`` over segment ids (:func:`l2o_lib.optim.segment_ids`), the MLP runs on the ``(L, F)``
feature matrix and the mix is gathered back to the flat vector; there is no Python loop over
layers. The meta-parameters are ONE flat vector ``phi`` (:func:`init_phi`, layout
:meth:`L3RSConfig.layout`), so NES (:func:`l2o_lib.meta.nes_train`) perturbs a vector and a
population of optimizers is ``vmap`` over rows of ``phi``.

Choices where the paper is silent (each one is tested in ``tests/test_l3rs.py``):

* ``lambda_l = base_lr * sqrt(n_l) * exp(B * tanh(o_l / B))`` with ``n_l`` the layer's size and
  ``B = max_log_scale`` (5). ``base_lr`` is thus a per-entry RMS step, comparable to an Adam LR
  (Adam's step has RMS about its LR), whatever the layer's size; the bounded exponent keeps any
  ``phi`` NES tries within ``e^{+-B}`` of it (STYLE: bound learned steps).
* Adam's betas are meta-learned as ``sigmoid(phi_beta)`` (initialised at 0.9 / 0.999); the other
  bases keep their defaults: Lion (0.9, 0.99), Adamax and LAMB (0.9, 0.999), built from
  :mod:`l2o_lib.optim` with LR 1. LAMB's per-layer trust ratio is one number per layer, so it
  cancels in ``d / ||d||``: the LAMB direction equals Adam's with eps 1e-6 and fixed betas.
  ``weight_decay`` is the direction ``-theta``.
* EMA decays (0.5, 0.9, 0.99); MLP width 32; 5 relative and 4 absolute time features,
  sharpness 10; the output layer starts small (std 0.01) with zero bias, so an untrained
  ``phi`` is an even mix of the normalised bases with per-entry step ``base_lr``.
* A zero direction (a frozen layer, ``||d|| = 0``) contributes nothing instead of NaN.
* The loss comes in as ``update(..., loss=)``; pass it at every step (the adapter
  :class:`L3RS` takes it from the closure or ``step(loss=...)``). Without it the loss features
  stay 0.
* Past ``step >= T`` the time features stay at their last value (``t/T`` clamped to 1).
* Fitness for NES, two definitions (:data:`FITNESSES`): ours, minus the mean mini-batch training
  loss over the inner fine-tuning run (rewards fast descent and a low end, costs nothing extra),
  and the paper's, minus the loss on an evaluation batch of the task's test split after ``K``
  steps, ``K`` drawn per task (:func:`generation_tasks`). Non-finite runs rank last either way.
* The inner loop runs the model in eval mode: BatchNorm statistics of the pretrained backbone
  stay frozen, so nothing is written in place under ``vmap`` (see DESIGN, performance).
* ``phi`` holds one embedding row per layer, so a trained optimizer belongs to one layer layout
  (architecture); other layouts raise ``ValueError`` naming ``segments``.

What is here (a package; every name below imports from ``l2o_lib.l3rs``):

=============  ===============================================================================
``phi``        :class:`L3RSConfig`, :func:`init_phi`, :func:`unpack_phi`, :func:`feature_names`,
               :class:`Trained` (saved and loaded as kind ``"l3rs"`` by :mod:`~l2o_lib.artifacts`)
``transform``  :func:`policy`, :func:`combine`, :func:`l3rs` (the pure transform), :class:`L3RS`
               (the ``torch.optim`` optimizer)
``fitness``    :func:`population_losses`, :func:`population_run`, :func:`population_fitness`: NES
               fitness as one vmapped program, ours (mean training loss) or the paper's
               (:data:`FITNESSES`; :func:`eval_batch`), the tasks and run lengths of a generation
               (:func:`generation_tasks`, the paper's sampled K) and :func:`make_fitness` for NES
``compare``    :func:`baseline_factories`, :data:`PAPER_LRS`, :func:`tune_baselines`,
               :func:`best_baseline`, :func:`compare_methods`, :func:`speedup_records` (on training
               loss or test accuracy), :func:`share_ends` (Adam share, first vs last tenth)
``targets``    :func:`steps_by_level` (the steps to targets between a baseline's start and
               its final value, :func:`level_targets`) and :func:`metric_curve` (mean ± std of
               the evaluated loss or accuracy over runs)
=============  ===============================================================================

Fine-tuning tasks (:class:`~l2o_lib.finetuning.TaskFamily`): a backbone is pretrained on source
classes (:func:`~l2o_lib.finetuning.pretrain_backbone`, cached under ``data/l3rs/``), then
fine-tuned with a fresh head on ``k``-class subsets of held-out classes; meta-train and meta-test
tasks draw from disjoint class pools. They live in :mod:`l2o_lib.finetuning` (``TaskFamily``,
``pretrain_backbone`` and ``family_from_setup`` are re-exported here for notebooks 05 and 07); the
head-only baselines' :func:`~l2o_lib.optim.masked.head_only` lives in :mod:`l2o_lib.optim`.
"""

from ..finetuning import TaskFamily, family_from_setup, pretrain_backbone
from .compare import (PAPER_LRS, baseline_factories, best_baseline, compare_methods, share_ends, speedup_records,
                      tune_baselines)
from .fitness import (FITNESSES, eval_batch, generation_tasks, make_fitness, population_fitness, population_losses,
                      population_run, tuple_map)
from .phi import BASE_LABELS, BASES, L3RSConfig, Trained, feature_names, features_dim, init_phi, unpack_phi
from .targets import level_targets, metric_curve, steps_by_level
from .transform import L3RS, L3RSState, combine, l3rs, policy

__all__ = [
    "BASES", "BASE_LABELS", "feature_names", "L3RSConfig", "L3RSState", "init_phi", "unpack_phi", "policy", "combine", "l3rs", "L3RS",
    "features_dim", "population_losses", "population_run", "population_fitness", "FITNESSES", "eval_batch",
    "generation_tasks", "make_fitness", "tuple_map", "baseline_factories", "PAPER_LRS", "tune_baselines",
    "best_baseline", "compare_methods", "speedup_records", "share_ends", "Trained", "level_targets",
    "steps_by_level", "metric_curve",
    "pretrain_backbone", "TaskFamily", "family_from_setup",
]
