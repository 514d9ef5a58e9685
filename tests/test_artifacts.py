"""Saving and loading trained optimizers (l2o_lib.artifacts): a round trip per kind gives the same
updates, learning rates and λ; missing, damaged, foreign and pre-registry files; bad kind names."""

import re

import pytest
import torch

from l2o_lib import artifacts
from l2o_lib.artifacts import KINDS, load_trained, save_trained, trained_path
from l2o_lib.files import CorruptFileError, atomic_torch_save
from l2o_lib.functional import FlatModel
from l2o_lib.l3rs import L3RSConfig, init_phi, l3rs
from l2o_lib.l3rs import Trained as L3RSTrained
from l2o_lib.mlrsnet import MLRSNet, TrainedSchedule
from l2o_lib.models import build_model
from l2o_lib.rnnprop import LSTMRule, rnnprop
from l2o_lib.sl2o import Trained as SL2OTrained
from l2o_lib.subspace import random_subspace


def _l3rs_model():
    return FlatModel(build_model("mlp", (6,), 3, seed=0, hidden=(8,)))


def _sl2o():
    return SL2OTrained(LSTMRule(hidden=6, layers=2, scale=0.2, seed=4), random_subspace(30, 12, seed=1))


def _mlrsnet():
    return TrainedSchedule([MLRSNet(8, seed=s).state_dict() for s in range(3)], hidden=8, info={"from": "test"})


def _l3rs():
    model = _l3rs_model()
    cfg = L3RSConfig(n_layers=len(model.segments()), base_lr=1e-2)
    phi = init_phi(cfg, seed=3) + 0.1 * torch.randn(cfg.dim, generator=torch.Generator().manual_seed(1))
    return L3RSTrained(phi, cfg, model.names, {"model": "mlp", "classes": (1, 2)})


MAKE = {"sl2o": _sl2o, "mlrsnet": _mlrsnet, "l3rs": _l3rs}


def _sl2o_updates(trained):
    grads = torch.randn(5, 12, generator=torch.Generator().manual_seed(0))
    tx = rnnprop(trained.rule)
    state, out = tx.init(grads[0]), []
    for t, g in enumerate(grads):
        d, state = tx.update(g, state, g, t)
        out.append(d)
    return torch.stack(out)


def _mlrsnet_lrs(schedule):
    return torch.as_tensor(schedule.lr_curve(torch.linspace(2.3, 0.2, 30), 0.6))


def _l3rs_steps(trained):
    # (updates, λ) of three steps of the transform on fixed batches.
    model = _l3rs_model()
    tx = l3rs(trained.phi, trained.config, total_steps=4, segments=model.segments())
    theta = model.flatten()
    state, deltas, lams = tx.init(theta), [], []
    for k in range(3):
        g = torch.Generator().manual_seed(k)
        batch = torch.randn(32, 6, generator=g), torch.randint(3, (32,), generator=g)
        loss, grad = model.loss_and_grad(theta, batch)
        d, state = tx.update(grad, state, theta, k, loss=loss)
        theta = theta + d
        deltas.append(d)
        lams.append(state.lam)
    return torch.cat([torch.stack(deltas).flatten(), torch.stack(lams).flatten()])


BEHAVIOUR = {"sl2o": _sl2o_updates, "mlrsnet": _mlrsnet_lrs, "l3rs": _l3rs_steps}


def _old_format(kind, obj):
    """The file each method's own save_trained wrote before the registry (no "kind"), spelled out."""
    if kind == "sl2o":
        rule, space = obj
        return {"config": {"hidden": rule.hidden, "layers": rule.layers, "scale": rule.scale,
                           "input_size": rule.input_size},
                "weights": rule.state_dict(),
                "space": {"origin": space.origin, "basis": space.basis,
                          "explained_variance_ratio": space.explained_variance_ratio,
                          "singular_values": space.singular_values}}
    if kind == "mlrsnet":
        return {"format": "mlrsnet-schedule/1", "hidden": obj.hidden, "info": dict(obj.info),
                "snapshots": obj.snapshots}
    return {"phi": obj.phi.detach().cpu(), "config": obj.config.as_dict(), "layer_names": list(obj.layer_names),
            "setup": {"model": "mlp", "classes": [1, 2]}}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_round_trip_gives_the_same_optimizer(tmp_path, kind):
    obj = MAKE[kind]()
    path = save_trained(obj, trained_path(kind, "ci", root=tmp_path))
    assert path == tmp_path / "ci" / KINDS[kind].notebook / KINDS[kind].filename
    assert torch.load(path, weights_only=True)["kind"] == kind
    loaded = load_trained(kind, "ci", root=tmp_path)
    assert type(loaded) is type(obj)
    assert torch.equal(BEHAVIOUR[kind](loaded), BEHAVIOUR[kind](obj))
    assert load_trained(kind, path) is not None  # a path works as well as a profile


