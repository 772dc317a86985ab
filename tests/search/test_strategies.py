"""The search's default strategy (uniform configurations, each group alone, the sensitivity path, then TPE), its
claims (the trained models themselves, or models trained afresh), its costs and per-role widths; and that its
certified answer is never worse than the uniform sweep's on the built-in models."""

from __future__ import annotations

import numpy as np
import pytest

from boundfinder.bounds import estimate_bound
from boundfinder.data import DigitsDataModule
from boundfinder.experiment import load_experiment
from boundfinder.search import study as study_mod
from boundfinder.search.candidates import sensitivity_path
from boundfinder.search.cost import CostModel, layer_profile
from boundfinder.search.study import Candidate, precision_search
from boundfinder.search.sweep import precision_sweep
from tests.search import workers

BITS = [2, 4, 6, 8]


def _sweep_of(result, tolerance=0.01, confidence=0.95):
    """The uniform sweep's decision on the search's own test measurements of its uniform candidates."""
    uniform = [(k, c) for k, c in enumerate(result.candidates) if c.uniform]
    widths = np.array([next(iter(c.bits.values())) for _, c in uniform])
    rows = result.test_correct[[k for k, _ in uniform]]
    base = result.test_baseline
    if rows.shape[1] == 1:
        rows, base = rows[:, 0], base[0]
    est = estimate_bound(widths, rows, base, tolerance=tolerance, confidence=confidence)
    return est, {int(b): c for b, (_, c) in zip(widths, uniform, strict=True)}


@pytest.fixture(scope="module")
def path_search():
    return workers.search(None, "path", 6, 0, bits=BITS, strategy="path+tpe", claim="model", procedure="graph")


def test_the_default_strategy_measures_uniform_alone_and_path_configurations(path_search):
    r = path_search
    groups = r.groups
    by_key = {tuple(c.bits[g] for g in groups): c for c in r.configurations}
    # every uniform configuration, and each group alone at each narrower width with the others at the widest
    assert all((b,) * len(groups) in by_key for b in BITS)
    for i, _g in enumerate(groups):
        for b in BITS[:-1]:
            key = tuple(b if j == i else BITS[-1] for j in range(len(groups)))
            assert key in by_key
    # the budget: each group alone at each narrower width, plus n_trials (here the space has 16 configurations)
    assert r.n_configurations == min(len(groups) * (len(BITS) - 1) + 6, len(BITS) ** len(groups))
    origins = {c.origin for c in r.configurations}
    assert {"widest", "uniform", "sensitivity"} <= origins
    # the path is rebuilt from the stored drops of each group alone; every path configuration measured lies on it
    drops = {g: {b: by_key[tuple(b if h == g else BITS[-1] for h in groups)].val_drop for b in BITS}
             for g in groups}
    path = sensitivity_path(drops, lambda c: study_mod._Space.cost(_space_of(r), c, None))
    on_path = {tuple(c[g] for g in groups) for c in path}
    assert all(tuple(c.bits[g] for g in groups) in on_path for c in r.configurations if c.origin == "path")
    # the candidates: every uniform configuration, and the mixed ones of the validation front
    assert [c for c in r.candidates if c.uniform] == sorted((c for c in r.configurations if c.uniform),
                                                            key=lambda c: c.cost)
    assert r.summary()["candidates"][0]["origin"] in {"uniform", "sensitivity", "path", "sampler", "widest"}


def _space_of(result):
    """A space pricing configurations like the search's (bits per parameter)."""
    return study_mod._Space(groups=result.groups, dims=result.groups, bits=tuple(BITS),
                            names={b: f"e8m{b}" for b in BITS}, switch=(), epochs=1,
                            parameters=dict(result.parameters), outside=0,
                            widths={b: 9.0 + b for b in BITS})


def test_the_model_claim_certifies_the_searchs_own_models_on_the_test_items(path_search):
    r = path_search
    assert r.claim_kind == "model" and r.confirm_seeds == () and r.confirmation.n_seeds == 1
    assert "the 1 trained mlp16 model of seeds [0] themselves" in r.claim
    assert "with the search's 1 trained model" in r.report()
    # its baseline is the seed-0 model on the test items: the search's own model, not a fresh one
    dm = DigitsDataModule(batch_size=128, seed=0)
    from boundfinder.experiment import TOP1, Experiment
    from boundfinder.search.measure import trained
    from boundfinder.search.sweep import _measure

    exp = Experiment(model=workers.build, data=dm, score=TOP1)
    model = trained(exp, [0], 2)[0]
    import torch

    assert np.array_equal(_measure(model, exp, torch.device("cpu")), r.test_baseline[0])


