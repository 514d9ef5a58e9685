"""The optimizer contract, checked the same way for every transform (the ``optim_db`` pattern of
torch's own optimizer tests): one table, :data:`CASES`, holds every baseline of
:data:`~l2o_lib.optim.OPTIMIZERS`, schedules as ``lr``, hypergradient SGD, the masked head-only
update and the learned / compound transforms (RNNprop through the module and fused, SL2O,
``dagger``, ``lora_dagger``, L3RS, P-BFGS), and each property is its own parametrised test:

1. a few updates give finite deltas shaped like ``theta`` (float32 and float64), and the state
   keeps its structure (same NamedTuple types, tensor shapes and dtypes);
2. ``update`` modifies none of its inputs (gradient, state, parameters);
3. the ``torch.optim`` adapter moves a module's parameters exactly as the functional path moves ``theta``;
4. the adapter's ``state_dict`` round trip: a fresh optimizer over a copy of the model resumes exactly;
5. ``(K, D)`` batched use equals a loop over the rows, through ``torch.func.vmap`` over ``update``
   and, for the transforms that take ``(K, D)`` as they are (how :mod:`l2o_lib.population` uses
   them), directly. Entries without one of these carry the reason in the table and are skipped with it.

Three contracts meet here, told apart by ``Case.kind``: a plain ``Transform``; L3RS, whose
``update`` also takes ``loss=``; and P-BFGS, a :class:`~l2o_lib.pbfgs.LineSearchTransform` that
needs ``loss_fn`` (the loss on the gradient's batch, for its line search) and returns an ``info``
dict. :func:`call` gives the three one signature. P-BFGS's adapter is :class:`~l2o_lib.pbfgs.PBFGS`,
driven by a closure like ``LBFGS``; the tests drive every adapter through a closure.
"""

from __future__ import annotations

import copy
import functools
import io
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from l2o_lib.functional import FlatModel
from l2o_lib.l3rs import BASES, L3RS, L3RSConfig, init_phi, l3rs
from l2o_lib.lora import lora_dagger, lora_space
from l2o_lib.optim import (OPTIMIZERS, FlatOptimizer, adamw, cosine, get_optimizer, head_only,
                           hypergradient_sgd, momentum)
from l2o_lib.pbfgs import PBFGS, pbfgs
from l2o_lib.rnnprop import LSTMRule, rnnprop
from l2o_lib.sl2o import SL2O, sl2o
from l2o_lib.subspace import dagger, random_subspace

pytestmark = pytest.mark.usefixtures("one_thread")

F32, F64 = torch.float32, torch.float64
IN, HIDDEN, OUT = 5, 4, 2  # the model: Linear(5, 4) -> tanh -> Linear(4, 2), D = 34 in 4 tensors
STEPS = 4                  # updates per check
K = 3                      # rows of the batched checks
TOTAL = 6                  # run length told to schedules and L3RS


# ----------------------------------------------------------------------------- the problem
@dataclass(frozen=True)
class Env:
    """Everything a case is built from, for one dtype."""

    dtype: torch.dtype
    module: nn.Module        # template model; never modified (the adapters train deep copies)
    names: tuple
    shapes: tuple
    segments: tuple
    theta0: Tensor           # the module's parameters, flat
    head: Tensor             # mask of the last Linear (the "head")
    subspace: Any            # a random 6-dim subspace through theta0
    lora: Any                # LoRA (rank 2) on both Linear weights, origin theta0
    rule: LSTMRule
    config: L3RSConfig
    phi: Tensor