def test_round_trip_keeps_what_is_not_behaviour(tmp_path):
    sl2o = load_trained("sl2o", save_trained(_sl2o(), tmp_path / "a.pt"))
    assert torch.equal(sl2o.space.basis, _sl2o().space.basis) and torch.equal(sl2o.space.origin, _sl2o().space.origin)
    assert load_trained("sl2o", save_trained(SL2OTrained(LSTMRule(hidden=4)), tmp_path / "b.pt")).space is None
    schedule = load_trained("mlrsnet", save_trained(_mlrsnet(), tmp_path / "c.pt"))
    assert schedule.info == {"from": "test"} and len(schedule) == 3
    original = _l3rs()
    loaded = load_trained("l3rs", save_trained(original, tmp_path / "d.pt"))
    assert loaded.config == original.config and torch.equal(loaded.phi, original.phi)
    assert loaded.layer_names == original.layer_names
    assert loaded.setup == {"model": "mlp", "classes": [1, 2]}  # plain JSON types: tuples become lists


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_missing_is_none(tmp_path, kind):
    assert load_trained(kind, "quick", root=tmp_path) is None
    assert load_trained(kind, tmp_path / "missing.pt") is None


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_damaged_file_names_it_and_the_notebook_to_rerun(tmp_path, kind):
    path = save_trained(MAKE[kind](), trained_path(kind, "ci", root=tmp_path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    notebook = KINDS[kind].notebook
    with pytest.raises(CorruptFileError, match=rf"{re.escape(str(path))} is damaged.*rerun notebook {notebook}"):
        load_trained(kind, "ci", root=tmp_path)


@pytest.mark.parametrize("old", [False, True], ids=["with kind", "old format"])
def test_a_file_of_another_kind_is_refused_naming_both(tmp_path, old):
    path = tmp_path / "sl2o.pt"
    if old:
        atomic_torch_save(path, _old_format("sl2o", _sl2o()))
    else:
        save_trained(_sl2o(), path)
    for kind in ("mlrsnet", "l3rs"):
        with pytest.raises(ValueError, match=rf"{re.escape(str(path))}.*'sl2o'.*'{kind}'"):
            load_trained(kind, path)
    atomic_torch_save(path, {"something": "else"})
    with pytest.raises(ValueError, match="not a trained optimizer"):
        load_trained("sl2o", path)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_old_file_without_a_kind_still_loads(tmp_path, kind):
    obj = MAKE[kind]()
    path = atomic_torch_save(tmp_path / "runs" / "paper" / KINDS[kind].notebook / KINDS[kind].filename,
                             _old_format(kind, obj))
    loaded = load_trained(kind, "paper", root=tmp_path / "runs")
    assert torch.equal(BEHAVIOUR[kind](loaded), BEHAVIOUR[kind](obj))
    assert load_trained(kind, path) is not None


def test_bad_kinds_and_objects_are_refused(tmp_path):
    for call in (lambda: load_trained("lstm", "ci"), lambda: trained_path("SL2O", "ci")):
        with pytest.raises(ValueError, match=r"kind=.*choose one of \['l3rs', 'mlrsnet', 'sl2o'\]"):
            call()
    with pytest.raises(ValueError, match="profile"):
        trained_path("sl2o", "fast")
    with pytest.raises(ValueError, match="obj must be a trained optimizer.*got LSTMRule"):
        save_trained(LSTMRule(hidden=4), tmp_path / "unused.pt")
    with pytest.raises(ValueError, match="rule must be an LSTMRule"):
        save_trained(SL2OTrained(object(), None), tmp_path / "unused.pt")
    with pytest.raises(ValueError, match="config must be an L3RSConfig"):
        save_trained(L3RSTrained(torch.zeros(3), {"n_layers": 2}), tmp_path / "unused.pt")
    cfg = L3RSConfig(n_layers=2)
    with pytest.raises(ValueError, match="phi"):
        save_trained(L3RSTrained(torch.zeros(cfg.dim + 1), cfg), tmp_path / "unused.pt")
    assert not (tmp_path / "unused.pt").exists()  # refused before any file is written


def test_every_kind_is_a_distinct_type_and_notebook():
    assert len({k.type for k in KINDS.values()}) == len({k.notebook for k in KINDS.values()}) == len(KINDS)
    assert all(artifacts.kind_of(MAKE[name]()) is KINDS[name] for name in KINDS)
    # The keys that recognise an old file pick exactly its own kind.
    for name, kind in KINDS.items():
        matches = [k for k in KINDS.values() if k.keys <= _old_format(name, MAKE[name]()).keys()]
        assert matches == [kind]
