"""Cross-check our multiple-choice log-likelihoods against lm-evaluation-harness, on ARC.

Both tools score the same zero-shot problems (the first ``--limit`` of the ARC test file, in file
order) with the same local fp32 model folder, in one process and one ``transformers``:

- lm-eval (``HFLM``, ``model="hf"``) runs a task defined here as a dict over the local jsonl
  (``dataset_path: json``), with lm-eval's own ARC prompt: ``doc_to_text``
  ``"Question: {{question}}\\nAnswer:"``, ``doc_to_choice`` ``"{{choices.text}}"``, target
  delimiter ``" "``, metrics ``acc`` and ``acc_norm``; ``log_samples`` gives each choice's loglik.
- ours: :func:`impetus.lm.hf_choices.score_choices` on the benchmark's ``choice_context`` and
  ``choice_delimiter + text``; a choice's loglik is ``sum(tok_logit - lse[:-1])``.

``acc`` is the argmax of the summed loglik of ``" " + choice`` after the context, ``acc_norm`` the
argmax of loglik / len(choice text in characters). Tokenisation should agree because both follow
lm-eval's ``_encode_pair`` rule: trailing spaces of the context move to the continuation, then
``context`` and ``context + continuation`` are each tokenised (tokenizer defaults, so BOS only if the
tokenizer adds one), and the continuation's tokens are the whole's after the context's length. The
script checks that rule per pair by calling lm-eval's ``_encode_pair`` next to our
``continuation_ids``, and reports the largest per-choice loglik difference and how many problems'
picks differ. Offline: ``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` are forced on here.

    .venv-lmeval/bin/python benchmarks/lmeval_check.py --limit 200   (or: make lmeval-check)
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # a hub download must never be attempted
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from importlib.metadata import version  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

TASK_FILES = {"arc_easy": "ARC-Easy-test.jsonl", "arc_challenge": "ARC-Challenge-test.jsonl"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=sorted(TASK_FILES), default="arc_easy")
    p.add_argument("--model", default="smollm2-135m-instruct", help="model alias or local HF folder")
    p.add_argument("--data", default="../shared/data/arc", help="folder with the ARC-*-test.jsonl files")
    p.add_argument("--limit", type=int, default=200, help="first N test problems, in file order")
    p.add_argument("--batch-size", type=int, default=4, help="lm-eval's batch size")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--tol", type=float, default=1e-3, help="per-choice |loglik difference| counted as agreement")
    p.add_argument("--out", default="data/08_reporting/lmeval_check.json")
    return p.parse_args(argv)


def task_config(task: str, path: Path) -> dict[str, Any]:
    """lm-eval's ARC task, zero-shot, reading the local jsonl instead of the hub."""
    return {
        "task": f"impetus_{task}_check",  # not the registered name, so nothing of the hub task is used
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(path.resolve())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{choices.label.index(answerKey)}}",
        "doc_to_choice": "{{choices.text}}",
        "target_delimiter": " ",
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
    }


