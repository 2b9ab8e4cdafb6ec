"""Online adaptive N: waves draw the same rows as a full-N call and stop settled problems."""

from __future__ import annotations

import pandas as pd
import torch

from impetus.lm.hf_sampler import HFSampler
from impetus.lm.runner import sample_problems
from impetus.lm.sampler import SamplingParams
from impetus.lm.waves import sample_in_waves
from impetus.selection.adaptive import RuleSpec
from impetus.testing import tiny_llama, tiny_tokenizer

PARAMS = SamplingParams(n=6, temperature=1.0, top_p=0.9, max_new_tokens=6, stop=["\n"], batch_size=8, seed=3)
PROMPTS = pd.DataFrame({"problem_id": ["a", "b", "c"], "prompt": ["1+1=", "2+2=", "3+3="]})


def _answer_first_char(problem_id: str, text: str):
    # Problem "a" always gives the same answer (settles at once); the others answer by first char.
    if problem_id == "a":
        return ("7", 0, 0)
    return (text[:1], 0, 1) if text else None


def test_waves_are_prefixes_of_full_n_and_settled_problems_stop(tmp_path):
    torch.set_num_threads(1)
    sampler = HFSampler(tiny_llama(), tiny_tokenizer())
    full, _ = sample_problems(sampler, PROMPTS, PARAMS, tmp_path, shard_size=3, progress=False)
    got = sample_in_waves(sampler, PROMPTS, PARAMS, wave=2, spec=RuleSpec("vote_margin", margin_stop=True),
                          threshold=1.0, answer=_answer_first_char)
    counts = got.groupby("problem_id").size()
    assert counts["a"] == 2  # unanimous after the first wave
    assert counts.max() <= 6 and counts.sum() < len(full)
    for pid, rows in got.groupby("problem_id"):
        ref = full[full.problem_id == pid].head(len(rows))
        assert rows["sample_idx"].tolist() == list(range(len(rows)))
        assert rows["completion"].tolist() == ref["completion"].tolist()


def test_deepconf_rule_uses_recorded_confidence(tmp_path):
    sampler = HFSampler(tiny_llama(), tiny_tokenizer())
    got = sample_in_waves(sampler, PROMPTS, PARAMS, wave=3, spec=RuleSpec("deepconf", weight_col="neg_deepconf_lowest_group"),
                          threshold=0.0, answer=_answer_first_char)
    assert (got.groupby("problem_id").size() == 3).all()  # threshold 0: every problem stops after one wave
    assert got["neg_deepconf_lowest_group"].notna().all()