@functools.cache
def env(dtype: torch.dtype) -> Env:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        module = nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, OUT)).to(dtype)
    flat = FlatModel(module, F.mse_loss)
    theta0 = flat.flatten()
    segments = tuple(flat.segments())
    head = torch.zeros_like(theta0)
    head[sum(segments[:2]):] = 1
    config = L3RSConfig(n_layers=len(segments), bases=BASES, base_lr=1e-2)
    phi = init_phi(config, seed=3) + 0.1 * torch.randn(config.dim, generator=torch.Generator().manual_seed(1))
    return Env(dtype, module, tuple(flat.names), tuple(tuple(s) for s in flat.shapes), segments, theta0, head,
               random_subspace(theta0.numel(), 6, origin=theta0, seed=1).to(dtype=dtype),
               lora_space(flat, rank=2, targets=("0", "2")),
               LSTMRule(hidden=4, scale=0.1, seed=0).to(dtype), config, phi.to(dtype))


def quadratic(e: Env, seed: int) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """``(loss_fn, grad_fn)`` of a random convex quadratic ``½ (θ - b)ᵀ A (θ - b)``."""
    g = torch.Generator().manual_seed(seed)
    d = e.theta0.numel()
    m = torch.randn(d, d, generator=g, dtype=F64) / d ** 0.5
    a = (m @ m.T + 0.1 * torch.eye(d, dtype=F64)).to(e.dtype)
    b = torch.randn(d, generator=g, dtype=F64).to(e.dtype)
    return (lambda th: 0.5 * (th - b) @ (a @ (th - b))), (lambda th: a @ (th - b))


def batches(e: Env) -> list[tuple[Tensor, Tensor]]:
    """A small linear-regression data set, one mini-batch per step."""
    g = torch.Generator().manual_seed(5)
    w = torch.randn(IN, OUT, generator=g, dtype=F64)
    out = []
    for _ in range(STEPS + 1):
        x = torch.randn(8, IN, generator=g, dtype=F64)
        out.append((x.to(e.dtype), (x @ w + 0.1 * torch.randn(8, OUT, generator=g, dtype=F64)).to(e.dtype)))
    return out


def model_loss(e: Env, batch: tuple[Tensor, Tensor], theta: Tensor) -> Tensor:
    """The module's loss at flat parameters ``theta`` (the functional path)."""
    params = {n: t.view(s) for n, t, s in zip(e.names, theta.split(list(e.segments)), e.shapes)}
    x, y = batch
    return F.mse_loss(functional_call(e.module, params, (x,)), y)


