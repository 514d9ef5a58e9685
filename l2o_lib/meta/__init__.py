"""Machinery shared by the meta-trainers: divergence guard, meta-checkpoints and NES.

* :mod:`~l2o_lib.meta.guard`: :class:`DivergenceGuard` keeps the last good meta-parameters and
  meta-optimizer state, refuses and rolls back a non-finite or exploding meta-step;
* :mod:`~l2o_lib.meta.checkpoint`: one checkpoint / resume scheme for every meta-trainer
  (:func:`resume_meta` before the loop, :func:`save_meta` at each checkpoint, over
  :func:`meta_state` / :func:`load_meta_state`);
* :mod:`~l2o_lib.meta.nes`: antithetic NES with centred-rank shaping (:func:`nes_train`), L3RS's
  meta-trainer.

The method modules (:mod:`~l2o_lib.sl2o`, :mod:`~l2o_lib.mlrsnet`, :mod:`~l2o_lib.l3rs`) build
their loops on these pieces.
"""

from .checkpoint import check_meta_kind, check_not_past, load_meta_state, meta_state, resume_meta, save_meta
from .guard import DivergenceGuard, GuardEvent
from .nes import (
    NESResult,
    antithetic_noise,
    centered_ranks,
    nes_estimate,
    nes_gradient,
    nes_members,
    nes_train,
)

__all__ = ["GuardEvent", "DivergenceGuard", "meta_state", "load_meta_state", "check_meta_kind", "check_not_past",
           "resume_meta", "save_meta", "centered_ranks", "antithetic_noise", "nes_members", "nes_gradient",
           "nes_estimate", "NESResult", "nes_train"]
