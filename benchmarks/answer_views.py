"""Probe: does the LM's likelihood of a candidate's answer under other views of an arith question
separate right answers from wrong ones better than the vote?

Usage (after a ``v1_rerank`` run on an ``arith`` testbed; reads its graded candidates, problems and
prompts; train-side problems, train + dev, unless ``--eval``)::

    python benchmarks/answer_views.py [--eval]

For each problem's distinct sampled answers ``c`` it teacher-forces, in fp32, the run's few-shot
prefix and then: ``same``: ``Q: What is a op b?\nA: a op b =`` + `` c`` (the equation the chains
write); ``swap``: the same with the operands swapped (``b op a``), a view no chain saw; ``direct``:
``A: The answer is`` + `` c`` (no equation). Prints each view's top-1 accuracy (the answer it scores
highest, per problem), the vote's (``count``), sums of views, and each view's within-problem AUROC
over the problems with right and wrong answers. Slow (one pass per answer and view, the prefix
included): about 5 minutes for 240 problems on 2 cores.
"""
import json
import re
import sys

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from impetus.lm.loading import load_recorded

VIEWS = ("same", "swap", "direct")


def logp(model, tok, contexts: list[str], conts: list[str]) -> list[float]:  # noqa: ANN001 - HF model, tokenizer
    """sum log P(cont | context) for each pair, 32 pairs a pass."""
    out = []
    for i in range(0, len(contexts), 32):
        ctx, cont = contexts[i:i + 32], conts[i:i + 32]
        ids = [tok(c, add_special_tokens=False)["input_ids"] for c in ctx]
        cids = [tok(c + d, add_special_tokens=False)["input_ids"][len(a):] for c, d, a in zip(ctx, cont, ids)]
        seqs = [a + b for a, b in zip(ids, cids)]
        x = torch.full((len(seqs), max(map(len, seqs))), tok.eos_token_id or 0)
        m = torch.zeros_like(x)
        for j, seq in enumerate(seqs):
            x[j, :len(seq)] = torch.tensor(seq)
            m[j, :len(seq)] = 1
        with torch.no_grad():
            lp = model(input_ids=x, attention_mask=m).logits.float().log_softmax(-1)
        for j, (a, b) in enumerate(zip(ids, cids)):
            pos = torch.arange(len(a) - 1, len(a) + len(b) - 1)
            out.append(float(lp[j, pos, torch.tensor(b)].sum()))
    return out


def answer_rows(graded: pd.DataFrame, problems: pd.DataFrame, prompts: pd.DataFrame) -> pd.DataFrame:
    """One row per (problem, distinct answer) with its vote count and each view's context."""
    rows = []
    for pid, grp in graded.groupby("problem_id"):
        a, op, b = re.match(r"(\d+) (\S) (\d+)", json.loads(problems.loc[pid, "meta"])["expression"]).groups()
        prefix = prompts.loc[pid, "prompt"].rsplit("Q:", 1)[0]
        for c in grp["answer"].dropna().unique():
            rows.append(dict(problem_id=pid, answer=c, right=c == problems.loc[pid, "gold"],
                             count=int((grp["answer"] == c).sum()),
                             ctx_same=f"{prefix}Q: What is {a} {op} {b}?\nA: {a} {op} {b} =",
                             ctx_swap=f"{prefix}Q: What is {b} {op} {a}?\nA: {b} {op} {a} =",
                             ctx_direct=f"{prefix}Q: What is {a} {op} {b}?\nA: The answer is"))
    return pd.DataFrame(rows)


def main() -> None:
    evaluate = "--eval" in sys.argv[1:]
    lm = json.loads(open("data/06_models/base_lm.json").read())
    model, tok = load_recorded(lm, device="cpu", dtype="float32")
    model.eval()
    splits = ["eval"] if evaluate else ["train", "dev"]
    graded = pd.concat([pd.read_parquet(f"data/03_primary/graded_{s}.parquet") for s in splits])
    problems = pd.concat([pd.read_parquet(f"data/02_intermediate/problems_{s}.parquet") for s in splits])
    prompts = pd.concat([pd.read_parquet(f"data/03_primary/prompts_{s}.parquet") for s in splits])
    r = answer_rows(graded, problems.set_index("problem_id"), prompts.set_index("problem_id"))
    for v in VIEWS:
        r[f"lp_{v}"] = logp(model, tok, list(r[f"ctx_{v}"]), [f" {c}" for c in r["answer"]])
    r["lp_same+swap"] = r["lp_same"] + r["lp_swap"]
    r["log_count+swap"] = np.log(r["count"]) + r["lp_swap"]
    first = graded[graded["sample_idx"] == 0]["correct"].mean()
    print(f"{'eval' if evaluate else 'train-side'} problems {r['problem_id'].nunique()}; one sample "
          f"{first:.3f}; pass@N {r.groupby('problem_id')['right'].any().mean():.3f}")
    mixed = [d for _, d in r.groupby("problem_id") if 0 < d["right"].sum() < len(d)]
    for col in ("count", "lp_same", "lp_swap", "lp_direct", "lp_same+swap", "log_count+swap"):
        top1 = r.loc[r.groupby("problem_id")[col].idxmax(), "right"].mean()
        auroc = np.mean([roc_auc_score(d["right"], d[col]) for d in mixed])
        print(f"{col:15s} top-1 {top1:.3f}   within-problem AUROC {auroc:.3f} over {len(mixed)} problems")


if __name__ == "__main__":
    main()
