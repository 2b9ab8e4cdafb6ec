"""Tiny, fully offline model fixtures for unit tests and notebooks.

A character-level tokenizer and a 2-layer random Llama are built in code, so tests never touch a hub
and run in well under a second on CPU.
"""

from __future__ import annotations

import string

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL = ["<pad>", "<s>", "</s>", "<unk>"]
CHARS = list(string.printable)

# A ChatML-like template, so code paths that apply a chat template work on the tiny model too.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level fast tokenizer (one token per printable ASCII char) with pad/bos/eos/unk."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(vocab_size: int | None = None, seed: int = 0, hidden: int = 64, layers: int = 2) -> LlamaForCausalLM:
    """A randomly initialised 2-layer Llama small enough for fast CPU unit tests."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size or len(SPECIAL) + len(CHARS),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    model.eval()
    return model
