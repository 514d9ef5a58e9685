"""Symbolic regression behind one API: PySR when Julia is present, pyoperon offline, sympy out.

:func:`fit` searches formulas ``y ≈ f(X)`` with one of two genetic-programming backends and returns a
:class:`Fit`: the chosen sympy expression, its complexity and error, and the Pareto front of
(complexity, error) it was chosen from. Both backends get the same operator set (:data:`OPERATORS`),
seeds and time budget; their candidate formulas are re-scored here on the same data with the same
complexity measure (nodes of the sympy tree) and the same selection rule (PySR's ``"best"``: the
largest drop in log error per unit of complexity among candidates within ``slack`` × the lowest error),
so a formula chosen by one backend is chosen for the same reasons as one from the other.

* ``backend="pyoperon"``: the offline default (a C++ engine in a wheel; seconds per fit).
* ``backend="pysr"``: PySR (Julia). It needs a working Julia installation, which cannot be fetched
  offline; :func:`pysr_available` says whether one is there.
* ``backend="auto"``: PySR when it can start, else pyoperon, with one warning saying so.

The rest turns formulas into numbers: :func:`to_torch` (sympy → torch via ``lambdify``, used to run a
fitted rule as an optimizer, see :mod:`~l2o_lib.distill`), :func:`to_numpy`, :func:`round_constants`
for display, :func:`canonical` and :func:`equivalent` to compare a fit with a known formula.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import sympy as sp
import torch  # before juliacall (PySR): importing torch after Julia's runtime can crash

from .config import check_choice, check_int, check_positive, check_seed

__all__ = ["OPERATORS", "BACKENDS", "Candidate", "Fit", "BackendFallback", "pysr_available", "fit", "complexity",
           "select", "pareto", "to_numpy", "to_torch", "round_constants", "canonical", "equivalent", "r2_score"]

#: Operators a formula may use, by our name; both backends get the same subset.
OPERATORS = ("add", "sub", "mul", "div", "sqrt", "exp", "log", "tanh")
BACKENDS = ("auto", "pyoperon", "pysr")
_BINARY = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_UNARY = ("sqrt", "exp", "log", "tanh", "abs", "square")
_TORCH = {"sqrt": torch.sqrt, "exp": torch.exp, "log": torch.log, "tanh": torch.tanh, "Abs": torch.abs}


class BackendFallback(UserWarning):
    """``backend="auto"`` could not start PySR and used pyoperon."""


@dataclass(frozen=True)
class Candidate:
    """One formula of a Pareto front, scored on the fit's data."""

    expr: sp.Expr
    complexity: int
    mse: float
    r2: float


@dataclass
class Fit:
    """What :func:`fit` returns.

    Attributes:
        expr: the chosen formula; complexity, mse, r2: its size and error on the fit's data.
        front: the Pareto front (increasing complexity, decreasing error) it was chosen from.
        names: the input variables, in the order of ``X``'s columns; backend: the one that ran.
        seconds: wall time of the search.
    """

    expr: sp.Expr
    complexity: int
    mse: float
    r2: float
    front: list[Candidate]
    names: tuple[str, ...]
    backend: str
    seconds: float
    info: dict = field(default_factory=dict)

    def latex(self, digits: int = 3) -> str:
        """The chosen formula in LaTeX, constants rounded to ``digits`` significant digits."""
        return sp.latex(round_constants(self.expr, digits))

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The formula evaluated on the rows of ``X`` (columns as in ``names``)."""
        return to_numpy(self.expr, self.names)(np.asarray(X, dtype=np.float64))

    def torch_fn(self) -> Callable[..., torch.Tensor]:
        """``fn(*columns) -> tensor`` (see :func:`to_torch`)."""
        return to_torch(self.expr, self.names)

    def candidate(self, complexity: int | None = None) -> Candidate:
        """The front's formula of ``complexity`` (``None``: the chosen one); ``ValueError`` naming the
        front's complexities when there is none of that size."""
        if complexity is None:
            complexity = self.complexity
        found = [c for c in self.front if c.complexity == complexity]
        if not found:
            raise ValueError(f"complexity={complexity!r} is not on the Pareto front; it has "
                             f"{[c.complexity for c in self.front]}")
        return found[0]

    def front_records(self, digits: int = 3) -> list[dict]:
        """The front as table rows (complexity, mse, r2, formula, chosen)."""
        return [{"complexity": c.complexity, "mse": c.mse, "r2": c.r2, "formula": str(round_constants(c.expr, digits)),
                 "chosen": c.expr == self.expr} for c in self.front]


