"""Benchmark base class and registry.

A benchmark is data-like (as in lm-evaluation-harness): it loads a problem table with a fixed
schema, renders prompts, pulls the answer out of a completion and grades it. Adding a benchmark is
one module with a ``@register("name")`` class plus one import line in ``__init__``.
"""

from __future__ import annotations

import inspect
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from impetus.benchmarks.checks import ORIGIN, check_rows
from impetus.benchmarks.errors import EmptySourceError

logger = logging.getLogger(__name__)

COLUMNS = ["problem_id", "benchmark", "split", "question", "choices", "gold", "meta"]
STYLES = ("chat_cot", "fewshot")

Row = Mapping[str, Any]  # a dict or a pandas Series with the COLUMNS fields
Span = tuple[str, int, int]

_REGISTRY: dict[str, type[Benchmark]] = {}


def register(name: str) -> Callable[[type[Benchmark]], type[Benchmark]]:
    """Class decorator: make ``cls`` available as ``get_benchmark(name)``."""

    def deco(cls: type[Benchmark]) -> type[Benchmark]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"Benchmark name {name!r} is already registered by {_REGISTRY[name].__name__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_benchmarks() -> list[str]:
    """Registered benchmark names (``bbh:<task>`` selects one BBH task on top of these)."""
    return sorted(_REGISTRY)


def get_benchmark(name: str, **options: Any) -> Benchmark:
    """Instantiate a benchmark by name; ``options`` go to its constructor.

    ``"base:subset"`` (e.g. ``"bbh:navigate"``) passes ``subset=...`` to the base benchmark.
    """
    base, _, subset = name.partition(":")
    if base not in _REGISTRY:
        raise ValueError(f"Unknown benchmark {name!r}; known: {', '.join(list_benchmarks())}")
    if subset:
        options = {**options, "subset": subset}
    cls = _REGISTRY[base]
    accepted = {p for c in cls.__mro__ if "__init__" in vars(c) for p in inspect.signature(c.__init__).parameters}
    unknown = sorted(set(options) - accepted)
    if unknown:
        valid = sorted(accepted - {"self", "args", "kwargs"})
        raise ValueError(f"Benchmark {name!r} does not take option(s) {unknown}; valid options: {valid}")
    return cls(**options)


def is_missing(value: Any) -> bool:
    """Whether ``value`` is a missing scalar: None, NaN, ``pd.NA`` or ``NaT``.

    pandas turns None into NaN (or ``pd.NA``) in string columns, e.g. after a parquet round trip
    under pandas 3, so "no answer" arrives in several spellings; every grading path treats them
    all as None. Strings (even empty ones) and containers are never missing.
    """
    if value is None:
        return True
    if isinstance(value, (str, bytes)) or not pd.api.types.is_scalar(value):
        return False
    return bool(pd.isna(value))


def as_text(value: Any) -> str | None:
    """``value`` as a string, or None when it is missing (see :func:`is_missing`)."""
    if is_missing(value):
        return None
    return value if isinstance(value, str) else str(value)


def is_missing_choices(row: Row) -> bool:
    """Whether ``row`` has no list of choices (a bare row built by hand, or a non-MC table)."""
    choices = row.get("choices") if hasattr(row, "get") else None
    return choices is None or isinstance(choices, str) or len(choices) == 0


def meta_of(row: Row) -> dict[str, Any]:
    """The row's ``meta`` as a dict (it is stored JSON-encoded so it survives parquet)."""
    meta = row.get("meta") if hasattr(row, "get") else row["meta"]
    if is_missing(meta):
        return {}
    return json.loads(meta) if isinstance(meta, str) else dict(meta)


def make_row(
    problem_id: str, benchmark: str, split: str, question: str, gold: str,
    meta: dict[str, Any] | None = None, choices: Sequence[str] | None = None, origin: str | None = None,
) -> dict[str, Any]:
    """One table row in the fixed schema (meta JSON-encoded, keys sorted for stable bytes).

    ``origin`` ("<file>: line <n>") lets :meth:`Benchmark.load` name where a row that breaks a
    limit came from; it is not a column and never reaches the table.
    """
    return {
        ORIGIN: origin,
        "problem_id": str(problem_id),
        "benchmark": benchmark,
        "split": split,
        "question": question,
        "choices": list(choices) if choices is not None else None,
        "gold": str(gold),
        "meta": json.dumps(meta or {}, sort_keys=True, ensure_ascii=False),
    }


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=COLUMNS)
    # object dtype keeps list-valued choices and None intact through pandas 3 and pyarrow.
    df["choices"] = pd.Series([r["choices"] for r in rows], dtype=object, index=df.index)
    for col in ("problem_id", "benchmark", "split", "question", "gold", "meta"):
        df[col] = df[col].astype(object)
    return df


