"""Learned energies as ensembles: scales, fold members, persistence, and seed-determined training."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from impetus.learned.ensemble import EnsembleEBM, build_ensemble, energy_scores, ensemble_scores, member_accuracy
from impetus.learned.models import LatentEBM, LatentEBMConfig, score
from impetus.learned.persist import ebm_from_dict, ebm_to_dict
from impetus.learned.train import TrainConfig, train_ebm


def _latent(seed: int, dim: int = 6) -> LatentEBM:
    torch.manual_seed(seed)
    return LatentEBM(LatentEBMConfig(input_dim=dim, hidden=8, n_layers=1, dropout=0.0)).eval()


def test_ensemble_of_identical_members_equals_one_member():
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    m = _latent(0)
    one = build_ensemble([m], x)
    same = build_ensemble([m, copy.deepcopy(m), copy.deepcopy(m)], x)
    raw = score(m, x)
    z = (raw - raw.mean()) / raw.std()
    np.testing.assert_allclose(score(one, x), z, atol=1e-5)
    np.testing.assert_allclose(score(same, x), z, atol=1e-5)  # three copies: still the one member
    # and on new rows, through both the module and the row scorer
    new = np.random.default_rng(1).normal(size=(7, 6)).astype(np.float32)
    np.testing.assert_allclose(ensemble_scores(same, new)[0], (score(m, new) - raw.mean()) / raw.std(), atol=1e-5)


def test_members_are_standardised_before_averaging():
    """A member whose energies are 1000x larger must not drown the other one."""
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    a, b = _latent(1), _latent(2)
    with torch.no_grad():
        b.net[-1].weight.mul_(1000.0)
        b.net[-1].bias.add_(500.0)
    ens = build_ensemble([a, b], x)
    za = (score(a, x) - score(a, x).mean()) / score(a, x).std()
    zb = (score(b, x) - score(b, x).mean()) / score(b, x).std()
    mean = (za + zb) / 2
    np.testing.assert_allclose(score(ens, x), (mean - mean.mean()) / mean.std(), atol=1e-4)
    assert abs(score(ens, x).std() - 1.0) < 1e-4


def test_fold_members_never_score_a_problem_they_were_trained_on():
    x = np.random.default_rng(0).normal(size=(6, 6)).astype(np.float32)
    pids = np.array(["p0", "p0", "p1", "p1", "p2", "p2"])
    full, fold = _latent(3), _latent(4)
    with torch.no_grad():  # the fold member gives a constant 1e6 everywhere: any use of it shows
        for p in fold.parameters():
            p.zero_()
        fold.net[-1].bias.fill_(1e6)
    ens = EnsembleEBM([full, fold], mu=[0.0, 0.0], sd=[1.0, 1.0], names=["seed0", "fold0"],
                      trained_on=[None, ["p0", "p1"]])
    energy, z = ensemble_scores(ens, x, pids)
    seen = np.isin(pids, ["p0", "p1"])
    assert np.isnan(z[seen, 1]).all() and np.isfinite(z[~seen, 1]).all()
    np.testing.assert_allclose(energy[seen], score(full, x)[seen], rtol=1e-6)  # the full member alone
    assert (energy[~seen] > 1e5).all()  # p2 was held out of the fold member: it scores there
    # Without problem ids (V2's gradient, torch.export) every member counts.
    assert (ensemble_scores(ens, x)[0] > 1e5).all()


def _constant(value: float) -> LatentEBM:
    m = _latent(0)
    with torch.no_grad():
        for q in m.parameters():
            q.zero_()
        m.net[-1].bias.fill_(value)
    return m


def test_held_out_scoring_gives_a_training_problem_only_the_fold_member_that_held_it_out():
    """Dev problems (train-side) must get energies no member was fit on: the seed member saw every
    training problem, fold k saw all but fold k's. An eval problem (p3) is scored by everyone."""
    x = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    pids = np.array(["p0", "p0", "p1", "p1", "p2", "p2", "p3", "p3"])
    folds = [_latent(5), _latent(6), _latent(7)]
    members = [_constant(1e6)] + folds  # any use of the seed member shows as a huge energy
    ens = EnsembleEBM(members, mu=[0.0, 0.5, -0.5, 0.2], sd=[1.0, 2.0, 0.5, 1.5], out=(0.3, 0.7),
                      names=["seed0", "fold0", "fold1", "fold2"],
                      trained_on=[None, ["p1", "p2"], ["p0", "p2"], ["p0", "p1"]])
    energy, z = ensemble_scores(ens, x, pids, held_out=True)
    for k, p in enumerate(["p0", "p1", "p2"]):
        rows = pids == p
        want = (score(folds[k], x[rows]) - float(ens.mu[k + 1])) / float(ens.sd[k + 1])
        np.testing.assert_allclose(energy[rows], want, rtol=1e-6)  # the member's own z: the hybrid's input scale
        assert np.isfinite(z[rows]).sum(axis=1).tolist() == [1, 1]
    assert (energy[pids == "p3"] > 1e5).all()  # nobody saw p3: every member counts, as before
    in_sample, _ = ensemble_scores(ens, x, pids)
    assert (in_sample[pids != "p3"] > 1e5).all()  # without held_out the seed member scores dev too


