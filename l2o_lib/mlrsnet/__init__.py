"""MLR-SNet (Shu et al., TPAMI 2022): an LSTM that maps the training loss to a learning rate.

The schedule network (paper Eq. 8, hidden size ``d' = 50``)::

    a_t = relu(W1a · f_t + b1a)            # the mini-batch training loss, pre-processed
    b_t = relu(W1b · h_{t-1} + b1b)        # the previous hidden state, pre-processed
    (I, F, O, G) = W2 · [a_t; b_t] + b2    # W2 is 4d' x 2d', as in the paper
    c_t = σ(F) ⊙ c_{t-1} + σ(I) ⊙ tanh(G)
    h_t = σ(O) ⊙ tanh(c_t)
    α_t = γ · σ(W3 · h_t + b3)             # the learning rate, in [0, γ]

with ``γ = √f0 · log(f0·C) / (4·C^¼)`` (:func:`gamma_bound`; ``f0`` the initial training loss,
``C`` the number of classes). The same cell serves meta-training and meta-testing (the public
code swaps in a different cell at meta-test time).

Meta-training (paper Algorithm 1) is online: SGD with momentum trains the model with the LR the
network predicts, and every ``t_val`` steps a one-step look-ahead
``θ' = θ − α(φ)·d_t`` (``d_t`` the momentum-SGD direction of the current batch) is scored on a
validation batch; Adam (1e-3, weight decay 1e-4) descends ``∇_φ L_val(θ')``. The direction does
not depend on ``φ``, so the meta-gradient is exact and first-order:
``∇_φ L_val = −(∇L_val(θ') · d_t) · ∂α/∂φ`` (one extra forward/backward on the validation
batch per meta-step; no Hessian-vector product). The LSTM state is truncated (detached) at
every step, as in the paper. Meta-testing (Algorithm 2) replays snapshots of ``φ`` taken at
``T/3, 2T/3, T`` and switches between them at the thirds of the new run.

What is here (a package; every name below imports from ``l2o_lib.mlrsnet``):

=================  ===========================================================================
``network``        :func:`gamma_bound` (with the guards the reference lacks), :func:`initial_loss`
                   (``f0``), the functional core :func:`mlrsnet_lr` ``(params, loss, carry, gamma)
                   -> (lr, carry)`` over tensors with any leading batch shape, and :class:`MLRSNet`,
                   the module holding ``φ``
``meta_training``  :func:`lookahead_meta_loss` and :func:`meta_train` (checkpoints and resume through
                   :class:`~l2o_lib.results.Run`, NaN/explosion rollback through
                   :class:`~l2o_lib.meta.DivergenceGuard`); :func:`split_validation` (from :mod:`l2o_lib.tasks`)
``schedule``       :class:`TrainedSchedule` (the snapshots, saved and loaded as kind ``"mlrsnet"`` by
                   :mod:`~l2o_lib.artifacts`), :class:`MLRSNetScheduler`, which drives any
                   ``torch.optim`` optimizer, and :func:`mlrsnet_rule`, the meta-test of many runs at
                   once for :func:`~l2o_lib.population.train_population`
``compare``        the comparison protocol: :func:`hand_schedule` (the paper's Eq. 4 scaled to a
                   run), :func:`baseline_configs` (each baseline over a small grid) and
                   :func:`compare_schedules` (all of them and the transferred schedule, over seeds,
                   as one population, tuned on a validation split; several learned schedules
                   at once, each on the optimizer it was meta-trained for), :func:`paper_baseline_configs`
                   (the paper's untuned plain-SGD baselines) and :func:`paired_gap`
``control``        the piecewise-constant control (issue 18): :func:`piece_means` (a run's mean LR
                   in each third), :func:`control_config` (those constants replayed as a hand
                   schedule) and :func:`compare_controls` (the controls of several schedules on a task)
=================  ===========================================================================

The hypergradient-descent baseline lives in :mod:`l2o_lib.optim.hypergradient`, the input
corruptions of the transfer tasks in :mod:`l2o_lib.corruptions` (:func:`corrupt` is re-exported
here for notebook 04).

Known differences from the public code, on purpose: one LSTM cell for meta-train and meta-test;
γ guarded (see :func:`gamma_bound`) and kept from ``f0`` for the whole meta-test run (the public
meta-test recomputes it from the current loss at each snapshot switch); the inner optimizer defaults
to SGD with momentum (the public default and the paper's protocol are momentum 0; notebook 04 runs
both); the meta-gradient is taken without ``create_graph`` through the training gradient (the terms
it would add are zero). L4 and RTHO baselines are not implemented.
"""

from ..corruptions import corrupt
from .compare import (HAND_DESIGNED, Comparison, MethodConfig, baseline_configs, compare_schedules, hand_schedule,
                      paired_gap, paper_baseline_configs)
from .control import compare_controls, control_config, piece_means, piecewise_schedule
from ..tasks import split_validation
from .meta_training import MetaTrainResult, lookahead_meta_loss, meta_train
from .network import LRCarry, MLRSNet, gamma_bound, initial_loss, mlrsnet_lr, mlrsnet_lr_reference
from .schedule import MLRSNetScheduler, TrainedSchedule, mlrsnet_rule, snapshot_index, snapshot_steps

__all__ = [
    "LRCarry", "gamma_bound", "mlrsnet_lr", "mlrsnet_lr_reference", "MLRSNet", "initial_loss",
    "lookahead_meta_loss", "MetaTrainResult", "meta_train", "snapshot_steps", "snapshot_index",
    "TrainedSchedule", "MLRSNetScheduler", "mlrsnet_rule", "corrupt", "split_validation",
    "MethodConfig", "HAND_DESIGNED", "hand_schedule", "baseline_configs", "Comparison", "compare_schedules",
    "paper_baseline_configs", "paired_gap", "piece_means", "piecewise_schedule", "control_config",
    "compare_controls",
]