# ----------------------------------------------------------------------------- sympy helpers


def complexity(expr: sp.Expr) -> int:
    """Nodes of the expression tree (symbols, numbers and operators each count 1)."""
    return sum(1 for _ in sp.preorder_traversal(expr))


def round_constants(expr: sp.Expr, digits: int = 3) -> sp.Expr:
    """``expr`` with every floating-point constant rounded to ``digits`` significant digits."""
    check_int("digits", digits)
    floats = {f: sp.Float(float(f"{float(f):.{digits}g}")) for f in expr.atoms(sp.Float)}
    return expr.xreplace(floats)


def canonical(expr: sp.Expr) -> sp.Expr:
    """A normal form for comparisons: one fraction whose denominator's constant term (or, without
    one, its first coefficient) is 1, so ``4.6 a / (4.6 + 4.6 √b)`` becomes ``a / (1 + √b)``."""
    num, den = sp.fraction(sp.together(expr))
    if den.is_number:
        return sp.expand(num / den)
    den = sp.expand(den)
    const, rest = den.as_coeff_Add()
    scale = const if const != 0 else sp.Add.make_args(rest)[0].as_coeff_Mul()[0]
    return sp.expand(num / scale) / sp.expand(den / scale)


def equivalent(expr: sp.Expr, target: sp.Expr, *, decimals: int = 2) -> bool:
    """Whether ``expr`` equals ``target`` algebraically once its constants are rounded to ``decimals``
    decimals in :func:`canonical` form (a fitted ``2.002·exp(−0.4989 b) − 0.0026`` equals
    ``2·exp(−b/2)``; ``4.605 a / (4.602 + √(21.2 b))`` equals ``a / (1 + √b)``)."""
    check_int("decimals", decimals, minimum=0)

    def rationalise(e: sp.Expr) -> sp.Expr:
        return e.xreplace({f: sp.Rational(round(float(f), decimals)).limit_denominator(10 ** decimals)
                           for f in e.atoms(sp.Float)})

    def real(e: sp.Expr) -> sp.Expr:  # the same symbols however each side was built
        e = sp.sympify(e)
        return e.xreplace({s: sp.Symbol(s.name, real=True) for s in e.free_symbols})

    difference = rationalise(canonical(real(expr))) - rationalise(canonical(real(target)))
    return sp.simplify(difference) == 0


def _symbols(names: Sequence[str]) -> dict[str, sp.Symbol]:
    # A locals table so names such as "beta", "gamma" or "E" stay plain variables, not sympy objects.
    return {n: sp.Symbol(n, real=True) for n in names}


def _parse(text: str, names: Sequence[str]) -> sp.Expr:
    # pyoperon writes square(x); sympy knows abs, sqrt, exp, log, tanh by those names already.
    return sp.sympify(text, locals={"square": lambda e: e ** 2, **_symbols(names)})


def to_numpy(expr: sp.Expr, names: Sequence[str]) -> Callable[[np.ndarray], np.ndarray]:
    """``fn(X) -> y`` evaluating ``expr`` on the rows of ``X`` (columns in the order of ``names``)."""
    symbols = _symbols(names)
    expr = expr.xreplace({s: symbols[s.name] for s in expr.free_symbols if s.name in symbols})
    raw = sp.lambdify(list(symbols.values()), expr, modules="numpy")

    def fn(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        with np.errstate(all="ignore"):
            return np.broadcast_to(np.asarray(raw(*X.T), dtype=np.float64), X.shape[:1]).copy()

    return fn


def to_torch(expr: sp.Expr, names: Sequence[str]) -> Callable[..., torch.Tensor]:
    """``fn(*columns) -> tensor``: ``expr`` as torch operations on tensors of one shape (one per
    name, in order), computed in float64 and returned in the inputs' dtype; differentiable and
    device-agnostic. A constant formula is broadcast to the inputs' shape."""
    symbols = _symbols(names)
    unknown = sorted(s.name for s in expr.free_symbols if s.name not in symbols)
    if unknown:
        raise ValueError(f"expr uses variables {unknown} that are not in names={list(names)}")
    expr = expr.xreplace({s: symbols[s.name] for s in expr.free_symbols})
    raw = sp.lambdify(list(symbols.values()), expr, modules=[_TORCH, "torch"])

    def fn(*columns: torch.Tensor) -> torch.Tensor:
        if len(columns) != len(names):
            raise ValueError(f"expected {len(names)} inputs ({', '.join(names)}), got {len(columns)}")
        ref = columns[0]
        # float64 inside: fitted constants such as 4.8e140 · exp(−974 t) overflow float32.
        out = raw(*(c.double() for c in columns))
        return torch.as_tensor(out, dtype=torch.float64, device=ref.device).expand(ref.shape).to(ref.dtype)

    return fn


def r2_score(y: np.ndarray, prediction: np.ndarray) -> float:
    """Coefficient of determination ``1 − SSE / SST`` (``−inf`` for a non-finite prediction)."""
    if not np.all(np.isfinite(prediction)):
        return -math.inf
    sst = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - prediction) ** 2)) / max(sst, 1e-300)