def flat_params(module: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def closure_for(module: nn.Module, opt: torch.optim.Optimizer, batch) -> Callable[[], Tensor]:
    x, y = batch

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.mse_loss(module(x), y)
        loss.backward()
        return loss

    return closure


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Case:
    """One entry: the functional transform, its adapter and what it supports.

    Attributes:
        transform: ``env -> Transform`` (or ``LineSearchTransform`` for kind ``"line_search"``).
        optimizer: ``(env, params) -> torch.optim.Optimizer``, the adapter over the same rule.
        kind: ``"transform"``; ``"loss"`` (``update(..., loss=)``); ``"line_search"`` (P-BFGS).
        origin_start: every run must start at ``env.theta0`` (``lora_dagger.init`` checks it).
        vmap: ``True``, or why ``vmap`` over ``update`` does not apply.
        native: ``True`` when ``update`` takes ``(K, D)`` as it is, else why not.
        round_trip: ``True``, or a known bug that makes the ``state_dict`` round trip fail
            (a strict xfail: the test reports when the bug is fixed).
        saves: ``True``, or why ``torch.save(opt.state_dict())`` / ``torch.load(weights_only=True)``
            fails (a strict xfail too).
    """

    transform: Callable[[Env], Any]
    optimizer: Callable[[Env, list], torch.optim.Optimizer]
    kind: str = "transform"
    origin_start: bool = False
    vmap: bool | str = True
    native: bool | str = True
    round_trip: bool | str = True
    saves: bool | str = True


NO_LSTM_VMAP = ("nn.LSTMCell (aten::lstm_cell) has no vmap batching rule; LSTMRule batches natively instead "
                "(K·D coordinates as rows, checked by the (K, D) test), and the fused path vmaps")


def baseline(name: str, native: bool | str = True, saves: bool | str = True, **hparams) -> Case:
    """A registered optimizer; LAMB gets the model's tensor sizes as ``segments`` (the adapter
    passes its parameters' sizes itself)."""
    def transform(e: Env):
        return get_optimizer(name, **hparams, **({"segments": list(e.segments)} if name == "lamb" else {}))

    return Case(transform, lambda e, params: FlatOptimizer(params, name, **hparams), native=native, saves=saves)


def _l3rs_optimizer(e: Env, params: list) -> torch.optim.Optimizer:
    return L3RS(params, e.phi, e.config, total_steps=TOTAL)


TABLE: list[tuple[str, Case]] = [
    # every registered baseline, with weight decay where it has one (theta enters the update)
    ("sgd", baseline("sgd", lr=0.05, weight_decay=1e-2)),
    ("momentum", baseline("momentum", lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2)),
    ("nesterov", baseline("nesterov", lr=0.05, momentum=0.9, weight_decay=1e-2)),
    ("adam", baseline("adam", lr=1e-2, weight_decay=1e-2)),
    ("adamw", baseline("adamw", lr=1e-2, weight_decay=0.1)),
    ("rmsprop", baseline("rmsprop", lr=1e-2)),
    ("rmsprop-centered-momentum", baseline("rmsprop", lr=1e-2, momentum=0.5, centered=True, weight_decay=1e-2)),
    ("adamax", baseline("adamax", lr=1e-2, weight_decay=1e-2)),
    ("lion", baseline("lion", lr=1e-3, weight_decay=0.1)),
    ("lamb", baseline("lamb", native="per-tensor trust ratios need one flat (D,) vector: segments are checked "
                                      "against theta.numel(); batch it with vmap", lr=1e-2, weight_decay=1e-2)),
    # schedules as lr
    ("momentum-cosine", baseline("momentum", lr=cosine(0.1, total_steps=TOTAL, warmup=1), momentum=0.9)),
    ("adam-cosine", baseline("adam", lr=cosine(1e-2, total_steps=TOTAL, min_lr=1e-3))),
    # hypergradient SGD: its LR lives in the state, (K, 1) for (K, D) parameters
    ("hypergradient_sgd", Case(
        lambda e: hypergradient_sgd(0.05, 1e-3, momentum=0.9, weight_decay=1e-3),
        lambda e, params: FlatOptimizer(params, hypergradient_sgd, lr=0.05, hyper_lr=1e-3, momentum=0.9,
                                        weight_decay=1e-3))),
    # masked update: AdamW on the head only (weight decay would move the frozen entries if the mask leaked)
    ("head_only-adamw", Case(
        lambda e: head_only(adamw(1e-2, weight_decay=0.1), e.head),
        lambda e, params: FlatOptimizer(params, lambda lr=1e-2: head_only(adamw(lr, weight_decay=0.1), e.head)))),
    # learned and compound
    ("rnnprop", Case(lambda e: rnnprop(e.rule), lambda e, params: SL2O(params, e.rule),  # SL2O without subspace = L2O
                     vmap=NO_LSTM_VMAP)),
    ("rnnprop-fused", Case(
        lambda e: rnnprop(e.rule, fused=True, compile="never"),
        lambda e, params: FlatOptimizer(params, lambda: rnnprop(e.rule, fused=True, compile="never")))),
    ("sl2o", Case(lambda e: sl2o(e.rule, e.subspace), lambda e, params: SL2O(params, e.rule, e.subspace),
                  vmap=NO_LSTM_VMAP)),
    ("dagger-momentum", Case(
        lambda e: dagger(momentum(0.05), e.subspace),
        lambda e, params: FlatOptimizer(params, lambda lr=0.05: dagger(momentum(lr), e.subspace)))),
    ("lora_dagger-adamw", Case(
        lambda e: lora_dagger(adamw(1e-2), e.lora),
        lambda e, params: FlatOptimizer(params, lambda lr=1e-2: lora_dagger(adamw(lr), e.lora)),
        origin_start=True,
        native="LoRASpace.pullback takes one (D,) gradient (and init compares theta with the origin); "
               "batch it with vmap")),
    ("l3rs", Case(
        lambda e: l3rs(e.phi, e.config, total_steps=TOTAL, segments=list(e.segments)), _l3rs_optimizer, kind="loss",
        native="per-layer norms index_add over the (D,) layout; populations vmap it (l3rs.population_losses)")),
    ("pbfgs-plus", Case(
        lambda e: pbfgs(e.subspace, plus=True, alpha=0.01),
        lambda e, params: PBFGS(params, e.subspace, plus=True, alpha=0.01), kind="line_search",
        vmap="the Armijo line search branches on loss values on the host (bool(), float(), .tolist()), "
             "which vmap cannot trace",
        native="one run per call: theta, grad must be (D,) and the line search evaluates one loss_fn")),
]

CASES = [pytest.param(case, id=name) for name, case in TABLE]


def supported(attribute: str) -> list:
    """The table as params for a batched test; unsupported entries skip with their reason."""
    out = []
    for name, case in TABLE:
        why = getattr(case, attribute)
        marks = () if why is True else pytest.mark.skip(reason=f"{name}: {why}")
        out.append(pytest.param(case, id=name, marks=marks))
    return out


def known_bugs(*attributes: str) -> list:
    """The table as params; entries with a known bug are strict xfails naming it."""
    out = []
    for name, case in TABLE:
        why = "; ".join(getattr(case, a) for a in attributes if getattr(case, a) is not True)
        marks = pytest.mark.xfail(reason=f"{name}: {why}", strict=True) if why else ()
        out.append(pytest.param(case, id=name, marks=marks))
    return out


# ----------------------------------------------------------------------------- helpers
def call(case: Case, tx, grad: Tensor, state, theta: Tensor, step: int, loss_fn: Callable[[Tensor], Tensor]):
    """``(delta, state)`` of one update, whatever the entry's contract."""
    if case.kind == "transform":
        return tx.update(grad, state, theta, step)
    if case.kind == "loss":
        return tx.update(grad, state, theta, step, loss=loss_fn(theta))
    delta, state, _ = tx.update(grad, state, theta, step, loss_fn, loss_fn(theta))
    return delta, state


def structure(tree) -> Any:
    """Types of the containers, shapes and dtypes of the tensors."""
    if isinstance(tree, Tensor):
        return ("tensor", tuple(tree.shape), tree.dtype)
    if isinstance(tree, tuple):
        return (type(tree), tuple(structure(x) for x in tree))
    return type(tree)


def leaves(tree) -> list[Tensor]:
    if isinstance(tree, Tensor):
        return [tree]
    if isinstance(tree, tuple):
        return [leaf for x in tree for leaf in leaves(x)]
    return []


def tree_map(fn: Callable[..., Tensor], tree, *rest):
    if isinstance(tree, Tensor):
        return fn(tree, *rest)
    if isinstance(tree, tuple):
        items = [tree_map(fn, *xs) for xs in zip(tree, *rest)]
        return type(tree)(*items) if hasattr(tree, "_fields") else tuple(items)
    raise TypeError(f"unexpected state leaf {type(tree).__name__}")


def close(actual: Tensor, expected: Tensor, msg: str) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12, msg=lambda m: f"{msg}\n{m}")


