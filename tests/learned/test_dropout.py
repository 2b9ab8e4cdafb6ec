"""Training's dropout: ``impetus.learned.models.dropout`` in place of ``F.dropout`` (whose
``bernoulli_`` was 28% of a TextEBM step on the AMD EPYC), and the TextEBM's training forward."""

import pytest
import torch

from impetus.learned.models import Dropout, LatentEBM, LatentEBMConfig, TextEBM, TextEBMConfig, dropout


def test_dropout_zeroes_a_share_p_and_keeps_the_mean():
    torch.manual_seed(0)
    x = torch.full((400_000,), 2.0)
    y = dropout(x, 0.1)
    zero = (y == 0).float().mean().item()
    assert abs(zero - 0.1) < 0.003
    assert torch.all((y == 0) | torch.isclose(y, torch.tensor(2.0 / 0.9)))
    assert abs(y.mean().item() - 2.0) < 0.01


def test_dropout_is_fixed_by_the_seed_and_passes_gradients_through_its_mask():
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(3)
    a = dropout(x, 0.3)
    torch.manual_seed(3)
    b = dropout(x, 0.3)
    torch.manual_seed(4)
    c = dropout(x, 0.3)
    assert torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    kept = a.detach() != 0
    torch.testing.assert_close(x.grad, kept.float() / 0.7)


def test_dropout_of_zero_is_the_input_and_bad_probabilities_fail():
    x = torch.randn(5)
    assert dropout(x, 0.0) is x
    for p in (1.0, -0.1):
        with pytest.raises(ValueError, match="dropout probability"):
            dropout(x, p)


def test_latent_ebm_drops_in_training_only():
    torch.manual_seed(0)
    model = LatentEBM(LatentEBMConfig(input_dim=8, hidden=64, n_layers=2, dropout=0.5))
    assert sum(isinstance(m, Dropout) for m in model.modules()) == 2
    h = torch.randn(32, 8)
    model.eval()
    torch.testing.assert_close(model(h), model(h))
    model.train()
    torch.manual_seed(1)
    a = model(h)
    torch.manual_seed(2)
    assert not torch.allclose(a, model(h))


def _batch(cfg: TextEBMConfig, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(0, cfg.vocab_size, (len(lengths), max(lengths)))
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = cfg.pad_id
    return ids, mask


@pytest.mark.parametrize("n_layers", [1, 2])
def test_text_ebm_training_forward_equals_torchs_encoder_without_dropout(n_layers):
    """With dropout 0 the training forward (explicit layers, explicit attention) gives the energies
    and gradients of nn.TransformerEncoder's own training pass on padded batches."""
    torch.manual_seed(0)
    cfg = TextEBMConfig(vocab_size=50, d_model=16, n_layers=n_layers, n_heads=2, d_ff=32, max_len=32, dropout=0.0)
    model = TextEBM(cfg).train()
    ids, mask = _batch(cfg, [20, 3, 11, 1, 19, 7])
    ours = model(ids, mask)
    ours.square().sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    cls = torch.full((6, 1), cfg.cls_id)
    x = model.tok(torch.cat([cls, ids], 1)) + model.pos(torch.arange(21))[None]
    keep = torch.cat([torch.ones(6, 1, dtype=torch.bool), mask.bool()], 1)
    theirs = model.head(model.norm(model.encoder(x, src_key_padding_mask=~keep)[:, 0])).squeeze(-1)
    theirs.square().sum().backward()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    for k, p in model.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, atol=1e-5, rtol=1e-4, msg=k)


def test_text_ebm_training_drops_attention_weights_too():
    """Dropout only on the attention weights (the layers' other dropouts set to 0) still changes
    the energies: the explicit attention applies it."""
    torch.manual_seed(0)
    cfg = TextEBMConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=32, dropout=0.5)
    model = TextEBM(cfg).train()
    for layer in model.encoder.layers:
        layer.dropout.p = layer.dropout1.p = layer.dropout2.p = 0.0
    ids, mask = _batch(cfg, [9, 4, 12])
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(ids, mask)
        torch.manual_seed(1)
        b = model(ids, mask)
        torch.manual_seed(2)
        c = model(ids, mask)
        for layer in model.encoder.layers:
            layer.self_attn.dropout = 0.0
        d = model(ids, mask)
        e = model(ids, mask)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    torch.testing.assert_close(d, e)
