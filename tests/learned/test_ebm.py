"""Learned EBMs: loss values, learnability on toy signals, determinism, early stopping, persistence."""

import math

import numpy as np
import pytest
import torch

from impetus.learned.models import (
    LatentEBM, LatentEBMConfig, TextEBM, TextEBMConfig, TokenInputs, distinct_rows, encode_texts, score,
)
from impetus.learned.persist import load_ebm, save_ebm
from impetus.learned.train import TrainConfig, group_pair_metrics, pairwise_loss, train_ebm


def make_cfg(**kw) -> TrainConfig:
    """A TrainConfig with test-sized values for every field not given."""
    base = dict(epochs=5, lr=1e-3, weight_decay=1e-2, batch_groups=16, patience=3, val_fraction=0.2)
    return TrainConfig(**{**base, **kw})
from impetus.testing import tiny_tokenizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # The CPU is shared; intra-op threads oversubscribe it and make tiny models ~20x slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def sp(x: float) -> float:
    return math.log1p(math.exp(x))


def test_pairwise_loss_hand_computed():
    e = torch.tensor([0.0, 1.0, 2.0, 0.5, 0.3, 9.0, 9.0], requires_grad=True)
    g = torch.tensor([0, 0, 0, 1, 1, 2, 2])  # group 2 has only right ones: no pair, no contribution
    y = torch.tensor([1, 0, 0, 1, 0, 1, 1]).bool()
    expected = ((sp(-1.0) + sp(-2.0)) / 2 + sp(0.2)) / 2
    loss = pairwise_loss(e, g, y)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    # Descent (-grad) pushes the right energy down and the wrong ones up.
    assert e.grad[5] == 0 and e.grad[0] > 0 and e.grad[1] < 0
    # The numpy validation metric agrees with the tensor loss.
    m = group_pair_metrics(e.detach().numpy(), g.numpy(), y.numpy())
    assert m["loss"] == pytest.approx(expected, rel=1e-6)
    assert m["pair_acc"] == pytest.approx((1.0 + 0.0) / 2)


def test_pairwise_loss_no_pairs_is_zero_with_graph():
    e = torch.tensor([1.0, 2.0], requires_grad=True)
    loss = pairwise_loss(e, torch.tensor([0, 1]), torch.tensor([True, False]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(e.grad == 0)


def toy_latent(n_groups, n_per=8, dim=16, signal=True, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n_groups * n_per, dim)).astype(np.float32)
    y = h[:, 0] > 0 if signal else rng.random(len(h)) < 0.5
    return h, np.repeat(np.arange(n_groups), n_per), y


def latent(dim=16, seed=0):
    torch.manual_seed(seed)
    return LatentEBM(LatentEBMConfig(input_dim=dim, hidden=64, n_layers=2, dropout=0.1))


def best_val_auroc(res):
    return res.history[res.best_epoch]["val_auroc"]


def test_latent_ebm_learns_signal():
    h, g, y = toy_latent(150)
    res = train_ebm(latent(), h, g, y, make_cfg(epochs=15, lr=3e-3, progress=False))
    assert best_val_auroc(res) > 0.9
    assert res.history[res.best_epoch]["val_pair_acc"] > 0.9
    assert set(res.train_groups).isdisjoint(res.val_groups)
    assert len(res.val_groups) == 30


def test_latent_ebm_random_signal_is_chance():
    h, g, y = toy_latent(500, n_per=8, signal=False, seed=1)
    res = train_ebm(latent(), h, g, y, make_cfg(epochs=4, lr=1e-3, progress=False, val_fraction=0.2))
    assert 0.4 < best_val_auroc(res) < 0.6


def test_training_is_deterministic():
    h, g, y = toy_latent(40)
    cfg = make_cfg(epochs=3, progress=False, seed=7)
    r1 = train_ebm(latent(seed=1), h, g, y, cfg)
    r2 = train_ebm(latent(seed=1), h, g, y, cfg)
    assert r1.history == r2.history and r1.val_groups == r2.val_groups
    for (k, a), b in zip(r1.model.state_dict().items(), r2.model.state_dict().values()):
        assert torch.equal(a, b), k
    r3 = train_ebm(latent(seed=1), h, g, y, make_cfg(epochs=3, progress=False, seed=8))
    assert r3.val_groups != r1.val_groups


def test_early_stopping_restores_best_epoch():
    # Random labels + a big learning rate on few groups: the model overfits, val loss rises.
    h, g, y = toy_latent(40, signal=False, seed=3)
    cfg = make_cfg(epochs=40, lr=1e-2, patience=3, batch_groups=4, progress=False, val_fraction=0.5)
    res = train_ebm(latent(), h, g, y, cfg)
    val_losses = [r["val_loss"] for r in res.history]
    assert res.best_epoch == int(np.argmin(val_losses))
    assert len(res.history) == res.best_epoch + cfg.patience + 1 < cfg.epochs  # stopped early
    rows = np.isin(g, res.val_groups)
    now = group_pair_metrics(score(res.model, h[rows]), g[rows], y[rows])["loss"]
    assert now == pytest.approx(val_losses[res.best_epoch], rel=1e-5)


def test_latent_ebm_gradient_wrt_input():
    m = latent().eval()
    h = torch.randn(3, 16, requires_grad=True)
    (grad,) = torch.autograd.grad(m(h).sum(), h)
    assert grad.shape == h.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_encode_texts_truncates_question_from_left():
    tok = tiny_tokenizer()
    ids, mask = encode_texts(tok, ["ABCDEFGHIJ", "Q"], ["xyz", "w" * 30], max_len=8)
    assert ids.shape == (2, 8)
    row0 = tok.decode(ids[0][mask[0].bool()].tolist())
    assert row0 == "GHIJ\nxyz"  # question's start dropped, completion end kept
    assert tok.decode(ids[1].tolist()) == "w" * 8  # over-long completion keeps its end
    ids2, mask2 = encode_texts(tok, ["Q"], ["a"], max_len=8)
    assert ids2.shape == (1, 3) and mask2.sum() == 3
    cfg = TextEBMConfig(vocab_size=len(tok), d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=16, dropout=0.0)
    assert cfg.pad_id == len(tok) and cfg.cls_id == len(tok) + 1
    assert cfg.pad_id not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)


