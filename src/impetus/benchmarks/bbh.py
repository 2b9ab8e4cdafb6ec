"""BIG-Bench Hard (Suzgun et al. 2022): 27 tasks, few-shot CoT prompts shipped with the data.

Answers follow the CoT prompts' convention "So the answer is X." Targets are option letters
"(A)", booleans/yes-no words, numbers, or free strings (word_sorting, dyck_languages).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from impetus.benchmarks._io import DataFormatError, EmptySourceError, content_hash, hf_records, read_json, read_text, require
from impetus.benchmarks.base import Benchmark, Row, Span, as_text, make_row, meta_of, register, strip_span
from impetus.benchmarks.numeric import canonical_number

logger = logging.getLogger(__name__)

TASKS = [
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa",
    "dyck_languages", "formal_fallacies", "geometric_shapes", "hyperbaton",
    "logical_deduction_five_objects", "logical_deduction_seven_objects",
    "logical_deduction_three_objects", "movie_recommendation", "multistep_arithmetic_two",
    "navigate", "object_counting", "penguins_in_a_table", "reasoning_about_colored_objects",
    "ruin_names", "salient_translation_error_detection", "snarks", "sports_understanding",
    "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects",
    "web_of_lies", "word_sorting",
]
COT_TRIGGER = "Let's think step by step."
_MARKERS = [re.compile(r"so the answer is", re.I), re.compile(r"the answer is", re.I)]
_OPTION_RE = re.compile(r"\([A-Z]\)")


def extract_bbh_span(text: str | None) -> Span | None:
    """Answer after the last "So the answer is" (else "The answer is"), up to the sentence end."""
    text = as_text(text)
    if text is None:
        return None
    for marker in _MARKERS:
        for m in reversed(list(marker.finditer(text))):
            eol = text.find("\n", m.end())
            eol = len(text) if eol < 0 else eol
            start = m.end()
            while start < eol and text[start] in " \t:*":
                start += 1
            opt = _OPTION_RE.match(text, start)
            if opt:  # "(A) the option text" -> "(A)"
                return opt.group(), opt.start(), opt.end()
            # A sentence ends at ". " (numbers like 3.5 and words keep their inner periods).
            stop = text.find(". ", start, eol)
            span = strip_span(text, start, eol if stop < 0 else stop, chars=" \t*$.")
            if span:
                return span
    return None


def normalize_bbh(s: str | None) -> str:
    """Lowercase, collapse whitespace, drop markdown stars and a trailing period ("" if missing)."""
    s = as_text(s)
    if s is None:
        return ""
    s = " ".join(s.replace("*", " ").split()).lower()
    return s.rstrip(".").strip()


def bbh_equal(answer: str | None, gold: str) -> bool:
    """Option letters compare without parentheses; numbers numerically; else exact normalised text.

    A missing answer or gold (None/NaN/NA) is never equal."""
    answer, gold = as_text(answer), as_text(gold)
    if answer is None or gold is None:
        return False
    a, g = normalize_bbh(answer), normalize_bbh(gold)
    if re.fullmatch(r"\([a-z]\)", g):
        return a.strip("()").strip() == g[1]
    na, ng = canonical_number(a), canonical_number(g)
    if na is not None and ng is not None:
        return math.isclose(float(na), float(ng), rel_tol=1e-6, abs_tol=1e-12)
    return a == g


def parse_cot_prompt(text: str, where: str) -> tuple[str, list[tuple[str, str]]]:
    """Split a cot-prompts file into its description and ``(question, answer)`` exemplars.

    The first line is the BIG-bench canary and is dropped, so it never reaches a model.
    """
    lines = text.split("\n")
    try:
        sep = next(i for i, ln in enumerate(lines) if ln.strip() == "-----")
    except StopIteration:
        raise DataFormatError(f"{where}: line 1: no '-----' line after the canary") from None
    body = "\n".join(lines[sep + 1 :]).strip()
    chunks = re.split(r"\n\n(?=Q: )", body)
    desc, shots = chunks[0].strip(), []
    for chunk in chunks[1:]:
        q, sepa, a = chunk.partition("\nA: ")
        if not sepa:
            raise DataFormatError(f"{where}: exemplar {len(shots) + 1} has no 'A:' line")
        shots.append((q[len("Q: "):].strip(), a.strip()))
    return desc, shots


@register("bbh")
class BBH(Benchmark):
    """All 27 tasks, or one with ``subset="<task>"`` (``get_benchmark("bbh:<task>")``)."""

    default_n_shots = 3  # the shipped CoT prompts have three exemplars
    local_hint = "../shared/data/bbh"
    answer_prefix = " " + COT_TRIGGER
    chat_instruction = "Think step by step, then finish with 'So the answer is <answer>.'"

    def __init__(self, subset: str | None = None, tasks: list[str] | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        chosen = [subset] if subset else (list(tasks) if tasks else list(TASKS))
        unknown = [t for t in chosen if t not in TASKS]
        if unknown:
            raise ValueError(f"Unknown BBH task(s) {unknown}; known: {', '.join(TASKS)}")
        self.tasks = chosen
        self._descriptions: dict[str, str] = {}

    def expected_layout(self) -> str:
        return "a folder with bbh/<task>.json and cot-prompts/<task>.txt (or <task>.json files directly)"

    def _task_rows(self, task: str, examples: list[Any], where: str) -> list[dict[str, Any]]:
        rows, seen = [], {}
        for i, ex in enumerate(examples, start=1):
            if not isinstance(ex, dict):
                raise DataFormatError(f"{where}: example {i}: expected an object")
            require(ex, ("input", "target"), f"{where} (example {i})", i)
            h = content_hash(ex["input"], n=10)
            # Two tasks repeat an input verbatim; number repeats in file order to keep ids unique.
            seen[h] = seen.get(h, 0) + 1
            pid = f"bbh-{task}-{h}" + (f"-{seen[h]}" if seen[h] > 1 else "")
            rows.append(make_row(
                pid, self.name, "test", str(ex["input"]), str(ex["target"]).strip(), {"task": task},
                origin=f"{where}: example {i}",
            ))
        return rows

    def _shot_rows(self, task: str, cot: Path) -> list[dict[str, Any]]:
        desc, shots = parse_cot_prompt(read_text(cot), str(cot))
        self._descriptions[task] = desc
        rows = []
        for i, (q, a) in enumerate(shots[: self.n_shots]):
            span = extract_bbh_span(a)
            if span is None:
                raise DataFormatError(f"{cot}: exemplar {i + 1} has no 'So the answer is' sentence")
            # The description travels in meta so a fresh instance can rebuild prompts from saved shots.
            meta = {"task": task, "solution": a, "description": desc}
            rows.append(make_row(
                f"bbh-{task}-fewshot-{i}", self.name, "fewshot", q, span[0], meta, origin=f"{cot}: exemplar {i + 1}"
            ))
        return rows

    def _load_local(self, path: Path) -> list[dict[str, Any]]:
        if path.is_file():
            task_dirs = [path.parent]
            if path.stem not in self.tasks:
                self.tasks = [path.stem]
        else:
            task_dirs = [path / "bbh", path]
        rows: list[dict[str, Any]] = []
        for task in self.tasks:
            f = next((d / f"{task}.json" for d in task_dirs if (d / f"{task}.json").is_file()), None)
            if f is None:
                raise FileNotFoundError(f"{self.name}: {task}.json not found under {path}; expected {self.expected_layout()}")
            data = read_json(f)
            if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
                raise DataFormatError(f"{f}: line 1: expected {{'examples': [...]}}")
            if not data["examples"]:
                raise EmptySourceError(f"{f}: 'examples' is empty")
            rows += self._task_rows(task, data["examples"], str(f))
            cot = next((c for c in (f.parent / "cot-prompts", f.parent.parent / "cot-prompts") if (c / f"{task}.txt").is_file()), None)
            if cot is None:
                logger.warning("bbh: no cot-prompts/%s.txt near %s; few-shot needs explicit shots", task, f)
            else:
                rows += self._shot_rows(task, cot / f"{task}.txt")
        return rows

    def _load_hf(self) -> list[dict[str, Any]]:
        # The hub copy has no CoT prompts; few-shot prompts then need explicit shots.
        rows: list[dict[str, Any]] = []
        for task in self.tasks:
            data = hf_records(self.name, "lukaemon/bbh", task, self.local_hint)
            rows += self._task_rows(task, data.get("test", []), f"hf:lukaemon/bbh/{task}")
        return rows

    def fewshot_header(self, row: Row) -> str:
        return self._descriptions.get(meta_of(row).get("task", ""), "")

    def _resolve_shots(self, row: Row, shots: pd.DataFrame | list[Row] | None) -> list[Row]:
        rows = super()._resolve_shots(row, shots)
        # Exemplars are per task: keep those of the row's task when any are given.
        task = meta_of(row).get("task")
        same = [s for s in rows if meta_of(s).get("task") == task]
        for s in same:
            if meta_of(s).get("description"):
                self._descriptions.setdefault(task, meta_of(s)["description"])
        return same or rows

    def format_solution(self, row: Row) -> str:
        """The CoT exemplar answer verbatim from the cot-prompts file (it starts with the trigger)."""
        return meta_of(row).get("solution") or f"{COT_TRIGGER} So the answer is {row['gold']}."

    # Scored choices (``sampling.candidates: choices``): the options an input lists ("(A) text" or
    # "- text" lines), else the fixed answers of the binary tasks whose inputs list none.
    _FIXED_CHOICES: ClassVar[dict[str, list[str]]] = {
        "boolean_expressions": ["True", "False"], "sports_understanding": ["yes", "no"], "web_of_lies": ["Yes", "No"],
    }

    def _options(self, row: Row) -> list[tuple[str, str]]:
        """``(label, text)`` of each choice; [] for a free-form task (dyck_languages, word_sorting ...)."""
        q = str(row["question"])
        lettered = re.findall(r"(?m)^\(([A-R])\)\s*(.+?)\s*$", q)
        if lettered:
            return [(f"({x})", t) for x, t in lettered]
        _, _, tail = q.partition("Options:")
        dashed = re.findall(r"(?m)^-\s*(.+?)\s*$", tail)
        fixed = dashed or self._FIXED_CHOICES.get(meta_of(row).get("task", ""), [])
        return [(t, t) for t in fixed]

    def choice_texts(self, row: Row) -> list[str] | None:
        """The option texts of the input (or the task's fixed answers); None for a free-form task."""
        return [t for _, t in self._options(row)] or None

    def choice_labels(self, row: Row) -> list[str]:
        """"(A)"... for lettered options (the gold's form), else the texts themselves."""
        return [lab for lab, _ in self._options(row)]

    def choice_question(self, row: Row) -> str:
        """The task's own Q/A layout, without the chain-of-thought trigger."""
        return f"Q: {row['question']}\nA:"

    def extract_span(self, completion: str, row: Row | None = None) -> Span | None:
        """See :func:`extract_bbh_span`."""
        return extract_bbh_span(completion)

    def grade(self, answer: str | None, gold: str) -> bool:
        """See :func:`bbh_equal`."""
        return bbh_equal(answer, gold)
