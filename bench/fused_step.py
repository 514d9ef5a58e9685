"""SL2O's update fused by ``torch.compile`` vs the module path, alone (no model), per step.

ours:      :func:`l2o_lib.rnnprop.fused_rnnprop` with ``compile="always"``: the moments, RNNprop features,
           LSTM cell and output layer as one compiled function (Triton kernels on CUDA, inductor's C++
           on a CPU). The compilation happens in the warm-up calls and is reported (``compile_s``).
reference: :func:`l2o_lib.rnnprop.rnnprop` around :class:`~l2o_lib.rnnprop.LSTMRule` (``nn.LSTMCell``), the
           readable path the fused one is tested against; ``..._eager_fused_s`` is the fused function
           uncompiled (the CPU default of ``compile="auto"``).

Two sizes: the SL2O subspace (``n = 40`` coordinates) and plain L2O on every parameter of a model
(``n`` = ResNet-20's 269,722; 50,000 under ``--quick``), each as a meta-test step (no graph) and as
a meta-training step (graph kept, then ``backward`` of the step's sum through the LSTM). ``ratio`` is the
meta-training step at ``n = 40``, the case SL2O's meta-training runs ``T`` times per meta-step. No
issue bounds these numbers: they say where fusing pays.
"""

import statistics
import time

import torch

from l2o_lib.benchmark import time_per_call
from l2o_lib.rnnprop import LSTMRule, RNNpropState, rnnprop


def _stepper(rule, n, device, *, differentiable, **kwargs):
    tx = rnnprop(rule, differentiable=differentiable, **kwargs)
    g = torch.randn(n, generator=torch.Generator().manual_seed(0)).to(device)
    box = {"state": tx.init(g), "k": 0}

    def step():
        delta, state = tx.update(g, box["state"], None, box["k"])
        if differentiable:
            delta.sum().backward()
            state = RNNpropState(*(t.detach() for t in state))
        box["state"], box["k"] = state, box["k"] + 1
    return step


def run(*, quick: bool, device: str) -> dict:
    rule = LSTMRule().to(device)
    sizes = (40, 50_000 if quick else 269_722)
    out, compile_s = {}, 0.0
    for n in sizes:
        for mode, differentiable in (("meta_test", False), ("meta_train", True)):
            fns = {"reference": _stepper(rule, n, device, differentiable=differentiable),
                   "eager_fused": _stepper(rule, n, device, differentiable=differentiable, fused=True, compile="never"),
                   "ours": _stepper(rule, n, device, differentiable=differentiable, fused=True, compile="always")}
            start = time.perf_counter()
            time_per_call(fns["ours"], device=device, warmup=0, repeat=3)  # compiles (twice: the step number goes dynamic)
            compile_s += time.perf_counter() - start
            repeat = 50 if n < 1000 else (3 if quick else 10)
            times = {k: [] for k in fns}
            for _ in range(3):
                for k, fn in fns.items():
                    times[k].append(time_per_call(fn, device=device, warmup=1, repeat=repeat))
            for k, v in times.items():
                out[f"{mode}_n{n}_{k}_s"] = statistics.median(v)
            out[f"{mode}_n{n}_speedup"] = out[f"{mode}_n{n}_reference_s"] / out[f"{mode}_n{n}_ours_s"]
    key = f"meta_train_n{sizes[0]}"
    return {"ours_s": out[f"{key}_ours_s"], "reference_s": out[f"{key}_reference_s"], **out,
            "compile_s": compile_s, "sizes": list(sizes),
            "per": "optimizer update", "targets": []}