def start_rows(case: Case, e: Env) -> Tensor:
    """``(K, D)`` starting points: ``theta0`` plus noise, or ``theta0`` itself for an origin-bound entry."""
    noise = 0.1 * torch.randn(K, e.theta0.numel(), generator=torch.Generator().manual_seed(7), dtype=F64)
    return e.theta0.expand(K, -1).clone() if case.origin_start else e.theta0 + noise.to(e.dtype)


# ----------------------------------------------------------------------------- the checks
def check_finite_and_structure(case: Case, dtype: torch.dtype) -> None:
    e = env(dtype)
    loss_fn, grad_fn = quadratic(e, seed=0)
    tx = case.transform(e)
    theta = e.theta0.clone()
    state = tx.init(theta)
    want = structure(state)
    for step in range(STEPS):
        delta, state = call(case, tx, grad_fn(theta), state, theta, step, loss_fn)
        assert isinstance(delta, Tensor) and delta.shape == theta.shape, f"step {step}: delta {tuple(delta.shape)}"
        assert delta.dtype == theta.dtype and delta.device == theta.device, f"step {step}: delta is {delta.dtype}"
        assert torch.isfinite(delta).all(), f"step {step}: non-finite delta"
        assert structure(state) == want, f"step {step}: state {structure(state)} != initial {want}"
        assert all(torch.isfinite(t).all() for t in leaves(state) if t.is_floating_point()), f"step {step}"
        theta = theta + delta
    assert not torch.equal(theta, e.theta0), "the parameters never moved"