class Benchmark(ABC):
    """Common behaviour: loading with few-shot selection, prompts, extraction and grading.

    Subclasses implement :meth:`_load_local`, :meth:`_load_hf`, :meth:`extract_span`,
    :meth:`grade` and :meth:`format_solution`; the rest has working defaults.

    Limits checked when loading (a record that breaks one fails with its file and line): the
    question is not empty and has at most 20,000 characters (``max_question_chars``; the longest
    in the shipped data has 2,482, a BBH task), every problem id is unique, and multiple-choice
    benchmarks say how many choices an item needs (``min_choices``).
    """

    name: ClassVar[str] = "benchmark"
    default_n_shots: ClassVar[int] = 4
    # Single-file sources without a train split reserve exemplars from their test rows.
    reserve_fewshot: ClassVar[bool] = False
    local_hint: ClassVar[str] = "../shared/data/<set>"
    answer_prefix: ClassVar[str] = ""  # text after "A:" in the few-shot target (BBH: CoT trigger)
    chat_instruction: ClassVar[str] = "Think step by step, then finish with 'The answer is <answer>.'"
    max_question_chars: ClassVar[int] = 20_000  # stated in the class docstring; a test keeps them equal
    min_choices: ClassVar[int | None] = None  # multiple choice: fewest choices an item may have

    def __init__(self, n_shots: int | None = None, seed: int = 0) -> None:
        self.n_shots = self.default_n_shots if n_shots is None else int(n_shots)
        self.seed = int(seed)
        self._fewshot: pd.DataFrame | None = None

    # ----------------------------------------------------------------- loading
    def load(self, source: str | Path = "hf") -> pd.DataFrame:
        """Load every split of ``source`` ("hf" or a local file/folder) as a problem table.

        Few-shot exemplars are picked here (k = ``n_shots``) and get split ``"fewshot"``, so the
        ingest stage never uses them as train or eval problems. A source without any record
        raises ``EmptySourceError`` naming it (readers name the empty file itself); a row that
        breaks a limit of the class docstring raises ``DataFormatError`` naming its file and line.
        """
        rows = self._load_rows(source)
        if not any(r["split"] != "fewshot" for r in rows):
            raise EmptySourceError(
                f"{self.name}: source {str(source)!r} has no problems"
                + (f" (only {len(rows)} few-shot exemplars)" if rows else "")
                + f"; expected {self.expected_layout()}"
            )
        check_rows(rows, f"{self.name} source {str(source)!r}", self.max_question_chars, self.min_choices)
        df = self._select_fewshot(_frame(rows))
        logger.info("%s: loaded %d rows by split %s", self.name, len(df), df["split"].value_counts().to_dict())
        return df.reset_index(drop=True)

    def _load_rows(self, source: str | Path) -> list[dict[str, Any]]:
        """Rows of ``source``: the hub for ``"hf"``, else a local file/folder that must exist.

        The one dispatch point of :meth:`load`; a benchmark with another kind of source (arith
        generates its problems) overrides this and keeps the rest of ``load``.
        """
        if isinstance(source, str) and source == "hf":
            return self._load_hf()
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(
                f"{self.name}: source {str(path)!r} does not exist; expected {self.expected_layout()}"
            )
        return self._load_local(path)

    def expected_layout(self) -> str:
        """Human description of the local layout, used in FileNotFoundError messages."""
        return f"a file or folder like {self.local_hint}"

    @abstractmethod
    def _load_local(self, path: Path) -> list[dict[str, Any]]:
        """Rows (see :func:`make_row`) from a local file or folder."""

    @abstractmethod
    def _load_hf(self) -> list[dict[str, Any]]:
        """Rows from the Hugging Face hub (raises RuntimeError when unreachable)."""

    def _exemplar_ok(self, row: Row) -> bool:
        """Whether a row makes a good exemplar (e.g. MATH: short, no diagrams)."""
        return True

    def _select_fewshot(self, df: pd.DataFrame) -> pd.DataFrame:
        if (df["split"] == "fewshot").any():  # the source ships its own (BBH CoT prompts)
            self._fewshot = df[df["split"] == "fewshot"].copy()
            return df
        if self.n_shots <= 0:  # zero-shot on purpose: nothing to pick, nothing to warn about
            self._fewshot = None
            return df
        pool_split = "train" if (df["split"] == "train").any() else ("test" if self.reserve_fewshot else None)
        if pool_split is None:
            logger.warning("%s: no train split in this source; few-shot prompts need explicit shots", self.name)
            self._fewshot = None
            return df
        pool = df[(df["split"] == pool_split)]
        pool = pool[[self._exemplar_ok(r) for _, r in pool.iterrows()]].sort_values("problem_id", kind="stable")
        if len(pool) < self.n_shots:
            raise ValueError(f"{self.name}: only {len(pool)} candidate exemplars for n_shots={self.n_shots}")
        # Sorting by id first makes the pick depend only on ids and seed, never on file order.
        pick = np.random.default_rng(self.seed).choice(len(pool), size=self.n_shots, replace=False)
        chosen = pool.index[pick]
        df = df.copy()
        df.loc[chosen, "split"] = "fewshot"
        logger.info("%s: reserved %d %s rows as few-shot exemplars", self.name, len(chosen), pool_split)
        self._fewshot = df.loc[chosen].copy()
        return df

    def fewshot_rows(self) -> pd.DataFrame:
        """The exemplar rows picked at load time (same schema), for persisting with a run."""
        if self._fewshot is None:
            return _frame([])
        return self._fewshot.reset_index(drop=True)

    # ----------------------------------------------------------------- prompts
    def format_question(self, row: Row) -> str:
        """The problem as shown to the model (ARC appends its choices)."""
        return str(row["question"])

    @abstractmethod
    def format_solution(self, row: Row) -> str:
        """Worked exemplar answer text for few-shot prompts, ending in the answer sentence."""

    def fewshot_header(self, row: Row) -> str:
        """Optional text before the exemplars (BBH: the task description)."""
        return ""

    def _resolve_shots(self, row: Row, shots: pd.DataFrame | Sequence[Row] | None) -> list[Row]:
        if shots is None:
            if self._fewshot is None:
                raise ValueError(
                    f"{self.name}: no few-shot exemplars: call load() on a source with a train split "
                    "(or reserved exemplars) first, or pass shots=..."
                )
            shots = self._fewshot
        rows = [r for _, r in shots.iterrows()] if isinstance(shots, pd.DataFrame) else list(shots)
        # An exemplar equal to the target would leak its answer into the prompt.
        keep = [s for s in rows if s["problem_id"] != row.get("problem_id") and s["question"] != row["question"]]
        if len(keep) < len(rows):
            logger.debug("%s: dropped %d shot(s) equal to the target row", self.name, len(rows) - len(keep))
        return keep

    def prompt(self, row: Row, style: str, shots: pd.DataFrame | Sequence[Row] | None = None) -> str:
        """Render ``row`` as ``"chat_cot"`` (user message; chat template applied later) or ``"fewshot"``."""
        if style == "chat_cot":
            return f"{self.format_question(row)}\n\n{self.chat_instruction}"
        if style == "fewshot":
            blocks = [
                f"Q: {self.format_question(s)}\nA: {self.format_solution(s)}" for s in self._resolve_shots(row, shots)
            ]
            blocks.append(f"Q: {self.format_question(row)}\nA:{self.answer_prefix}")
            header = self.fewshot_header(row)
            return "\n\n".join(([header] if header else []) + blocks)
        raise ValueError(f"Unknown prompt style {style!r}; use one of {STYLES}")

    def stop_strings(self, style: str) -> list[str]:
        """Strings that end an answer: few-shot answers stop before the next ``Q:`` block."""
        if style == "fewshot":
            return ["\nQ:", "\n\n"]
        if style == "chat_cot":
            return []
        raise ValueError(f"Unknown prompt style {style!r}; use one of {STYLES}")

    # ------------------------------------------------------- scored choices
    #: lm-evaluation-harness's ``target_delimiter``: what joins the context and a choice's text.
    choice_delimiter: ClassVar[str] = " "

    def choice_texts(self, row: Row) -> list[str] | None:
        """The texts scored as candidates when ``sampling.candidates: choices`` (None: the problem
        has none). Default: the row's own ``choices`` (ARC)."""
        return None if is_missing_choices(row) else [str(c) for c in row["choices"]]

    def choice_labels(self, row: Row) -> list[str]:
        """What each choice stands for when graded against ``gold`` (ARC: its label)."""
        texts = self.choice_texts(row) or []
        return [str(x) for x in (meta_of(row).get("labels") or texts)]

    def choice_question(self, row: Row) -> str:
        """lm-evaluation-harness's ``doc_to_text`` for this benchmark (ARC: its task files)."""
        return f"Question: {row['question']}\nAnswer:"

    def choice_target(self, row: Row) -> str:
        """A few-shot exemplar's answer: the text of its right choice (lm-eval's ``doc_to_target``)."""
        texts, labels = self.choice_texts(row) or [], self.choice_labels(row)
        gold = [i for i, lab in enumerate(labels) if self.grade(lab, str(row["gold"]))]
        if not gold:
            raise ValueError(f"{self.name}: problem {row.get('problem_id')!r}: gold {row['gold']!r} is none of {labels}")
        return texts[gold[0]]

    def choice_context(self, row: Row, shots: Sequence[Row] = ()) -> str:
        """The context every choice of ``row`` is scored after: lm-eval's prompt, zero-shot by default;
        exemplars come first as ``question + delimiter + right choice``, joined by a blank line."""
        blocks = [f"{self.choice_question(s)}{self.choice_delimiter}{self.choice_target(s)}" for s in shots]
        return "\n\n".join([*blocks, self.choice_question(row)])

    # ------------------------------------------------------- extract and grade
    @abstractmethod
    def extract_span(self, completion: str, row: Row | None = None) -> Span | None:
        """``(answer_text, start, end)`` with ``completion[start:end] == answer_text``, or None."""

    def canonical(self, answer: str | None) -> str | None:
        """Canonical form of an extracted answer (so equal answers vote together); None if missing.

        Subclasses override :meth:`_canonical`, which only ever sees a real string.
        """
        text = as_text(answer)
        return None if text is None else self._canonical(text)

    def _canonical(self, answer: str) -> str:
        return answer.strip()

    def choice_order(self, row: Row, order: int) -> list[int]:
        """Multiple choice only (ARC): the displayed order of the choices in prompt variant ``order``."""
        raise ValueError(f"{self.name} is not multiple choice with reorderable choices: "
                         "sampling.choice_orders must be 1")

    def permuted(self, row: Row, order: int) -> dict[str, Any]:
        """The row as prompt variant ``order`` shows it (order 0: the row itself)."""
        if order == 0:
            return dict(row)
        self.choice_order(row, order)  # raises for benchmarks without reorderable choices
        raise NotImplementedError

    def original_answer(self, answer: str | None, row: Row, order: int) -> str | None:
        """The answer in the source's terms of an answer read in prompt variant ``order``."""
        if order == 0:
            return answer
        self.choice_order(row, order)
        raise NotImplementedError

    def answer_of(self, span: Span | None, row: Row | None = None) -> str | None:
        """The canonical answer an extracted span stands for (None for no span).

        Usually ``canonical(span text)``; ARC overrides it so that a span quoting a choice's text
        stands for that choice's label (the row says which)."""
        return None if span is None else self.canonical(span[0])

    def extract(self, completion: str | None, row: Row | None = None) -> str | None:
        """The canonical answer in ``completion`` or None when there is none (or no completion)."""
        text = as_text(completion)
        return self.answer_of(None if text is None else self.extract_span(text, row), row)

    @abstractmethod
    def grade(self, answer: str | None, gold: str) -> bool:
        """Whether ``answer`` matches ``gold``; a missing answer (None/NaN/NA) is always wrong."""


def strip_span(text: str, start: int, end: int, chars: str = " \t\n*$.") -> Span | None:
    """Trim ``chars`` from both ends of ``text[start:end]``; None if nothing is left."""
    while start < end and text[start] in chars:
        start += 1
    while end > start and text[end - 1] in chars:
        end -= 1
    return (text[start:end], start, end) if end > start else None
