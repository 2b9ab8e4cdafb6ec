"""ARC (Clark et al. 2018), Challenge and Easy: multiple choice science questions.

Labels are usually A-E but about 2% of questions use 1-4, so the answer key is always mapped
through ``choices.label`` and the labels are stored in ``meta`` for extraction.
Source splits are kept as named: ``train``, ``validation`` and ``test`` (the ingest splitter
treats validation as train-side data).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from impetus.benchmarks._io import DataFormatError, hf_records, read_jsonl, require
from impetus.benchmarks.base import Benchmark, Row, Span, as_text, is_missing_choices, make_row, meta_of, register
from impetus.benchmarks.errors import at

DEFAULT_LABELS = ["A", "B", "C", "D", "E", "1", "2", "3", "4", "5"]
_SPLITS = ("train", "validation", "test")


def _label_alt(labels: list[str]) -> str:
    # Longest first so a hypothetical "10" is not read as "1".
    return "|".join(re.escape(x) for x in sorted(labels, key=len, reverse=True))


def extract_choice_span(text: str | None, labels: list[str] | None = None) -> Span | None:
    """The chosen label in ``text``: "The answer is (B)", "answer: C", "option C", "(C)", a line
    starting "C)" or "C. ", or just "B"; the last match of the first form that matches."""
    text = as_text(text)
    if text is None:
        return None
    alt = _label_alt(labels or DEFAULT_LABELS)
    # Labels are case-sensitive so "a" in prose is never a choice; the marker words are not.
    patterns = [
        rf"(?i:answer is)[\s:*]*\(?({alt})\)?(?![\w])",
        rf"(?i:answer)\s*:[\s*]*\(?({alt})\)?(?![\w])",
        rf"(?i:option|choice)\s+\(?({alt})\)?(?![\w])",
        rf"\(({alt})\)",
        rf"(?m)^[\s*]*({alt})(?:\)|\.\s)",
        rf"^[\s*]*\(?({alt})\)?[\s.*]*$",
    ]
    for pat in patterns:
        last = None
        for last in re.finditer(pat, text):
            pass
        if last:
            return last.group(1), last.start(1), last.end(1)
    return None


def extract_choice_text_span(text: str | None, choices: list[str]) -> Span | None:
    """A choice quoted by its text after the last "answer is" (or as the whole reply), for replies
    that name the answer without its label ("The answer is photosynthesis."). Longest choice
    first, so "red" inside "dark red" is not read as "red"; case is ignored beyond one character."""
    text = as_text(text)
    if text is None or not choices:
        return None
    cues = list(re.finditer(r"(?i)answer(?: is|:)", text))
    start = cues[-1].end() if cues else 0
    if not cues and text.strip().rstrip(".").strip().lower() not in {c.strip().lower() for c in choices}:
        return None  # without a cue only a reply that is exactly one choice counts
    for choice in sorted((c.strip() for c in choices if c.strip()), key=len, reverse=True):
        # Whole words only (the choice "a" must not match inside "was"); case is ignored except for
        # one-character choices, which would otherwise read a stray label letter as a choice text.
        found = re.compile(rf"(?<!\w){re.escape(choice)}(?!\w)", re.I if len(choice) > 1 else 0).search(text, start)
        if found:
            return found.group(0), found.start(), found.end()
    return None


def _norm_label(s: str | None) -> str:
    """Bare upper-case label ("(b)." -> "B"); "" for a missing value."""
    s = as_text(s)
    if s is None:
        return ""
    return s.strip().strip("*").strip().rstrip(".").strip().strip("()").strip().upper()


class _ARC(Benchmark):
    """Shared ARC logic; subclasses set ``subset`` ("Challenge" or "Easy").

    Besides the limits of :class:`Benchmark`, an item needs at least 2 choices (``min_choices``):
    with one, its prompt lists the answer alone. Source items have 3 to 5.
    """

    subset: ClassVar[str] = "Challenge"
    min_choices = 2
    chat_instruction = (
        "Think step by step, then finish with 'The answer is (X).' where X is the label of the correct choice."
    )

    local_hint = "../shared/data/arc"

    def expected_layout(self) -> str:
        return f"a folder with ARC-{self.subset}-{{train,validation,test}}.jsonl or one such file"

    def _row(self, rec: dict[str, Any], split: str, where: str, line: int) -> dict[str, Any]:
        require(rec, ("id", "question", "choices", "answerKey"), where, line)
        ch = rec["choices"]
        if not isinstance(ch, dict) or not isinstance(ch.get("text"), list) or not isinstance(ch.get("label"), list):
            raise DataFormatError(f"{where}: line {line}: field 'choices' needs 'text' and 'label' lists")
        labels, texts = [str(x) for x in ch["label"]], [str(x) for x in ch["text"]]
        key = str(rec["answerKey"]).strip()
        if len(labels) != len(texts) or key not in labels:
            raise DataFormatError(f"{where}: line {line}: answerKey {key!r} not among labels {labels}")
        meta = {"labels": labels, "source_id": rec["id"], "answer_text": texts[labels.index(key)]}
        return make_row(
            f"{self.name}-{rec['id']}", self.name, split, str(rec["question"]).strip(), key, meta, texts, at(where, line)
        )

    def _load_local(self, path: Path) -> list[dict[str, Any]]:
        if path.is_file():
            split = next((s for s in _SPLITS if path.stem.lower().endswith(s)), "test")
            return [self._row(r, split, str(path), n) for n, r in read_jsonl(path)]
        files = [(s, path / f"ARC-{self.subset}-{s}.jsonl") for s in _SPLITS]
        if not files[-1][1].is_file():
            raise FileNotFoundError(f"{self.name}: {files[-1][1]} not found; expected {self.expected_layout()}")
        return [self._row(r, s, str(f), n) for s, f in files if f.is_file() for n, r in read_jsonl(f)]

    def _load_hf(self) -> list[dict[str, Any]]:
        data = hf_records(self.name, "allenai/ai2_arc", f"ARC-{self.subset}", self.local_hint)
        return [
            self._row(r, s, f"hf:allenai/ai2_arc/{s}", i + 1) for s, recs in data.items() for i, r in enumerate(recs)
        ]

    def format_question(self, row: Row) -> str:
        """Question then one "(A) text" line per choice, with the row's own labels."""
        labels = meta_of(row).get("labels") or DEFAULT_LABELS
        lines = [f"({lab}) {txt}" for lab, txt in zip(labels, row["choices"])]
        return "\n".join([str(row["question"]), *lines])

    def format_solution(self, row: Row) -> str:
        """ARC has no worked solutions: the exemplar states the answer label only."""
        return f"So the answer is ({row['gold']})."

    def extract_span(self, completion: str, row: Row | None = None, labels: list[str] | None = None) -> Span | None:
        """Chosen label; restricted to the row's labels when ``row`` or ``labels`` is given. With a
        row, a reply naming no label may quote a choice's text instead (:meth:`answer_of` maps it)."""
        if labels is None and row is not None:
            labels = meta_of(row).get("labels")
        found = extract_choice_span(completion, labels)
        if found is None and row is not None and not is_missing_choices(row):
            found = extract_choice_text_span(completion, list(row["choices"]))
        return found

    def answer_of(self, span: Span | None, row: Row | None = None) -> str | None:
        """The label a span stands for: itself, or the label of the choice whose text it quotes."""
        if span is None:
            return None
        label = self.canonical(span[0])
        if row is None or is_missing_choices(row):
            return label
        labels = [_norm_label(x) for x in (meta_of(row).get("labels") or DEFAULT_LABELS)]
        if label in labels:
            return label
        quoted = span[0].strip()
        for lab, choice in zip(labels, (str(c).strip() for c in row["choices"])):
            if quoted == choice or (len(choice) > 1 and quoted.lower() == choice.lower()):
                return lab
        return None

    def choice_order(self, row: Row, order: int) -> list[int]:
        """Which source choice sits at each displayed position in prompt variant ``order``.

        Order 0 is the source's; any other is a permutation seeded by the problem id and the order
        alone (not the sampling seed), so grading recomputes it from ``(problem_id, order)``.
        Showing the N samples of a problem several orders breaks the position bias a vote would
        otherwise inherit (the model's preference for a position, not a choice).
        """
        n = len(row["choices"])
        if order == 0:
            return list(range(n))
        digest = hashlib.blake2b(f"{row['problem_id']}|{int(order)}".encode(), digest_size=8).digest()
        return [int(i) for i in np.random.default_rng(int.from_bytes(digest, "little")).permutation(n)]

    def permuted(self, row: Row, order: int) -> dict[str, Any]:
        """The row as prompt variant ``order`` shows it: choices reordered under the same labels,
        gold the label the right choice now has."""
        perm = self.choice_order(row, order)
        labels = meta_of(row).get("labels") or DEFAULT_LABELS[: len(perm)]
        shown = dict(row)
        shown["choices"] = [row["choices"][i] for i in perm]
        gold_index = [_norm_label(x) for x in labels].index(_norm_label(row["gold"]))
        shown["gold"] = labels[perm.index(gold_index)]
        return shown

    def original_answer(self, answer: str | None, row: Row, order: int) -> str | None:
        """The source label of the choice that ``answer`` (a displayed label in variant ``order``) names."""
        if answer is None:
            return None
        labels = [_norm_label(x) for x in (meta_of(row).get("labels") or DEFAULT_LABELS[: len(row["choices"])])]
        perm = self.choice_order(row, order)
        return labels[perm[labels.index(answer)]] if answer in labels else None

    def _canonical(self, answer: str) -> str:
        return _norm_label(answer)

    def grade(self, answer: str | None, gold: str) -> bool:
        """Label equality ignoring case, parentheses and a trailing period; missing is wrong."""
        label = _norm_label(answer)
        return label != "" and label == _norm_label(gold)


@register("arc_challenge")
class ARCChallenge(_ARC):
    """ARC-Challenge."""

    subset = "Challenge"


@register("arc_easy")
class ARCEasy(_ARC):
    """ARC-Easy."""

    subset = "Easy"