def test_held_out_scoring_needs_fold_members_and_problem_ids():
    x = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    pids = np.array(["p0", "p0", "p1", "p1"])
    seeds_only = build_ensemble([_latent(1), _latent(2)], x)
    with pytest.raises(ValueError, match="fold members"):
        ensemble_scores(seeds_only, x, pids, held_out=True)
    with_fold = EnsembleEBM([_latent(1), _latent(2)], mu=[0, 0], sd=[1, 1], trained_on=[None, ["p1"]])
    with pytest.raises(ValueError, match="problem ids"):
        ensemble_scores(with_fold, x, held_out=True)
    with pytest.raises(ValueError, match="single model"):
        energy_scores(_latent(1), x, pids, held_out=True)


def test_ensemble_round_trips_as_plain_data(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)
    ens = build_ensemble([_latent(5), _latent(6)], x, names=["seed5", "fold0"], trained_on=[None, ["a", "b"]])
    path = tmp_path / "ens.pt"
    torch.save(ebm_to_dict(ens), path)
    back = ebm_from_dict(torch.load(path, weights_only=True))
    assert isinstance(back, EnsembleEBM) and back.names == ["seed5", "fold0"]
    assert back.trained_on == [None, frozenset({"a", "b"})]
    np.testing.assert_allclose(score(back, x), score(ens, x), atol=1e-6)


def test_member_accuracy_reports_spread_and_gain():
    df = pd.DataFrame({"problem_id": ["a", "a", "b", "b"], "sample_idx": [0, 1, 0, 1], "correct": [True, False, False, True]})
    z = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # member 0 right on both, member 1 on none
    out = member_accuracy(z, df, ["m0", "m1"], ensemble=np.array([0.0, 1.0, 1.0, 0.0]))
    assert out["members"] == {"m0": 1.0, "m1": 0.0}
    assert out["member_mean"] == 0.5 and out["ensemble"] == 1.0 and out["gain_over_mean_member"] == 0.5


def _train(monkeypatch=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 6)).astype(np.float32)
    groups = np.repeat(np.arange(20), 4)
    y = np.tile([True, False, False, False], 20)
    x[y] += 0.5
    cfg = TrainConfig(epochs=6, lr=1e-2, weight_decay=0.0, batch_groups=4, patience=2, val_fraction=0.2,
                      seed=7, progress=False)
    return train_ebm(_latent(0), x, groups, y, cfg)


def test_training_is_the_same_on_a_slow_machine(monkeypatch):
    """No wall-clock budget: a machine where every step takes an hour trains the same model."""
    fast = _train()
    import impetus.learned.train as train_mod

    clock = iter(range(0, 10**9, 3600))
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: float(next(clock)))
    slow = _train()
    assert [h["epoch"] for h in slow.history] == [h["epoch"] for h in fast.history]
    assert slow.best_epoch == fast.best_epoch
    for k, v in fast.model.state_dict().items():
        torch.testing.assert_close(slow.model.state_dict()[k], v, rtol=0, atol=0)