def run_lmeval(lm: Any, cfg: dict[str, Any], limit: int) -> tuple[dict[str, float], list[list[float]]]:
    """lm-eval's own ``acc`` / ``acc_norm`` and, per problem (doc order), each choice's loglik."""
    import lm_eval

    res = lm_eval.simple_evaluate(model=lm, tasks=[cfg], num_fewshot=0, limit=limit, log_samples=True,
                                  bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    name = cfg["task"]
    metrics = {k.split(",")[0]: float(v) for k, v in res["results"][name].items() if k in ("acc,none", "acc_norm,none")}
    samples = sorted(res["samples"][name], key=lambda s: s["doc_id"])
    return metrics, [[float(r[0]) for r in s["filtered_resps"]] for s in samples]


def run_ours(model: Any, tok: Any, contexts: list[str], conts: list[list[str]]) -> list[list[float]]:
    """Our per-choice logliks: ``sum(tok_logit - lse[:-1])`` of each :func:`score_choices` record."""
    from impetus.lm.hf_choices import score_choices

    gens = score_choices(model, tok, contexts, conts)
    return [[float(np.sum(g.record["tok_logit"].astype(np.float64) - g.record["lse"][:-1])) for g in row]
            for row in gens]


def token_mismatches(lm: Any, tok: Any, contexts: list[str], conts: list[list[str]]) -> list[dict[str, Any]]:
    """Pairs whose tokens differ between lm-eval's ``_encode_pair`` and ours (expected: none)."""
    from impetus.lm.hf_choices import continuation_ids
    from impetus.lm.scoring import _prompt_ids

    bad = []
    for i, (ctx, row) in enumerate(zip(contexts, conts)):
        ours_ctx = _prompt_ids(tok, ctx, add_special_tokens=True)
        for j, c in enumerate(row):
            theirs = lm._encode_pair(ctx, c)
            ours = (ours_ctx, continuation_ids(tok, ctx, ours_ctx, c))
            if (list(theirs[0]), list(theirs[1])) != ours:
                bad.append({"problem": i, "choice": j, "lmeval": [list(x) for x in theirs], "ours": list(ours)})
    return bad


def picks(lls: list[list[float]], lens: list[list[int]]) -> tuple[list[int], list[int]]:
    """Per problem, the ``acc`` pick (argmax loglik) and the ``acc_norm`` pick (argmax loglik / chars)."""
    raw = [int(np.argmax(ll)) for ll in lls]
    norm = [int(np.argmax(np.asarray(ll) / np.asarray(n, float))) for ll, n in zip(lls, lens)]
    return raw, norm


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from lm_eval.models.huggingface import HFLM

    from impetus.benchmarks import get_benchmark
    from impetus.benchmarks.base import meta_of
    from impetus.lm.loading import load_model, resolve_model

    t0 = time.perf_counter()
    path = resolve_model(args.model)
    data_file = Path(args.data) / TASK_FILES[args.task]
    ids = [json.loads(line)["id"] for line in data_file.read_text().splitlines() if line.strip()][: args.limit]
    bench = get_benchmark(args.task, n_shots=0)  # zero-shot: no test row is taken as an exemplar
    df = bench.load(args.data)
    df = df[df["split"] == "test"].reset_index(drop=True).iloc[: args.limit]
    rows = [r for _, r in df.iterrows()]
    if [meta_of(r)["source_id"] for r in rows] != ids:
        raise SystemExit(f"{args.task}: the benchmark's test rows are not the file's first {args.limit} problems")
    contexts = [bench.choice_context(r) for r in rows]
    texts = [list(bench.choice_texts(r) or []) for r in rows]
    conts = [[bench.choice_delimiter + t for t in row] for row in texts]
    lens = [[len(t) for t in row] for row in texts]
    gold = [bench.choice_labels(r).index(str(r["gold"])) for r in rows]

    lm = HFLM(pretrained=str(path), dtype="float32", device="cpu", batch_size=args.batch_size)
    t1 = time.perf_counter()
    theirs_metrics, theirs = run_lmeval(lm, task_config(args.task, data_file), args.limit)
    t_lmeval = time.perf_counter() - t1
    model, tok = load_model(path, device="cpu", dtype="float32")
    t1 = time.perf_counter()
    ours = run_ours(model, tok, contexts, conts)
    t_ours = time.perf_counter() - t1
    bad_tokens = token_mismatches(lm, tok, contexts, conts)

    if [len(x) for x in theirs] != [len(x) for x in ours]:
        raise SystemExit("lm-eval and ours scored different numbers of choices")
    diffs = [abs(a - b) for ta, tb in zip(theirs, ours) for a, b in zip(ta, tb)]
    at = [(i, j) for i, row in enumerate(ours) for j in range(len(row))][int(np.argmax(diffs))]
    (t_raw, t_norm), (o_raw, o_norm) = picks(theirs, lens), picks(ours, lens)

    def acc(picked: list[int]) -> float:
        return float(np.mean([a == g for a, g in zip(picked, gold)]))

    report = {
        "task": args.task, "model": str(path), "n_problems": len(rows), "n_choices": len(diffs),
        "lmeval": {"acc": theirs_metrics.get("acc"), "acc_norm": theirs_metrics.get("acc_norm"),
                   "acc_recomputed": acc(t_raw), "acc_norm_recomputed": acc(t_norm), "seconds": round(t_lmeval, 1)},
        "ours": {"acc": acc(o_raw), "acc_norm": acc(o_norm), "seconds": round(t_ours, 1)},
        "max_abs_loglik_diff": max(diffs), "mean_abs_loglik_diff": float(np.mean(diffs)),
        "max_diff_at": {"problem": at[0], "choice": at[1], "lmeval": theirs[at[0]][at[1]], "ours": ours[at[0]][at[1]]},
        "n_choices_over_tol": sum(d > args.tol for d in diffs), "tol": args.tol,
        "n_acc_picks_differ": sum(a != b for a, b in zip(t_raw, o_raw)),
        "n_acc_norm_picks_differ": sum(a != b for a, b in zip(t_norm, o_norm)),
        "n_token_mismatches": len(bad_tokens), "token_mismatch_examples": bad_tokens[:5],
        "versions": {"torch": torch.__version__, "transformers": version("transformers"),
                     "lm_eval": version("lm_eval")},
        "threads": torch.get_num_threads(), "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    lm_, ou = report["lmeval"], report["ours"]
    print(f"{args.task}, {len(rows)} problems, {len(diffs)} choices, model {path.name}")
    print(f"  lm-eval : acc {lm_['acc']:.4f}  acc_norm {lm_['acc_norm']:.4f}  ({t_lmeval:.1f} s)")
    print(f"  ours    : acc {ou['acc']:.4f}  acc_norm {ou['acc_norm']:.4f}  ({t_ours:.1f} s)")
    print(f"  max |loglik diff| {report['max_abs_loglik_diff']:.3g} (mean {report['mean_abs_loglik_diff']:.3g}); "
          f"{report['n_choices_over_tol']} choices over {args.tol:g}")
    print(f"  picks differ: acc {report['n_acc_picks_differ']}, acc_norm {report['n_acc_norm_picks_differ']}; "
          f"token mismatches vs _encode_pair: {len(bad_tokens)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"  wrote {out}")
    return report


if __name__ == "__main__":
    main()