def check_inputs_untouched(case: Case) -> None:
    e = env(F64)
    loss_fn, grad_fn = quadratic(e, seed=1)
    tx = case.transform(e)
    theta = e.theta0.clone()
    state = tx.init(theta)
    for step in range(3):  # step 0 and later steps take different branches (momentum buffers, BFGS)
        grad = grad_fn(theta)
        inputs = [("grad", grad), ("theta", theta)] + [(f"state leaf {i}", t) for i, t in enumerate(leaves(state))]
        saved = [t.clone() for _, t in inputs]
        delta, new_state = call(case, tx, grad, state, theta, step, loss_fn)
        for (name, t), before in zip(inputs, saved):
            assert torch.equal(t, before), f"step {step}: update modified its input {name} in place"
        state, theta = new_state, theta + delta


def check_adapter_matches_functional(case: Case) -> None:
    e = env(F64)
    tx = case.transform(e)
    theta = e.theta0.clone()
    state = tx.init(theta)
    module = copy.deepcopy(e.module)
    opt = case.optimizer(e, list(module.parameters()))
    for step, batch in enumerate(batches(e)[:STEPS]):
        loss_fn = functools.partial(model_loss, e, batch)
        grad = torch.func.grad(loss_fn)(theta)
        delta, state = call(case, tx, grad, state, theta, step, loss_fn)
        theta = theta + delta
        opt.step(closure_for(module, opt, batch))
        close(flat_params(module), theta, f"step {step}: the adapter left the functional path")


def check_state_dict_round_trip(case: Case, *, through_file: bool = False) -> None:
    """Save after 3 steps, load into a fresh optimizer over a copy of the model, 2 more steps on
    both: equal parameters. ``through_file``: the state dict goes through ``torch.save`` and
    ``torch.load(weights_only=True)`` (a checkpoint), else ``copy.deepcopy`` (as torch's tests)."""
    e = env(F64)
    data = batches(e)
    module = copy.deepcopy(e.module)
    opt = case.optimizer(e, list(module.parameters()))
    for batch in data[:3]:
        opt.step(closure_for(module, opt, batch))
    twin_module = copy.deepcopy(module)
    twin = case.optimizer(e, list(twin_module.parameters()))
    if through_file:
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        buffer.seek(0)
        twin.load_state_dict(torch.load(buffer, weights_only=True))
    else:
        twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    for step, batch in enumerate(data[3:5], start=3):
        opt.step(closure_for(module, opt, batch))
        twin.step(closure_for(twin_module, twin, batch))
        assert torch.equal(flat_params(twin_module), flat_params(module)), \
            f"step {step}: the reloaded optimizer does not continue like the original"


def _rows_loop(case: Case, tx, e: Env, thetas: Tensor, problems) -> tuple[list, list]:
    """Reference: each row on its own, ``STEPS`` updates; the deltas and states per step, stacked."""
    rows = list(thetas)
    states = [tx.init(row) for row in rows]
    deltas, stacked = [], []
    for step in range(STEPS):
        out = [call(case, tx, grad_fn(th), s, th, step, loss_fn) for th, s, (loss_fn, grad_fn) in
               zip(rows, states, problems)]
        states = [o[1] for o in out]
        rows = [th + o[0] for th, o in zip(rows, out)]
        deltas.append(torch.stack([o[0] for o in out]))
        stacked.append(tree_map(lambda *xs: torch.stack(xs), *states))
    return deltas, stacked


