"""Shared fixtures for the LM tests: a tiny Llama with weights scaled up so greedy text varies."""

from __future__ import annotations

import pytest
import torch

from impetus.testing import tiny_llama, tiny_tokenizer


def make_tiny(seed: int = 0):
    """Tiny model + tokenizer. The default init (std 0.02) makes a random model repeat one token
    forever, which would make "equals model.generate" tests vacuous; std 0.3 gives varied text."""
    tok = tiny_tokenizer()
    tok.padding_side = "left"
    model = tiny_llama(seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3, generator=gen)
    model.eval()
    return model, tok


@pytest.fixture(scope="session")
def tiny():
    return make_tiny()