# ----------------------------------------------------------------------------- selection


def pareto(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The non-dominated candidates, by increasing complexity (strictly decreasing error)."""
    front: list[Candidate] = []
    for c in sorted(candidates, key=lambda c: (c.complexity, c.mse)):
        if math.isfinite(c.mse) and (not front or c.mse < front[-1].mse):
            front.append(c)
    return front


def select(front: Sequence[Candidate], *, slack: float = 1.5) -> Candidate:
    """PySR's ``"best"`` rule on a Pareto front: among candidates with error ≤ ``slack`` × the lowest,
    the one with the largest ``−Δ log(mse) / Δ complexity`` relative to its simpler neighbour."""
    if not front:
        raise ValueError("no finite candidate formula to select from")
    check_positive("slack", slack)
    best_mse = min(c.mse for c in front)
    scores, previous = [], None
    for c in front:
        if previous is None:
            score = math.inf if c.mse <= 0 else 0.0
        else:
            drop = math.log(max(previous.mse, 1e-300)) - math.log(max(c.mse, 1e-300))
            score = drop / max(c.complexity - previous.complexity, 1)
        scores.append(score)
        previous = c
    eligible = [(s, i) for i, (s, c) in enumerate(zip(scores, front)) if c.mse <= slack * best_mse]
    return front[max(eligible)[1]]


def _score(texts: Sequence[str], X: np.ndarray, y: np.ndarray, names: Sequence[str]) -> list[Candidate]:
    out = []
    for text in texts:
        try:
            expr = _parse(text, names)
            pred = to_numpy(expr, names)(X)
        except (sp.SympifyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
            continue
        r2 = r2_score(y, pred)
        if math.isfinite(r2):
            out.append(Candidate(expr, complexity(expr), float(np.mean((y - pred) ** 2)), r2))
    return out


# ----------------------------------------------------------------------------- backends


def pysr_available() -> bool:
    """Whether PySR is installed and a Julia executable is on ``PATH`` (PySR would otherwise try to
    download Julia, which an offline machine cannot)."""
    return importlib.util.find_spec("pysr") is not None and shutil.which("julia") is not None


def _pyoperon(X, y, names, *, operators, max_complexity, budget, seed, population, generations) -> list[str]:
    from pyoperon.sklearn import SymbolicRegressor

    reg = SymbolicRegressor(
        allowed_symbols=",".join([*operators, "constant", "variable"]), objectives=["r2", "length"],
        max_length=max_complexity, generations=generations or 10 ** 6, population_size=population,
        max_time=max(1, round(budget)),
        optimizer_iterations=5, random_state=seed, n_threads=1, model_selection_criterion="minimum_description_length")
    reg.fit(X, y)
    return [reg.get_model_string(entry["tree"], 6, list(names)) for entry in reg.pareto_front_]


def _pysr(X, y, names, *, operators, max_complexity, budget, seed, population, generations) -> list[str]:
    from pysr import PySRRegressor

    reg = PySRRegressor(
        binary_operators=[_BINARY[o] for o in operators if o in _BINARY],
        unary_operators=[o for o in operators if o in _UNARY], maxsize=max_complexity, niterations=generations or 10 ** 6,
        timeout_in_seconds=budget, population_size=population, random_state=seed, deterministic=True,
        parallelism="serial", progress=False, verbosity=0, temp_equation_file=True)
    reg.fit(X, y, variable_names=list(names))
    return [str(e) for e in reg.equations_["sympy_format"]]


_SEARCH = {"pyoperon": _pyoperon, "pysr": _pysr}


def fit(X, y, names: Sequence[str], *, backend: str = "auto", operators: Sequence[str] = OPERATORS,
        max_complexity: int = 20, time_budget: float = 10.0, generations: int | None = None, restarts: int = 1,
        seed: int = 0, population: int = 1000, max_samples: int = 2000, slack: float = 1.5) -> Fit:
    """Search formulas ``y ≈ f(X)`` and choose one.

    Args:
        X: ``(n, k)`` inputs; y: ``(n,)`` targets (numpy arrays or tensors).
        names: the ``k`` variable names (Python identifiers), used in the formulas.
        backend: ``"auto"`` (PySR when Julia is present, else pyoperon), ``"pyoperon"`` or ``"pysr"``.
        operators: allowed operators, from :data:`OPERATORS` plus ``"abs"`` and ``"square"``.
        max_complexity: the backends' size limit on a formula.
        time_budget: seconds for the whole search (split over ``restarts``).
        generations: stop each search after this many generations (PySR: iterations) as well; a
            search bounded by generations, not by the clock, gives the same formula on any machine
            for a seed (the time budget then only caps it).
        restarts: independent searches (seeds ``seed``, ``seed + 1``, …) whose fronts are merged; a
            genetic search can miss a structure in one run and find it in another.
        seed: the first search's seed; population: individuals per search.
        max_samples: rows used (a fixed random subset when there are more).
        slack: the selection rule's error tolerance (see :func:`select`).
    """
    check_choice("backend", backend, BACKENDS)
    X = np.asarray(X.detach().cpu() if isinstance(X, torch.Tensor) else X, dtype=np.float64)
    y = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or len(X) != len(y) or len(y) < 2:
        raise ValueError(f"X must be (n, k) and y (n,) with n >= 2, got X {X.shape} and y {y.shape}")
    names = tuple(names)
    if len(names) != X.shape[1] or not all(isinstance(n, str) and n.isidentifier() for n in names):
        raise ValueError(f"names must be {X.shape[1]} Python identifiers (one per column of X), got {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"names must be distinct, got {names!r}")
    for op in operators:
        check_choice("operators", op, (*_BINARY, *_UNARY))
    if not np.all(np.isfinite(X)) or not np.all(np.isfinite(y)):
        raise ValueError("X and y must be finite (drop or clip the non-finite rows first)")
    check_int("max_complexity", max_complexity, minimum=3)
    check_positive("time_budget", time_budget)
    check_int("restarts", restarts)
    if generations is not None:
        check_int("generations", generations)
    check_seed("seed", seed)
    check_int("population", population, minimum=10)
    check_int("max_samples", max_samples, minimum=2)
    check_positive("slack", slack)
    if backend == "auto":
        backend = "pysr" if pysr_available() else "pyoperon"
        if backend == "pyoperon":
            warnings.warn("symbolic regression: PySR needs a Julia installation, which is missing; "
                          "using pyoperon (same operators and selection rule)", BackendFallback, stacklevel=2)
    elif backend == "pysr" and not pysr_available():
        raise RuntimeError("backend='pysr' needs `pip install pysr` and a Julia executable on PATH; "
                           "use backend='pyoperon' or 'auto'")
    if len(y) > max_samples:
        keep = np.random.default_rng(seed).choice(len(y), max_samples, replace=False)
        X, y = X[keep], y[keep]
    start = time.perf_counter()
    texts: list[str] = []
    for r in range(restarts):
        texts += _SEARCH[backend](X, y, names, operators=tuple(operators), max_complexity=max_complexity,
                                  budget=time_budget / restarts, seed=seed + r, population=population,
                                  generations=generations)
    front = pareto(_score(texts, X, y, names))
    chosen = select(front, slack=slack)
    return Fit(chosen.expr, chosen.complexity, chosen.mse, chosen.r2, front, names, backend,
               time.perf_counter() - start, {"samples": len(y), "restarts": restarts, "generations": generations, "operators": list(operators)})