def _batched_problem(e: Env):
    problems = [quadratic(e, seed=10 + k) for k in range(K)]

    def losses(thetas):
        return torch.stack([loss_fn(th) for th, (loss_fn, _) in zip(thetas, problems)])

    def grads(thetas):
        return torch.stack([grad_fn(th) for th, (_, grad_fn) in zip(thetas, problems)])

    return problems, losses, grads


def check_batched_vmap(case: Case) -> None:
    """``vmap`` over ``update`` (states built row by row and stacked) equals the loop."""
    e = env(F64)
    tx = case.transform(e)
    thetas = start_rows(case, e)
    problems, losses, grads = _batched_problem(e)
    want_deltas, want_states = _rows_loop(case, tx, e, thetas, problems)
    state = tree_map(lambda *xs: torch.stack(xs), *[tx.init(row) for row in thetas])
    for step in range(STEPS):
        if case.kind == "loss":
            delta, state = vmap(lambda g, s, th, l: tx.update(g, s, th, step, loss=l))(
                grads(thetas), state, thetas, losses(thetas))
        else:
            delta, state = vmap(lambda g, s, th: tx.update(g, s, th, step))(grads(thetas), state, thetas)
        close(delta, want_deltas[step], f"step {step}: vmapped deltas differ from the loop")
        assert structure(state) == structure(want_states[step]), f"step {step}: vmapped state structure"
        tree_map(lambda a, b: close(a, b, f"step {step}: vmapped state differs from the loop"),
                 state, want_states[step])
        thetas = thetas + delta


def check_batched_native(case: Case) -> None:
    """``update`` on ``(K, D)`` as it is (as :func:`l2o_lib.population.transform_rule` uses a
    transform) equals the loop; the state's layout may differ, the deltas may not."""
    e = env(F64)
    tx = case.transform(e)
    thetas = start_rows(case, e)
    problems, losses, grads = _batched_problem(e)
    want_deltas, _ = _rows_loop(case, tx, e, thetas, problems)
    state = tx.init(thetas)
    for step in range(STEPS):
        if case.kind == "loss":
            delta, state = tx.update(grads(thetas), state, thetas, step, loss=losses(thetas))
        else:
            delta, state = tx.update(grads(thetas), state, thetas, step)
        close(delta, want_deltas[step], f"step {step}: (K, D) deltas differ from the loop")
        thetas = thetas + delta


# ----------------------------------------------------------------------------- the tests
def test_table_covers_every_registered_optimizer():
    names = {name for name, _ in TABLE}
    assert set(OPTIMIZERS) <= names, f"not in the contract table: {sorted(set(OPTIMIZERS) - names)}"


@pytest.mark.parametrize("dtype", [F32, F64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", CASES)
def test_finite_deltas_and_state_structure(case, dtype):
    check_finite_and_structure(case, dtype)


@pytest.mark.parametrize("case", CASES)
def test_update_does_not_modify_its_inputs(case):
    check_inputs_untouched(case)


@pytest.mark.parametrize("case", CASES)
def test_adapter_matches_functional_path(case):
    check_adapter_matches_functional(case)


@pytest.mark.parametrize("case", known_bugs("round_trip"))
def test_adapter_state_dict_round_trip(case):
    check_state_dict_round_trip(case)


@pytest.mark.parametrize("case", known_bugs("round_trip", "saves"))
def test_adapter_state_dict_through_a_file(case):
    check_state_dict_round_trip(case, through_file=True)


@pytest.mark.parametrize("case", supported("vmap"))
def test_batched_vmap_equals_loop(case):
    check_batched_vmap(case)


@pytest.mark.parametrize("case", supported("native"))
def test_batched_native_equals_loop(case):
    check_batched_native(case)