def test_text_ebm_learns_marker_char():
    tok = tiny_tokenizer()
    rng = np.random.default_rng(0)
    qs, cs, ys, gs = [], [], [], []
    alphabet = list("abcdefghij0123456789 ")
    for grp in range(100):
        labels = [True, False] + list(rng.random(2) < 0.5)
        for ok in labels:
            body = list(rng.choice(alphabet, size=int(rng.integers(8, 20))))
            if ok:  # right completions contain a marker char somewhere
                body.insert(int(rng.integers(0, len(body) + 1)), "#")
            qs.append(f"Q{grp}: add the numbers")
            cs.append("".join(body))
            ys.append(ok)
            gs.append(grp)
    ids, mask = encode_texts(tok, qs, cs, max_len=48)
    torch.manual_seed(0)
    cfg = TextEBMConfig(vocab_size=len(tok), d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=48, dropout=0.1)
    res = train_ebm(TextEBM(cfg), (ids, mask), gs, ys, make_cfg(epochs=8, lr=3e-3, patience=2, progress=False))
    assert best_val_auroc(res) > 0.9
    assert score(res.model, TokenInputs(ids, mask)).shape == (len(ys),)


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    t = TextEBM(TextEBMConfig(vocab_size=104, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_len=16, dropout=0.1)).eval()
    ids = torch.randint(0, 104, (3, 10))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    save_ebm(t, tmp_path / "t.pt")
    t2 = load_ebm(tmp_path / "t.pt")
    assert isinstance(t2, TextEBM) and t2.config == t.config
    assert torch.equal(t(ids, mask), t2(ids, mask))
    lat = latent().eval()
    save_ebm(lat, tmp_path / "sub" / "l.pt")
    lat2 = load_ebm(tmp_path / "sub" / "l.pt")
    h = torch.randn(5, 16)
    assert torch.equal(lat(h), lat2(h))
    # padding positions do not change the energy of the padded row
    ids_b = ids.clone()
    ids_b[0, 6:] = 7
    assert torch.allclose(t(ids, mask)[0], t(ids_b, mask)[0], atol=1e-6)


