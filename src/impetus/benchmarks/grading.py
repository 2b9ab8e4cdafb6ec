"""Prompt building and grading of candidate tables with a benchmark's own rules.

Kept next to the registry (not in a Kedro node) so a notebook can rebuild exactly the prompts and
grades a pipeline run used.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import pandas as pd

from impetus.benchmarks.base import Benchmark, as_text, is_missing

logger = logging.getLogger(__name__)


def build_prompts(
    bench: Benchmark,
    problems: pd.DataFrame,
    fewshot: pd.DataFrame | None,
    style: str,
    tokenizer: Any | None = None,
) -> list[str]:
    """One prompt string per problem row, in order.

    ``fewshot`` rows are the exemplars persisted by the ingest stage (never eval problems). For the
    ``chat_cot`` style the tokenizer's chat template is applied here, so that the sampler and the
    teacher-forced scorer see byte-identical prompts.
    """
    shots = fewshot if fewshot is not None and len(fewshot) else None
    texts = [bench.prompt(row, style, shots=shots) for row in problems.to_dict("records")]
    if style != "chat_cot":
        return texts
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt_style 'chat_cot' needs a tokenizer with a chat template")
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
        )
        for t in texts
    ]


def build_prompt_table(
    bench: Benchmark, problems: pd.DataFrame, fewshot: pd.DataFrame | None, style: str,
    tokenizer: Any | None = None, orders: int = 1,
) -> pd.DataFrame:
    """``problem_id, prompt`` per problem, or with ``orders > 1`` one row per problem and order
    (column ``order``, 0 = the source's order of the choices; multiple choice only): the N samples
    of a problem are then spread over its orders (:mod:`impetus.lm.orders`)."""
    if orders <= 1:
        return pd.DataFrame({"problem_id": problems["problem_id"].to_numpy(),
                             "prompt": build_prompts(bench, problems, fewshot, style, tokenizer)})
    rows = problems.to_dict("records")
    parts = []
    for order in range(orders):
        shown = pd.DataFrame([bench.permuted(r, order) for r in rows], columns=problems.columns)
        parts.append(pd.DataFrame({"problem_id": problems["problem_id"].to_numpy(), "order": order,
                                   "prompt": build_prompts(bench, shown, fewshot, style, tokenizer)}))
    # Problem-major, order-minor: the rows of one problem sit together, as they are sampled.
    table = pd.concat(parts, ignore_index=True)
    return table.sort_values(["problem_id", "order"], kind="stable", key=_input_order(problems)).reset_index(drop=True)


def build_choice_table(bench: Benchmark, problems: pd.DataFrame, fewshot: pd.DataFrame | None, shots: int) -> pd.DataFrame:
    """``problem_id, prompt, choices`` for ``sampling.candidates: choices``: the context every choice
    is scored after (lm-eval's prompt, after ``shots`` exemplars from ``fewshot``) and the
    continuations (delimiter + choice text). A problem without choices fails, naming it."""
    exemplars = [] if shots == 0 else (fewshot.to_dict("records") if fewshot is not None else [])
    if len(exemplars) < shots:
        raise ValueError(f"sampling.choice_shots={shots} but only {len(exemplars)} few-shot exemplars were reserved "
                         f"({bench.name}: n_shots={bench.n_shots})")
    rows, contexts, continuations = problems.to_dict("records"), [], []
    for row in rows:
        texts = bench.choice_texts(row)
        if not texts:
            raise ValueError(f"{bench.name}: problem {row['problem_id']!r} has no choices to score; "
                             "use sampling.candidates=sampled for a free-form benchmark or task")
        contexts.append(bench.choice_context(row, exemplars[:shots]))
        continuations.append([bench.choice_delimiter + t for t in texts])
    return pd.DataFrame({"problem_id": problems["problem_id"].to_numpy(), "prompt": contexts,
                         "choices": pd.Series(continuations, dtype=object)})


def grade_choices(bench: Benchmark, candidates: pd.DataFrame, problems: pd.DataFrame) -> pd.DataFrame:
    """Exact grading of scored choices: a row's answer is its choice's label, right iff it is the gold.
    The answer span is the choice's text (the completion after the delimiter)."""
    rows = problem_rows(problems)
    missing = set(candidates["problem_id"]) - set(rows)
    if missing:
        raise ValueError(f"{len(missing)} candidate problem_ids are not in the problems table, e.g. {sorted(missing)[:3]}")
    out = candidates.copy()
    labels = {p: bench.choice_labels(r) for p, r in rows.items()}
    answers = [labels[p][int(j)] for p, j in zip(out["problem_id"], out["sample_idx"])]
    out["answer"] = pd.Series(answers, index=out.index, dtype=object)
    start = len(bench.choice_delimiter)
    out["answer_start"] = pd.array([start] * len(out), dtype="Int64")
    out["answer_end"] = pd.array([len(str(t)) for t in out["completion"]], dtype="Int64")
    out["correct"] = [bool(bench.grade(a, rows[p]["gold"])) for a, p in zip(answers, out["problem_id"])]
    out["truncated"] = False
    no_gold = sorted(set(out["problem_id"]) - set(out.loc[out["correct"], "problem_id"]))
    if no_gold:  # kept (wrong for every method), never dropped: e.g. a BBH target that is no listed option
        logger.warning("%d problems have no choice equal to their gold, e.g. %s", len(no_gold), no_gold[:3])
    return out


def _input_order(problems: pd.DataFrame) -> Callable[[pd.Series], pd.Series]:
    rank = {pid: i for i, pid in enumerate(problems["problem_id"])}
    return lambda col: col.map(rank) if col.name == "problem_id" else col


def one_prompt_per_problem(prompts: pd.DataFrame, stage: str) -> pd.DataFrame:
    """``prompts`` itself when it holds one prompt per problem; else a ValueError naming ``stage``,
    which conditions on a problem's one prompt (V2, EBD, teacher-forced energies), or that decodes
    from it: scored choices (``sampling.candidates: choices``) have no answer to decode or re-score."""
    if "choices" in prompts.columns:
        raise ValueError(
            f"{stage} works on sampled answers, but these candidates are multiple-choice problems' scored "
            "choices (sampling.candidates=choices, whose energies are recorded while scoring); run it on "
            "candidates sampled with --params sampling.candidates=sampled"
        )
    if "order" in prompts.columns and prompts["problem_id"].duplicated().any():
        raise ValueError(
            f"{stage} needs one prompt per problem, but the candidates were sampled with several orders "
            "of the answer choices (sampling.choice_orders > 1); run it on candidates sampled with "
            "sampling.choice_orders=1"
        )
    return prompts


def problem_rows(problems: pd.DataFrame) -> dict[Any, dict[str, Any]]:
    """``problem_id -> row`` (a dict) of a problems table: what every grading rule is handed, since
    ``extract_span``/``grade`` may read more than the text (e.g. an ARC row's choice labels)."""
    return {r["problem_id"]: r for r in problems.to_dict("records")}


def answer_locator(bench: Benchmark, problems: pd.DataFrame) -> Callable[[Any, str], "tuple[int, int] | None"]:
    """``(problem_id, text) -> (start, end)`` character span of the answer the grader would read,
    or None: the grading rule for the sampler's recorded answer state."""
    rows = problem_rows(problems)

    def span(problem_id: Any, text: str) -> tuple[int, int] | None:
        found = bench.extract_span(text, rows[problem_id])
        return (found[1], found[2]) if found else None

    return span


def answer_reader(bench: Benchmark, problems: pd.DataFrame) -> Callable[[Any, str], "str | None"]:
    """``(problem_id, text) -> answer``: the canonical answer :func:`grade_candidates` would read
    (None when there is none), for adaptive N's vote while sampling (prompts in the source's order)."""
    rows = problem_rows(problems)

    def read(problem_id: Any, text: str) -> str | None:
        return bench.extract(text, rows[problem_id])

    return read


def grade_candidates(bench: Benchmark, candidates: pd.DataFrame, problems: pd.DataFrame) -> pd.DataFrame:
    """Add ``answer`` (None when not found), ``correct``, the answer's character span and ``truncated``.

    A completion without an answer is graded wrong and kept (never dropped), so every selection
    method is judged on the same candidates; the count is logged. Missing completions, answers
    or golds (None, NaN, ``pd.NA``: what pandas makes of None after a parquet round trip) count as
    "no answer" and are graded wrong. ``truncated`` is True where ``finish_reason == "length"``:
    the completion hit ``max_new_tokens``, so its "answer" is often just an operand.
    """
    rows = problem_rows(problems)
    missing = set(candidates["problem_id"]) - set(rows)
    if missing:
        raise ValueError(
            f"{len(missing)} candidate problem_ids are not in the problems table, e.g. {sorted(missing)[:3]}"
        )
    out = candidates.copy()
    # A candidate sampled under another order of the choices is read as that prompt showed them,
    # then its answer is mapped back to the source's label, so votes and grades are over choices.
    orders = out["order"].astype(int).tolist() if "order" in out.columns else [0] * len(out)
    shown = [rows[p] if o == 0 else bench.permuted(rows[p], o) for p, o in zip(out["problem_id"], orders)]
    # The row is passed so that e.g. ARC questions with numeric labels extract "2", not "B".
    spans = [None if is_missing(t) else bench.extract_span(as_text(t), r) for t, r in zip(out["completion"], shown)]
    # Canonical answers (e.g. "7.0" -> "7"), so equal answers vote together. Graded from this
    # list, not from the column read back: pandas would hand NaN back for the None entries.
    answers = [bench.original_answer(bench.answer_of(s, r), rows[p], o)
               for s, r, p, o in zip(spans, shown, out["problem_id"], orders)]
    out["answer"] = pd.Series(answers, index=out.index, dtype=object)
    out["answer_start"] = pd.array([s[1] if s else None for s in spans], dtype="Int64")
    out["answer_end"] = pd.array([s[2] if s else None for s in spans], dtype="Int64")
    out["correct"] = [
        a is not None and not is_missing(rows[p]["gold"]) and bool(bench.grade(a, rows[p]["gold"]))
        for a, p in zip(answers, out["problem_id"])
    ]
    out["truncated"] = truncated_mask(out)
    n_none = sum(a is None for a in answers)
    if n_none:
        logger.warning("%d of %d candidates have no extractable answer (graded wrong)", n_none, len(out))
    n_trunc = int(out["truncated"].sum())
    if n_trunc:
        logger.warning("%d of %d candidates were cut by max_new_tokens (finish_reason 'length')",
                       n_trunc, len(out))
    return out


def truncated_mask(df: pd.DataFrame) -> pd.Series:
    """Boolean ``truncated`` of a candidates/graded table: its own column, else finish_reason == "length".

    A table without either column (hand-built, or from before finish_reason was recorded) counts
    as not truncated rather than failing, since truncation is a diagnostic, not a grade.
    """
    if "truncated" in df.columns:
        return df["truncated"].fillna(False).astype(bool)
    if "finish_reason" in df.columns:
        return df["finish_reason"].eq("length").fillna(False).astype(bool)
    return pd.Series(False, index=df.index, dtype=bool)


def grading_summary(graded: pd.DataFrame) -> dict[str, float]:
    """Per-sample accuracy, pass@N (any candidate right), no-answer and truncation counts.

    Keys: sample_accuracy, pass_at_n, first_sample_accuracy, no_answer_share, n_no_answer,
    truncated_share, n_truncated, n_candidates, n_problems.
    """
    correct = graded["correct"].fillna(False).astype(bool)
    per_problem = correct.groupby(graded["problem_id"])
    no_answer = graded["answer"].map(is_missing).astype(bool)
    truncated = truncated_mask(graded)
    first = graded.assign(_c=correct).sort_values("sample_idx", kind="stable").groupby("problem_id")["_c"].first()
    return {
        "sample_accuracy": float(correct.mean()),
        "pass_at_n": float(per_problem.any().mean()),
        "first_sample_accuracy": float(first.mean()),
        "no_answer_share": float(no_answer.mean()),
        "n_no_answer": int(no_answer.sum()),
        "truncated_share": float(truncated.mean()),
        "n_truncated": int(truncated.sum()),
        "n_candidates": int(len(graded)),
        "n_problems": int(graded["problem_id"].nunique()),
    }


#: ``grade(problem_id, text) -> (canonical answer or None, correct)`` (what :func:`text_grader` returns).
Grade = Callable[[Any, str], "tuple[str | None, bool]"]


def text_grader(bench: Benchmark, problems: pd.DataFrame) -> Grade:
    """``grade(problem_id, text) -> (canonical answer or None, correct)`` with the benchmark's rules,
    for answers produced after sampling (V2, EBD) that are graded one at a time."""
    rows = problem_rows(problems)

    def grade(problem_id: str, text: str) -> tuple[str | None, bool]:
        found = bench.extract_span(text, rows[problem_id])
        answer = bench.answer_of(found, rows[problem_id])
        return answer, bool(answer is not None and bench.grade(answer, rows[problem_id]["gold"]))

    return grade