def test_the_sweeps_decision_is_recovered_from_the_searchs_uniform_candidates():
    # the same models and test items: the search's uniform rows are the sweep's rows, bit for bit
    kw = {"seeds": [0, 1], "epochs": 2}
    sweep = precision_sweep(load_experiment(model="logreg"), None, "e8m{b}", BITS, **kw)
    search = precision_search(load_experiment(model="logreg"), None, "e8m{b}", BITS, n_trials=2, sampler_seed=0,
                              **kw)
    est, uniform = _sweep_of(search)
    for b, row in zip(sweep.bits, sweep.correct, strict=True):
        k = search.candidates.index(uniform[b])
        assert np.array_equal(search.test_correct[k], row)
    ref = sweep.bound()
    assert est.bits == ref.bits and [lv.upper for lv in est.levels] == [lv.upper for lv in ref.levels]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["mlp", "lenet"])
def test_the_default_search_is_never_worse_than_the_uniform_sweep(model):
    # the CLI's defaults: e8m{b}, b in 0..10, seeds 0, 1, 2, 15 epochs, 40 trials, tolerance 0.01
    r = precision_search(load_experiment(model=model), None, "e8m{b}", range(0, 11), seeds=[0, 1, 2], epochs=15,
                         n_trials=40, sampler_seed=0)
    est, uniform = _sweep_of(r)
    sweep_cost = uniform[est.bits].cost if est.bits is not None else np.inf
    assert r.chosen is not None and r.chosen.cost <= sweep_cost, r.report()


def test_a_mixed_candidate_dearer_than_a_confident_uniform_one_is_not_tested():
    def cand(bits, drop):
        return Candidate(bits=bits, formats={g: f"e8m{b}" for g, b in bits.items()},
                         cost=float(sum(bits.values())), val_drop=drop, trial=0)

    space = _space_of(type("R", (), {"groups": ("a", "b"), "parameters": {"a": 1, "b": 1}})())
    measured = {space.key(c.bits, None): c for c in [
        cand({"a": 8, "b": 8}, 0.0), cand({"a": 6, "b": 6}, 0.004), cand({"a": 4, "b": 4}, 0.009),
        cand({"a": 8, "b": 6}, -0.002),  # dearer than the uniform 6/6, which validation puts within tol/2
        cand({"a": 6, "b": 4}, 0.006), cand({"a": 2, "b": 2}, 0.05)]}
    got = [(c.bits["a"], c.bits["b"]) for c in study_mod._candidates(measured, space, 0.01)]
    assert got == [(2, 2), (4, 4), (6, 4), (6, 6), (8, 8)]


def test_bit_operation_and_memory_costs_price_each_layer():
    dm = DigitsDataModule(batch_size=128, seed=0)
    r = precision_search(workers.build, dm, "e8m{b}", BITS, seeds=[0], epochs=1, n_trials=1, cost="bops",
                         sampler_seed=0)
    import torch

    prof = layer_profile(workers.build(), torch.zeros(3, 64))
    model = CostModel(prof)
    for c in r.candidates:
        widths = {layer: (9.0 + c.bits[g],) * 2 for g in r.groups for layer in [g]}
        assert c.cost == pytest.approx(model.bit_operations(widths), rel=1e-12)
    assert r.cost_kind == "bops" and r.full_cost == pytest.approx(model.bit_operations({}))
    assert "bit-operations per item" in r.report() and "fewer bit-operations than float32" in r.report()
    mem = precision_search(workers.build, dm, "e8m{b}", BITS, seeds=[0], epochs=1, n_trials=0, cost="memory",
                           confirm=False)
    assert mem.cost_label == "bytes per item (weights and activations)"
    assert mem.full_cost == pytest.approx(model.memory_bytes({}), rel=1e-12)  # everything at 32 bits


def test_per_role_widths_search_weights_and_activations_apart():
    dm = DigitsDataModule(batch_size=128, seed=0)
    r = precision_search(workers.build, dm, "e8m{b}", [2, 8], seeds=[0], epochs=1, n_trials=2, per_role=True,
                         sampler_seed=0)
    dims = {f"{g} {k}" for g in r.groups for k in ("weights", "activations")}
    assert r.per_role and all(set(c.bits) == dims for c in r.configurations)
    # 2 widths for 4 dimensions: 16 configurations; each dimension alone (4) plus 2 trials asked
    assert r.n_configurations >= 6
    c = next(c for c in r.configurations if len(set(c.bits.values())) > 1)
    spec = study_mod._role_formats(c.formats, ("weight", "bias", "input", "activation"))
    for g in r.groups:
        assert spec[g]["weight"] == spec[g]["bias"] == f"e8m{c.bits[f'{g} weights']}"
        assert spec[g]["input"] == spec[g]["activation"] == f"e8m{c.bits[f'{g} activations']}"
    assert "w:e8m" in c.describe() and "a:e8m" in c.describe()


def test_a_continuous_score_without_its_tolerance_is_refused_by_the_search_before_training():
    from boundfinder.errors import BoundfinderError

    with pytest.raises(BoundfinderError, match=r"loss is a continuous score .* a tolerance > 0 is required"):
        precision_search(load_experiment(model="logreg", score="loss"), None, "e8m{b}", BITS, n_trials=1)
