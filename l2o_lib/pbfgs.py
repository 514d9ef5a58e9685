"""P-BFGS and P⁺-BFGS: quasi-Newton training in a low-dimensional subspace (DLDR, Li et al.,
*Low dimensional trajectory hypothesis is true: DNNs can be trained in tiny subspaces*, §4).

With a :class:`~l2o_lib.subspace.Subspace` whose ``basis`` ``(d, D)`` has orthonormal rows (the
paper's ``P = basisᵀ``), one iteration on the mini-batch ``𝓑_k`` is (Algorithm 2):

1. project the gradient: ``g̃_k = basis g_k`` (``d`` numbers);
2. for ``k > 0``, with ``y = g̃_k - g̃_{k-1}`` and ``s = s̃_{k-1}`` (the previous subspace step),
   update the inverse-Hessian approximation (eq. 13, ``B_0 = I``)::

       B ← Vᵀ B V + ρ s sᵀ,   V = I - ρ y sᵀ,   ρ = 1 / (yᵀs)

   computed in the equivalent symmetric form
   ``B + ρ²(sᵀy + yᵀBy) s sᵀ - ρ (B y sᵀ + s yᵀB)`` (one matrix-vector product, two outer
   products, exactly symmetric) which satisfies the secant equation ``B y = s``;
3. the direction ``p = -B g̃_k`` and a backtracking (Armijo) line search on the *same* batch
   (eq. 14): the first ``α ∈ {1, β, β², …}`` with
   ``L(θ + α basisᵀp) ≤ L(θ) + c α g̃_kᵀp``;
4. ``s̃_k = α p`` and ``θ ← θ + basisᵀ s̃_k``.

P⁺-BFGS (§4.4) also moves along the gradient component outside the subspace,
``ĝ = g - basisᵀ basis g``, with heavy-ball momentum in torch SGD's form (``b_0 = ĝ_0``,
``b_k = γ b_{k-1} + ĝ_k``): ``θ ← θ + basisᵀ s̃_k - α_+ b_k``. The line search sees only the
subspace part, as in the paper; since ``b_k`` is orthogonal to the subspace,
``basis (θ_{k+1} - θ_k) = s̃_k`` still holds, so the BFGS pairs stay exact.

Design decisions (differences from the public reference code):

* **Scale-aware curvature test.** The update needs ``yᵀs > 0`` to keep ``B`` positive definite.
  The reference skips it only when ``yᵀs ≤ 1e-20``, an absolute threshold: whether a pair passes
  then depends on the units of the loss and of the parameters, and a pair whose ``yᵀs`` is
  rounding noise (``y`` and ``s`` nearly orthogonal, ``cos ∠(y, s) ~ 1e-12``) still passes as
  long as the vectors are large, making ``ρ`` huge and ``B`` ill-conditioned. We update only
  when ``yᵀs > min_curvature · ‖y‖ ‖s‖``, a bound on the *cosine* of the angle between ``y`` and
  ``s``, invariant to rescaling the loss or the coordinates.
* **Float64 algebra.** ``B``, ``g̃`` and ``s̃`` are kept in float64 (float32 on MPS, which has
  no float64): the ``d × d`` work is negligible next to a forward pass, and rounding in a
  long-lived ``B`` would otherwise erode its positive definiteness.
* **Failed line search → zero step.** If none of the ``max_backtracks`` trials satisfies
  Armijo, the subspace step is zero (``info["accepted"] = False``) instead of the smallest
  tried ``α``: with ``B`` positive definite ``p`` is a descent direction, so a failure after
  ``β^{max_backtracks}`` means the decrease is below the loss's rounding noise; a step of
  ``~β^{30}`` would then carry no information, and its ``s̃`` would pair with a noise ``y``.
  With ``s̃ = 0`` the next BFGS update is skipped (``yᵀs = 0``) and ``B`` is kept.
* **P⁺ really uses α_+.** The reference's momentum coefficient defaults to 0, so its shipped
  runs are plain P-BFGS; here ``plus=True`` applies ``gamma`` and ``alpha`` as given, and
  ``alpha = 0`` reproduces P-BFGS exactly (tested).
* **All in memory.** Trial points are ``θ + α basisᵀp`` evaluated through a ``loss_fn``; no
  model copies, no ``state_dict`` written to disk per trial (the reference does both). The
  cost of an iteration is one forward/backward pass plus one forward pass per trial.
* **Batched trials** (``candidates > 1``): ``K`` step sizes ``1, β, …, β^{K-1}`` are evaluated in
  one ``loss_many`` call (``vmap`` on a GPU); the first that satisfies Armijo wins, which is the
  step the sequential search would take. If none does, the search continues sequentially.

:func:`train_pbfgs` is the training loop (the functional, fast path); :class:`PBFGS` wraps the
method as a ``torch.optim.Optimizer`` driven by a closure, like ``torch.optim.LBFGS``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, NamedTuple

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from .config import check_int, check_nonnegative, check_probability
from .functional import Batch, FlatModel
from .subspace import Subspace
from .finite import check_on_nonfinite
from .optim.kernels import heavy_ball
from .training import History, Sampler, run_loop

__all__ = ["PBFGSState", "LineSearchTransform", "pbfgs", "bfgs_update", "line_search_step",
           "batched_train_loss", "train_pbfgs", "PBFGS"]

_HINT = ("lower alpha (the P⁺ learning rate) or use plain P-BFGS, and check the data and the loss function "
         "for NaN / inf")

LossFn = Callable[[Tensor], Tensor]
LossManyFn = Callable[[Tensor], Tensor]


class PBFGSState(NamedTuple):
    """State of P(⁺)-BFGS.

    Attributes:
        B: ``(d, d)`` inverse-Hessian approximation in subspace coordinates (starts at ``I``).
        prev_gz: ``(d,)`` the previous projected gradient ``g̃_{k-1}``.
        prev_s: ``(d,)`` the previous subspace step ``s̃_{k-1} = α p``.
        buf: ``(D,)`` momentum buffer of the P⁺ part (a 0-size tensor for plain P-BFGS).
    """

    B: Tensor
    prev_gz: Tensor
    prev_s: Tensor
    buf: Tensor


class LineSearchTransform(NamedTuple):
    """An optimizer whose update evaluates the loss: ``init(theta) -> state`` and
    ``update(grad, state, theta, step, loss_fn, loss0=None, *, loss_many=None) ->
    (delta, state, info)``. Unlike :class:`~l2o_lib.optim.Transform` it needs ``loss_fn``, the
    loss on the same mini-batch as ``grad``, so it has its own loop (:func:`train_pbfgs`)."""

    init: Callable[[Tensor], PBFGSState]
    update: Callable[..., tuple[Tensor, PBFGSState, dict]]


def _check_open_unit(name: str, value) -> float:
    # c and beta must lie strictly inside (0, 1): 0 or 1 makes Armijo or backtracking vacuous.
    check_probability(name, value)
    if value <= 0:
        raise ValueError(f"{name} must lie in (0, 1), got {value!r}")
    return float(value)


def _algebra_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; everywhere else the d×d algebra is cheap enough to do in float64.
    return torch.float32 if device.type == "mps" else torch.float64


def bfgs_update(B: Tensor, s: Tensor, y: Tensor) -> Tensor:
    """The BFGS inverse-Hessian update ``Vᵀ B V + ρ s sᵀ`` (``V = I - ρ y sᵀ``, ``ρ = 1/yᵀs``).

    Computed as ``B + ρ²(sᵀy + yᵀBy) s sᵀ - ρ (B y sᵀ + s yᵀB)``: no ``d × d`` matrix products,
    and the result is exactly symmetric when ``B`` is (each entry pair ``(i, j)``, ``(j, i)`` is
    built from the same products). It satisfies ``B_new y = s`` and stays positive definite
    when ``B`` is and ``yᵀs > 0``; callers check the curvature first.
    """
    ys = torch.dot(y, s)
    rho = 1.0 / ys
    By = B @ y  # B symmetric, so this is also (yᵀB)ᵀ
    coef = (ys + torch.dot(y, By)) * rho * rho
    new = B + coef * torch.outer(s, s) - rho * (torch.outer(By, s) + torch.outer(s, By))
    # Exact symmetry for a symmetric B; this guards against a B loaded with asymmetric rounding.
    return 0.5 * (new + new.mT)


def _check_vector(name: str, v: Tensor, basis: Tensor) -> None:
    # theta and grad must live in the subspace's ambient space, with its dtype and device.
    D = basis.shape[1]
    if not isinstance(v, Tensor) or v.shape != (D,):
        shape = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
        raise ValueError(f"{name} must have shape ({D},) for this subspace, got {shape}")
    if v.dtype != basis.dtype or v.device != basis.device:
        raise ValueError(f"{name} is {v.dtype} on {v.device} but the subspace basis is {basis.dtype} "
                         f"on {basis.device}; use subspace.to(device, dtype)")


def _check_update_args(grad: Tensor, theta: Tensor, step: int, loss_fn, loss_many, basis: Tensor) -> None:
    # Everything update() is given, checked before any work.
    _check_vector("grad", grad, basis)
    _check_vector("theta", theta, basis)
    check_int("step", step, minimum=0)
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be callable, got {loss_fn!r}")
    if loss_many is not None and not callable(loss_many):
        raise ValueError(f"loss_many must be callable or None, got {loss_many!r}")


def _line_search(theta: Tensor, direction: Tensor, slope: float, loss0: float, loss_fn: LossFn,
                 loss_many: LossManyFn | None, *, c: float, beta: float, max_backtracks: int,
                 candidates: int) -> tuple[float, int]:
    """First ``β^j`` satisfying Armijo and the number of evaluations; ``0.0`` if none does."""
    evals, j = 0, 0
    if candidates > 1 and loss_many is not None:
        k = min(candidates, max_backtracks)
        alphas = [beta ** i for i in range(k)]
        scale = torch.tensor(alphas, dtype=theta.dtype, device=theta.device)
        trials = theta + scale[:, None] * direction
        losses = loss_many(trials).tolist()  # one host sync for K trials
        evals += k
        for a, value in zip(alphas, losses):
            if value <= loss0 + c * a * slope:  # NaN compares False: backtrack
                return a, evals
        j = k
    for i in range(j, max_backtracks):
        a = beta ** i
        # The same expression as the returned delta, so the accepted point is what was tested.
        value = float(loss_fn(theta + a * direction))
        evals += 1
        if value <= loss0 + c * a * slope:
            return a, evals
    return 0.0, evals


def _curvature_update(B: Tensor, gz: Tensor, prev_gz: Tensor, prev_s: Tensor, step: int,
                      min_curvature: float) -> tuple[Tensor, bool]:
    """``(B, skipped)``: the BFGS update with the pair ``(s̃_{k-1}, g̃_k - g̃_{k-1})`` when it passes the
    scale-aware curvature test (module docstring); the first step has no pair and keeps ``B``."""
    if step == 0:
        return B, False
    y, s = gz - prev_gz, prev_s
    bound = min_curvature * torch.linalg.vector_norm(y) * torch.linalg.vector_norm(s)
    # One host sync: the branch decides whether B changes. s = 0 (first step after a failed
    # search) or y = 0 give 0 > 0, a skip.
    if bool(torch.dot(y, s) > bound):
        return bfgs_update(B, s, y), False
    return B, True


def _descent_direction(B: Tensor, gz: Tensor) -> tuple[Tensor, Tensor, float, bool, bool]:
    """``(B, p, slope, flat, reset)``: ``p = -B g̃`` with ``slope = g̃ᵀp``; ``flat`` when ``g̃ = 0``;
    ``B`` reset to ``I`` (``reset``) when ``p`` is not a descent direction."""
    p = -(B @ gz)
    slope, gg = torch.stack([torch.dot(gz, p), torch.dot(gz, gz)]).tolist()  # one host sync
    flat = gg == 0  # g̃ = 0: nothing to gain in the subspace
    if not flat and not slope < 0:
        # Not a descent direction (B lost definiteness to rounding, or NaN): restart from
        # steepest descent, B = I, rather than search uphill.
        eye = torch.eye(B.shape[0], dtype=B.dtype, device=B.device)
        return eye, -gz, -gg, flat, True
    return B, p, slope, flat, False


def pbfgs(subspace: Subspace, *, c: float = 0.4, beta: float = 0.55, max_backtracks: int = 30,
          min_curvature: float = 1e-10, plus: bool = False, gamma: float = 0.9, alpha: float = 0.01,
          candidates: int = 1) -> LineSearchTransform:
    """P-BFGS (or P⁺-BFGS with ``plus=True``) in ``subspace`` (see the module docstring).

    Args:
        subspace: the directions; its ``basis`` must have the dtype and device of the parameters
            (use ``subspace.to(...)``). Its origin is not used: the iterates move from wherever
            ``theta`` starts (the paper starts from the initial weights).
        c: Armijo constant in ``(0, 1)`` (paper: 0.4).
        beta: backtracking factor in ``(0, 1)`` (paper: 0.55).
        max_backtracks: trial step sizes at most (``1, β, …, β^{max_backtracks-1}``).
        min_curvature: the BFGS update is skipped unless ``yᵀs > min_curvature ‖y‖ ‖s‖``.
        plus: P⁺-BFGS: also take a momentum step along the out-of-subspace gradient.
        gamma: momentum of the P⁺ part, in ``[0, 1)`` (paper: 0.9).
        alpha: learning rate of the P⁺ part, ``>= 0`` (paper: 0.01).
        candidates: trial step sizes evaluated per batched ``loss_many`` call (GPU option);
            1 = the sequential search.

    Returns:
        a :class:`LineSearchTransform`. ``update(grad, state, theta, step, loss_fn, loss0=None,
        *, loss_many=None)`` takes ``loss_fn(theta) -> 0-d tensor``, the loss on the batch that
        produced ``grad`` (called under ``torch.no_grad()``), ``loss0``, the loss at ``theta`` if
        known, and optionally ``loss_many(thetas (K, D)) -> (K,)``. ``info`` holds ``alpha`` (the
        accepted step size, 0.0 after a failed search), ``evals`` (loss evaluations, each row of
        a batched call counted), ``skipped`` (the BFGS update was skipped at this step),
        ``accepted`` (the line search succeeded) and ``reset`` (``B`` was reset to ``I`` because
        ``p`` was not a descent direction; a numerical safeguard that float64 keeps dormant).
    """
    if not isinstance(subspace, Subspace):
        raise ValueError(f"subspace must be a Subspace, got {type(subspace).__name__}")
    search = partial(_line_search, c=_check_open_unit("c", c), beta=_check_open_unit("beta", beta),
                     max_backtracks=check_int("max_backtracks", max_backtracks),
                     candidates=check_int("candidates", candidates))
    min_curvature = float(check_nonnegative("min_curvature", min_curvature))
    gamma = float(check_probability("gamma", gamma))
    alpha = float(check_nonnegative("alpha", alpha))
    plus = bool(plus)
    basis = subspace.basis
    d = basis.shape[0]

    def init(theta: Tensor) -> PBFGSState:
        _check_vector("theta", theta, basis)
        work = _algebra_dtype(theta.device)
        zeros = torch.zeros(d, dtype=work, device=theta.device)
        buf = torch.zeros_like(theta) if plus else theta.new_zeros(0)
        return PBFGSState(torch.eye(d, dtype=work, device=theta.device), zeros, zeros.clone(), buf)

    def update(grad: Tensor, state: PBFGSState, theta: Tensor, step: int, loss_fn: LossFn,
               loss0: Tensor | float | None = None, *, loss_many: LossManyFn | None = None):
        _check_update_args(grad, theta, step, loss_fn, loss_many, basis)
        work = _algebra_dtype(theta.device)
        # torch.optim's load_state_dict casts state to the parameters' dtype; restore the work dtype.
        B, prev_gz, prev_s = (t.to(work) for t in (state.B, state.prev_gz, state.prev_s))
        with torch.no_grad():
            gz_native = basis @ grad
            gz = gz_native.to(work)
            B, skipped = _curvature_update(B, gz, prev_gz, prev_s, step, min_curvature)
            B, p, slope, flat, reset = _descent_direction(B, gz)
            evals, step_size, direction = 0, 0.0, torch.zeros_like(theta)  # g̃ = 0 (or NaN): no subspace step
            if not flat and slope < 0:
                if loss0 is None:
                    loss0, evals = loss_fn(theta), 1
                direction = p.to(theta.dtype) @ basis
                step_size, n = search(theta, direction, slope, float(loss0), loss_fn, loss_many)
                evals += n
            delta, buf = step_size * direction, state.buf
            if plus:
                # The out-of-subspace gradient, heavy-ball in torch SGD's form (b_0 = ĝ_0).
                buf = heavy_ball(buf, grad - gz_native @ basis, gamma, first=step == 0)
                delta = delta + (-alpha) * buf
        info = {"alpha": step_size, "evals": evals, "skipped": skipped, "accepted": step_size > 0 or flat,
                "reset": reset}
        return delta, PBFGSState(B, gz, step_size * p, buf), info

    return LineSearchTransform(init, update)


def batched_train_loss(model: FlatModel, thetas: Tensor, batch: Batch, buffers: dict[str, Tensor]) -> Tensor:
    """Train-mode losses of every row of ``thetas`` ``(K, D)`` on ``batch``, in one ``vmap`` call.

    :meth:`FlatModel.batched_loss` runs in eval mode (running statistics), which would not be
    comparable with a train-mode ``loss0``. Here BatchNorm uses batch statistics as in
    ``model.loss(..., train=True)``; each row gets its own throwaway copy of ``buffers`` (vmap
    cannot write one shared buffer from K rows), so ``buffers`` itself is not modified.
    """
    model.check_theta(thetas, batched=True)
    x, y = batch
    k = thetas.shape[0]
    stacked = {n: b.unsqueeze(0).expand(k, *b.shape).clone() for n, b in buffers.items()}

    def one(theta: Tensor, bufs: dict[str, Tensor]) -> Tensor:
        out = functional_call(model.module, {**model.unflatten(theta), **bufs}, (x,), strict=False)
        return model.loss_fn(out, y)

    was = model.module.training
    model.module.train(True)
    try:
        return vmap(one)(thetas, stacked)
    finally:
        model.module.train(was)


def line_search_step(model: FlatModel, method: LineSearchTransform, theta: Tensor, state: PBFGSState,
                     step: int, batch: Batch, buffers: dict[str, Tensor],
                     scratch: dict[str, Tensor] | None = None) -> tuple[Tensor, PBFGSState, Tensor, dict]:
    """One iteration of :func:`train_pbfgs`: gradient and loss on ``batch``, then the update.

    ``buffers`` (BatchNorm statistics) are updated once, by the gradient pass, as in
    :func:`~l2o_lib.training.train_flat`. The line-search trials run in train mode too (batch
    statistics, comparable with ``loss0``) but write their running statistics into ``scratch``,
    a throwaway copy: train-mode outputs do not read the running statistics, so one copy made
    per run suffices and its contents are never used (``None``: a copy is made here).

    Returns ``(theta + delta, state, loss0, info)``.
    """
    if scratch is None:
        scratch = {n: b.clone() for n, b in buffers.items()}
    loss0, grad = model.loss_and_grad(theta, batch, buffers)

    def loss_fn(th: Tensor) -> Tensor:
        return model.loss(th, batch, scratch, train=True)

    def loss_many(thetas: Tensor) -> Tensor:
        return batched_train_loss(model, thetas, batch, scratch)

    delta, state, info = method.update(grad, state, theta, step, loss_fn, loss0, loss_many=loss_many)
    return theta + delta, state, loss0, info


def train_pbfgs(model: FlatModel, method: LineSearchTransform, sampler: Sampler, *, steps: int,
                theta: Tensor | None = None, buffers: dict[str, Tensor] | None = None,
                eval_data: tuple[Tensor, Tensor] | None = None, eval_every: int = 100,
                desc: str | None = None, on_step: Callable[[int, Tensor], None] | None = None,
                on_nonfinite: str = "raise") -> History:
    """Train with P(⁺)-BFGS; the counterpart of :func:`~l2o_lib.training.train_flat`.

    Each step draws a batch, computes ``(loss, grad)`` with ``model.loss_and_grad`` and lets
    ``method`` search along its direction on that batch (see :func:`line_search_step` for the
    BatchNorm handling). Arguments are those of ``train_flat``; for the paper's setting pass
    ``theta`` = the initial weights (the first DLDR checkpoint). A non-finite loss makes the line
    search take no subspace step, but the P⁺ momentum part can still carry NaN into the weights:
    such a run raises :class:`~l2o_lib.finite.NonFiniteError` (or, with ``on_nonfinite="record"``,
    returns with ``extra["nonfinite_step"]``).

    Returns a :class:`~l2o_lib.training.History` whose ``extra`` holds ``alphas`` and
    ``line_search_evals`` (lists, one entry per step), ``skipped_updates`` and
    ``failed_line_searches`` (counts). Unlike ``train_flat`` each step synchronises with the
    host (the line search branches on loss values).
    """
    check_int("steps", steps)
    check_int("eval_every", eval_every)
    check_on_nonfinite(on_nonfinite)
    if not isinstance(method, LineSearchTransform):
        raise ValueError(f"method must be a LineSearchTransform (from pbfgs()), got {type(method).__name__}")
    theta = model.flatten() if theta is None else theta.detach().clone()
    model.check_theta(theta)
    buffers = model.init_buffers() if buffers is None else buffers
    scratch = {n: b.clone() for n, b in buffers.items()}
    box = {"state": method.init(theta)}
    alphas: list[float] = []
    counts: list[int] = []
    tally = {"skipped": 0, "failed": 0}

    def step_fn(theta: Tensor, step: int, batch: Batch) -> tuple[Tensor, Tensor]:
        theta, box["state"], loss, info = line_search_step(model, method, theta, box["state"], step, batch,
                                                           buffers, scratch)
        alphas.append(info["alpha"])
        counts.append(info["evals"])
        tally["skipped"] += info["skipped"]
        tally["failed"] += not info["accepted"]
        return theta, loss

    history = run_loop(model, step_fn, sampler, steps=steps, theta=theta, buffers=buffers, eval_data=eval_data,
                       eval_every=eval_every, desc=desc, on_step=on_step, on_nonfinite=on_nonfinite,
                       what="P-BFGS training", hint=_HINT)
    history.extra.update(alphas=alphas, line_search_evals=counts, skipped_updates=tally["skipped"],
                         failed_line_searches=tally["failed"])
    return history


class PBFGS(torch.optim.Optimizer):
    """P(⁺)-BFGS as a ``torch.optim.Optimizer`` (one parameter group), used like ``LBFGS``::

        opt = PBFGS(model.parameters(), subspace, plus=True)
        def closure():
            opt.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            return loss
        opt.step(closure)

    ``step`` calls the closure once for the gradient, then once per line-search trial with the
    trial point written into the parameters; it ends with the parameters at the accepted point
    and their ``.grad`` restored to the gradient the step used. It returns the first closure's
    loss. The trials run the closure's backward pass too, which the functional path
    (:func:`train_pbfgs`, forward-only trials) avoids: prefer that one when speed matters.
    Trials also go through the module as the closure leaves it (BatchNorm in train mode updates
    its running statistics at every trial), another difference from :func:`train_pbfgs`.

    Args:
        params: the parameters (a single group); their concatenation has ``subspace.ambient_dim``
            entries, in order.
        subspace: the directions, on the parameters' device and dtype.
        **kwargs: the options of :func:`pbfgs` (``c``, ``beta``, ``plus``, ``gamma``, ``alpha`` …).

    The state (``B``, ``prev_gz``, ``prev_s``, ``buf``, ``step``) lives in ``self.state`` under the
    first parameter, so ``state_dict()`` / ``load_state_dict()`` work as usual. ``last_info`` is
    the ``info`` dict of the latest step (``alpha``, ``evals`` …).
    """

    def __init__(self, params, subspace: Subspace, **kwargs):
        if not isinstance(subspace, Subspace):
            raise ValueError(f"subspace must be a Subspace, got {type(subspace).__name__}")
        defaults = dict(c=0.4, beta=0.55, max_backtracks=30, min_curvature=1e-10, plus=False, gamma=0.9,
                        alpha=0.01)
        unknown = set(kwargs) - set(defaults)
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)} for PBFGS; allowed: {sorted(defaults)} "
                             "(candidates is not supported here: trials go through the closure)")
        defaults.update(kwargs)
        pbfgs(subspace, **defaults)  # validate before any step
        self._option_names = tuple(defaults)  # torch adds keys of its own to self.defaults
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("PBFGS supports a single parameter group")
        numel = sum(p.numel() for p in self.param_groups[0]["params"])
        if numel != subspace.ambient_dim:
            raise ValueError(f"subspace lives in D={subspace.ambient_dim} but the parameters have {numel} entries")
        self.subspace = subspace

    def _params(self) -> list[Tensor]:
        return self.param_groups[0]["params"]

    def _write(self, theta: Tensor) -> None:
        params = self._params()
        torch._foreach_copy_(params, [t.view_as(p) for t, p in zip(theta.split([p.numel() for p in params]), params)])

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:
        """One P(⁺)-BFGS iteration; ``closure`` zeroes the gradients, computes the loss, calls
        ``backward`` and returns the loss (required)."""
        if closure is None or not callable(closure):
            raise ValueError("PBFGS.step needs a closure that re-evaluates the loss and calls backward()")
        group = self.param_groups[0]
        params = self._params()
        # Rebuilt from the group at every step (a closure, no work), so hand edits of
        # group["alpha"] etc. take effect as with any torch optimizer.
        method = pbfgs(self.subspace, **{k: group[k] for k in self._option_names})
        with torch.enable_grad():
            loss = closure()
        theta = torch.cat([p.detach().reshape(-1) for p in params])  # a copy: trials overwrite params
        grad = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
        slot = self.state[params[0]]
        if not slot:
            slot.update(step=0, **method.init(theta)._asdict())
        state = PBFGSState(*(slot[k] for k in PBFGSState._fields))

        def loss_fn(trial: Tensor) -> Tensor:
            self._write(trial)
            with torch.enable_grad():
                value = closure()
            return value.detach()

        had_grad = [p.grad is not None for p in params]
        delta, state, info = method.update(grad, state, theta, slot["step"], loss_fn, loss.detach())
        self._write(theta + delta)
        # The trials' backward passes overwrote .grad; leave the gradient this step used.
        for g, p, had in zip(grad.split([p.numel() for p in params]), params, had_grad):
            if not had:
                p.grad = None
            elif p.grad is None:
                p.grad = g.view_as(p).clone()
            else:
                p.grad.copy_(g.view_as(p))
        slot.update(step=slot["step"] + 1, **state._asdict())
        self.last_info = info
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """As ``torch.optim``'s, but ``B``, ``prev_gz`` and ``prev_s`` keep their (float64) dtype:
        the base class casts every floating state tensor to the parameters' dtype."""
        super().load_state_dict(state_dict)
        saved = state_dict["state"].get(0)
        if saved:
            slot = self.state[self._params()[0]]
            device = self._params()[0].device
            for key in ("B", "prev_gz", "prev_s"):
                slot[key] = saved[key].to(device=device, copy=True)