def test_train_config_has_no_time_budget():
    with pytest.raises(TypeError):
        TrainConfig(epochs=1, lr=1e-3, weight_decay=0.0, batch_groups=1, patience=1, val_fraction=0.0,
                    max_seconds=10)  # type: ignore[call-arg]


def _config(seed: int = 0, n_seeds: int = 2, fold_members: bool = True):
    from impetus.learned.fitting import EBMSpec, ScorerConfig

    def train(s):
        return TrainConfig(epochs=2, lr=1e-2, weight_decay=0.0, batch_groups=4, patience=2, val_fraction=0.2,
                           seed=s, progress=False)
    return ScorerConfig(
        seeds=tuple(range(seed, seed + n_seeds)), fold_members=fold_members, progress=False,
        text_ebm=EBMSpec({"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "max_len": 32, "dropout": 0.0}, train(seed)),
        latent_ebm=EBMSpec({"hidden": 8, "n_layers": 1, "dropout": 0.0}, train(seed)),
        text_dtype="float32", hidden_source="both", hybrid_columns=["spilled_energy", "text_ebm", "latent_ebm"],
        l2_grid=[0.1],
        cross_fit_folds=3)


def _table(n_problems: int = 12, n: int = 4):
    rng = np.random.default_rng(0)
    rows = [{"problem_id": f"p{p}", "sample_idx": s, "correct": s == p % n, "completion": f"answer {s}",
             "hidden_row": p * n + s, "spilled_energy": float(rng.normal())}
            for p in range(n_problems) for s in range(n)]
    hidden = {"hidden_mean": rng.normal(size=(n_problems * n, 6)).astype(np.float32),
              "hidden_answer": rng.normal(size=(n_problems * n, 6)).astype(np.float32)}
    problems = pd.DataFrame({"problem_id": [f"p{p}" for p in range(n_problems)], "question": ["What is 1 + 2?"] * n_problems})
    return pd.DataFrame(rows), hidden, problems


def test_fit_builds_seed_and_fold_members_and_is_seed_determined():
    from impetus.learned.ensemble_fit import fit_learned_energies
    from impetus.learned.fitting import add_learned_energies
    from impetus.testing import tiny_tokenizer

    groups, hidden, problems = _table()
    tok = tiny_tokenizer()
    fit = fit_learned_energies(groups, problems, hidden, tok, _config())
    for ens in (fit.scorers.text_ebm, fit.scorers.latent_ebm):
        assert ens.names == ["seed0", "seed1", "fold0", "fold1", "fold2"]
        assert ens.trained_on[:2] == [None, None]
        folds = ens.trained_on[2:]
        everyone = set(groups["problem_id"])
        # each fold member saw all problems but its fold's; the held-out folds partition the problems
        held = [everyone - set(t) for t in folds]
        assert all(h for h in held) and set().union(*held) == everyone and sum(map(len, held)) == len(everyone)
    members: dict = {}
    scored, _ = add_learned_energies(groups, problems, hidden, tok, fit.scorers, members)
    z = members["latent_ebm"]
    pids = groups["problem_id"].to_numpy()
    for j, seen in enumerate(fit.scorers.latent_ebm.trained_on[2:], start=2):
        assert np.isnan(z[np.isin(pids, list(seen)), j]).all()
    again = fit_learned_energies(groups, problems, hidden, tok, _config())
    other = fit_learned_energies(groups, problems, hidden, tok, _config(seed=10))
    x = np.concatenate([hidden["hidden_mean"], hidden["hidden_answer"]], axis=1)
    np.testing.assert_array_equal(score(again.scorers.latent_ebm, x), score(fit.scorers.latent_ebm, x))
    assert not np.allclose(score(other.scorers.latent_ebm, x), score(fit.scorers.latent_ebm, x))
    assert other.scorers.latent_ebm.names[:2] == ["seed10", "seed11"]
    assert np.isfinite(scored[["text_ebm", "latent_ebm", "hybrid"]].to_numpy()).all()
    # Held out: each training row is scored by its one fold member alone, on that member's scale.
    assert fit.scorers.can_hold_out
    held_members: dict = {}
    held, _ = add_learned_energies(groups, problems, hidden, tok, fit.scorers, held_members, held_out=True)
    for name in ("text_ebm", "latent_ebm"):
        zh = held_members[name]
        assert (np.isfinite(zh).sum(axis=1) == 1).all() and np.isnan(zh[:, :2]).all()  # no seed member
        np.testing.assert_allclose(held[name].to_numpy(), np.nansum(zh, axis=1), rtol=1e-6)
    assert not np.allclose(held["latent_ebm"], scored["latent_ebm"])


def test_without_fold_members_one_seed_is_one_model():
    """The control: n_seeds 1 and no fold members is a single EBM (up to its standardisation)."""
    from impetus.learned.ensemble_fit import fit_learned_energies
    from impetus.testing import tiny_tokenizer

    groups, hidden, problems = _table()
    tok = tiny_tokenizer()
    one = fit_learned_energies(groups, problems, hidden, tok, _config(n_seeds=1, fold_members=False))
    full = fit_learned_energies(groups, problems, hidden, tok, _config(n_seeds=1))
    assert one.scorers.latent_ebm.names == ["seed0"] and one.members.names == ["seed0"]
    assert full.scorers.latent_ebm.names == ["seed0", "fold0", "fold1", "fold2"]
    x = np.concatenate([hidden["hidden_mean"], hidden["hidden_answer"]], axis=1)
    member = one.scorers.latent_ebm.members[0]
    raw = score(member, x[groups["hidden_row"].to_numpy()])
    np.testing.assert_allclose(score(one.scorers.latent_ebm, x), (score(member, x) - raw.mean()) / raw.std(), atol=1e-5)
    # the same seed member in both, and the hybrid saw the same out-of-fold inputs
    torch.testing.assert_close(member.state_dict()["net.1.weight"], full.scorers.latent_ebm.members[0].state_dict()["net.1.weight"])
    assert one.scorers.hybrid.weights == full.scorers.hybrid.weights
    from impetus.learned.fitting import dev_held_out
    assert dev_held_out(full.scorers, "test") and not dev_held_out(one.scorers, "test")  # no fold member: in sample


def test_text_energies_encode_each_distinct_completion_once_with_the_same_values():
    """Repeated (problem, completion) rows are scored once and spread back: the same energies and
    members' z (fold members still blind to their problems) as scoring every row."""
    from impetus.learned.fitting import text_energy_scores, text_inputs
    from impetus.learned.models import TextEBM, TextEBMConfig
    from impetus.testing import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = TextEBMConfig(vocab_size=len(tok), d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=64, dropout=0.0)
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        members.append(TextEBM(cfg).eval())
    ens = EnsembleEBM(members, mu=[0.1, -0.2], sd=[1.5, 0.5], names=["seed0", "fold0"], trained_on=[None, ["p0"]])
    problems = pd.DataFrame({"problem_id": ["p0", "p1"], "question": ["1+2=?", "3+4=?"]})
    df = pd.DataFrame({"problem_id": ["p0", "p0", "p1", "p1", "p1", "p0", "p1"],
                       "completion": ["3", "4", "3", "7", "7", "3", "7"]})  # "3" of p0 and "3" of p1 differ
    rows: list[int] = []
    for m in members:
        m.register_forward_hook(lambda mod, args, out: rows.append(len(out)))
    energy, z = text_energy_scores(ens, tok, df, problems)
    assert sum(rows) == 2 * 4  # two members x four distinct (problem, completion) pairs
    want, want_z = ensemble_scores(ens, text_inputs(tok, df, problems, cfg.max_len), df["problem_id"].to_numpy())
    np.testing.assert_allclose(energy, want, atol=1e-5)
    np.testing.assert_allclose(z, want_z, atol=1e-5)  # NaN where the fold member saw p0, in the same places
    assert energy[0] == energy[5] and energy[3] == energy[4] == energy[6] and energy[0] != energy[2]