@pytest.mark.parametrize("n_layers", [1, 3])
def test_text_ebm_eval_forward_equals_the_full_encoder(n_layers):
    """In eval mode the last layer runs for the [CLS] row only and attention goes through
    scaled_dot_product_attention; the energies equal those of the full nn.TransformerEncoder pass
    (what training runs) on padded batches."""
    torch.manual_seed(0)
    cfg = TextEBMConfig(vocab_size=50, d_model=16, n_layers=n_layers, n_heads=2, d_ff=32, max_len=32, dropout=0.1)
    model = TextEBM(cfg).eval()
    ids = torch.randint(0, 50, (6, 20))
    mask = torch.ones_like(ids)
    for i, n in enumerate([20, 3, 11, 1, 19, 7]):
        mask[i, n:] = 0
        ids[i, n:] = cfg.pad_id
    cls = torch.full((6, 1), cfg.cls_id)
    x = model.tok(torch.cat([cls, ids], 1)) + model.pos(torch.arange(21))[None]
    keep = torch.cat([torch.ones(6, 1, dtype=torch.bool), mask.bool()], 1)
    with torch.no_grad():
        full = model.head(model.norm(model.encoder(x, src_key_padding_mask=~keep)[:, 0])).squeeze(-1)
        fast = model(ids, mask)
        model.train()
        torch.manual_seed(1)
        dropped = model(ids, mask)  # training runs every layer in full, with dropout
    torch.testing.assert_close(fast, full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(dropped, full, atol=1e-3)


def _padded_batch(cfg: TextEBMConfig, lengths: list[int]) -> TokenInputs:
    ids = torch.randint(0, cfg.vocab_size, (len(lengths), max(lengths)))
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = cfg.pad_id
    return TokenInputs(ids, mask)


def test_bf16_scoring_runs_a_fresh_half_encoder_and_leaves_the_model_fp32():
    """``score(dtype="bfloat16")`` runs a copy whose encoder layers are bf16: its energies stay within
    bf16 rounding of fp32 (far from equal: the half path really ran), the model's own weights stay
    fp32, and a change to the model's weights reaches the next bf16 score (no stale half copy)."""
    torch.manual_seed(0)
    cfg = TextEBMConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=32, dropout=0.0)
    model = TextEBM(cfg).eval()
    inputs = _padded_batch(cfg, [20, 3, 11, 1, 19, 7, 14, 5])
    fp32, bf16 = score(model, inputs), score(model, inputs, dtype="bfloat16")
    spread = fp32.max() - fp32.min()
    assert 0 < np.abs(bf16 - fp32).max() < 0.05 * spread
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    half = model.scoring_copy(torch.bfloat16)
    assert half.tok is model.tok and half.head is model.head and half.encoder is not model.encoder
    assert half.encoder.layers[0].linear1.weight.dtype == torch.bfloat16 and half.norm.weight.dtype == torch.float32
    with torch.no_grad():
        model.encoder.layers[1].linear2.weight.mul_(3.0)
    moved = score(model, inputs, dtype="bfloat16")
    np.testing.assert_allclose(moved, score(model, inputs), atol=0.05 * spread)
    assert np.abs(moved - bf16).max() > 0.1 * spread


def test_score_in_length_order_returns_energies_in_row_order():
    """``score`` batches token rows by length; each row's energy comes back in its own place, equal to
    scoring that row alone (a missing un-sort would permute them)."""
    torch.manual_seed(0)
    cfg = TextEBMConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=32, dropout=0.0)
    model = TextEBM(cfg).eval()
    lengths = [20, 3, 11, 1, 19, 7, 3, 14]
    ids = torch.randint(0, 50, (len(lengths), 20))
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = cfg.pad_id
    alone = np.array([score(model, (ids[i:i + 1, :n], mask[i:i + 1, :n]), batch_size=1)[0] for i, n in enumerate(lengths)])
    batched = score(model, TokenInputs(ids, mask), batch_size=3)
    np.testing.assert_allclose(batched, alone, atol=1e-5, rtol=1e-5)
    assert len(set(np.round(alone, 4))) == len(lengths)  # distinct energies: a permutation would show


def _repeated_token_rows(n_groups: int = 24, seed: int = 0):
    """Token rows where every candidate appears twice in its group (sampled answers repeat)."""
    rng = np.random.default_rng(seed)
    rows, gs, ys = [], [], []
    for g in range(n_groups):
        for k in range(3):
            row = rng.integers(0, 40, size=int(rng.integers(3, 9)))
            if k == 0:
                row[0] = 7  # the right one carries a marker token
            rows += [row, row.copy()]
            gs += [g, g]
            ys += [k == 0, k == 0]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), 50, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask, np.array(gs), np.array(ys)


def test_distinct_rows_runs_each_repeat_once_and_maps_back():
    ids, mask, _, _ = _repeated_token_rows()
    (du, mu), inverse = distinct_rows((ids, mask))
    assert len(du) == len(ids) // 2
    torch.testing.assert_close(du[inverse], ids)
    torch.testing.assert_close(mu[inverse], mask)
    same, inv_same = distinct_rows((du, mu))  # already distinct: returned as is
    assert same[0] is du and torch.equal(inv_same, torch.arange(len(du)))


def test_score_of_repeated_rows_equals_scoring_every_row():
    torch.manual_seed(0)
    cfg = TextEBMConfig(vocab_size=50, d_model=16, n_layers=2, n_heads=2, d_ff=32, max_len=16, dropout=0.0)
    model = TextEBM(cfg).eval()
    ids, mask, _, _ = _repeated_token_rows()
    every = np.concatenate([score(model, (ids[i:i + 1], mask[i:i + 1])) for i in range(len(ids))])
    np.testing.assert_allclose(score(model, TokenInputs(ids, mask)), every, atol=1e-5, rtol=1e-5)


def test_loss_and_gradients_on_distinct_rows_equal_running_every_row():
    """The training step's claim: energies of distinct rows mapped back give the pairwise loss and the
    gradients that running every row gives (no dropout)."""
    ids, mask, gs, ys = _repeated_token_rows()
    torch.manual_seed(0)
    cfg = TextEBMConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=16, dropout=0.0)
    model = TextEBM(cfg).train()
    g, y = torch.as_tensor(gs), torch.as_tensor(ys)

    def grads(energies):
        model.zero_grad()
        loss = pairwise_loss(energies, g, y)
        loss.backward()
        return loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    (du, mu), inverse = distinct_rows((ids, mask))
    loss_d, grad_d = grads(model(du, mu)[inverse])
    loss_e, grad_e = grads(model(ids, mask))
    assert loss_d == pytest.approx(loss_e, rel=1e-6)
    assert grad_d.keys() == grad_e.keys()
    for k in grad_e:
        torch.testing.assert_close(grad_d[k], grad_e[k], atol=1e-6, rtol=1e-4)
    shuffled = inverse[torch.randperm(len(inverse), generator=torch.Generator().manual_seed(0))]
    assert pairwise_loss(model(du, mu)[shuffled], g, y).item() != pytest.approx(loss_e, rel=1e-3)


def test_training_runs_each_repeated_row_once(monkeypatch):
    """train_ebm feeds the model each distinct row of a step once: with every candidate twice it sees
    half the rows, and ends where running every row ends (Adam magnifies rounding in near-zero
    gradients, so the energies, not the raw weights, are compared)."""
    import impetus.learned.train as train_mod

    ids, mask, gs, ys = _repeated_token_rows()
    cfg = TextEBMConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=16, dropout=0.0)

    def fit():
        torch.manual_seed(0)
        model, seen = TextEBM(cfg), []
        model.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])) if m.training else None)
        res = train_ebm(model, (ids, mask), gs, ys, make_cfg(epochs=8, lr=1e-2, patience=100, progress=False))
        return score(res.model, TokenInputs(ids, mask)), sum(seen)

    e_dedup, n_dedup = fit()
    monkeypatch.setattr(train_mod, "distinct_rows", lambda batch: (batch, torch.arange(len(batch[0]))))
    e_every, n_every = fit()
    assert n_dedup * 2 == n_every
    assert e_every.std() > 1.0  # trained well away from the initial energies ...
    np.testing.assert_allclose(e_dedup, e_every, atol=0.05)  # ... to the same place
    assert group_pair_metrics(e_dedup, gs, ys)["pair_acc"] > 0.85  # energies stayed with their rows
