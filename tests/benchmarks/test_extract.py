"""Extraction and grading on hand-written completions (no data files needed)."""

import pytest

from impetus.benchmarks import get_benchmark, list_benchmarks
from impetus.benchmarks.numeric import normalize_number


@pytest.mark.parametrize(
    "text, expected",
    [("$1,234.50", "1234.5"), ("1234.5", "1234.5"), ("-3", "-3"), ("12 apples", "12"),
     ("The answer is 7.", "7"), ("#### 72", "72"), ("1,000", "1000"), ("7.0", "7"), ("0.50", "0.5"),
     ("3/4", "0.75"), ("-0", "0"), ("no number", None)],
)
def test_normalize_number_table(text, expected):
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    "completion, expected",
    [("5 + 3 = 8\n#### 8", "8"),
     ("First 3 + 4 = 7. The answer is 12 apples.", "12"),
     ("Answer: $1,250", "1250"),
     ("so we get \\boxed{42} in total, 7 left", "42"),
     ("We add 2 and 3 to get 5", "5"),
     ("The answer is 7. Wait, 8 + 1 = 9, the answer is 9.", "9"),
     ("5-3=2", "2"),
     ("no digits here", None)],
)
def test_numeric_extract_priority(completion, expected):
    assert get_benchmark("gsm8k").extract(completion) == expected


def test_extract_span_offsets_point_at_the_answer():
    b = get_benchmark("gsm8k")
    text = "She has 3 + 4 = 7 eggs. The answer is $1,234."
    ans, s, e = b.extract_span(text)
    assert (ans, text[s:e]) == ("1,234", "1,234")
    assert b.extract(text) == "1234"


def test_numeric_grade():
    b = get_benchmark("svamp")
    assert b.grade("51.0", "51") and b.grade("$1,000", "1000") and b.grade("1000.0000001", "1000")
    assert not b.grade(None, "51") and not b.grade("52", "51") and not b.grade("abc", "51")


def test_arc_extract_letters_and_numeric_labels():
    b = get_benchmark("arc_challenge")
    assert b.extract("Reasoning... The answer is (B).") == "B"
    assert b.extract("answer: C") == "C"
    assert b.extract("I think (A) is wrong, so (D)") == "D"
    assert b.extract("  B. ") == "B"
    assert b.extract("A planet is big.") is None
    row = {"problem_id": "x", "question": "q", "choices": ["a", "b", "c", "d"], "gold": "3",
           "meta": '{"labels": ["1", "2", "3", "4"]}'}
    assert b.extract("The answer is (3).", row) == "3"
    assert b.extract("The answer is 12.", row) is None  # "12" is not the label "1"
    assert b.extract("The answer is (B).", row) is None  # letters are not this row's labels
    assert b.grade("(3)", "3") and b.grade("b.", "B") and not b.grade("C", "B") and not b.grade(None, "B")


@pytest.mark.parametrize(
    "completion, gold",
    [("... So the answer is (C).", "(C)"), ("So the answer is (A) Paris.", "(A)"),
     ("So the answer is True.", "True"), ("so the answer is valid.", "valid"),
     ("So the answer is Yes.", "Yes"), ("So the answer is -219.", "-219"),
     ("So the answer is ] ) ).", "] ) )"), ("So the answer is apple banana cherry.", "apple banana cherry"),
     ("The answer is **no**.", "no")],
)
def test_bbh_extract_and_grade_forms(completion, gold):
    b = get_benchmark("bbh")
    ans = b.extract(completion)
    assert b.grade(ans, gold), (completion, ans)


def test_bbh_grade_rejects_near_misses():
    b = get_benchmark("bbh:word_sorting")
    assert not b.grade("banana apple", "apple banana")
    assert b.grade("C", "(C)") and not b.grade("(B)", "(C)")
    assert not b.grade("valid", "invalid") and not b.grade(None, "True")
    assert b.extract("no marker here") is None


def test_math_extract_and_grade():
    b = get_benchmark("math500")
    text = "so $x = \\boxed{\\frac{1}{2}}$ and then \\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}."
    ans, s, e = b.extract_span(text)
    assert ans == text[s:e] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert b.extract("unclosed \\boxed{3") is None
    assert b.extract("The answer is $\\frac{3}{4}$.") == "\\frac{3}{4}"
    assert b.grade("0.75", "\\frac{3}{4}") and b.grade("\\dfrac{1}{2}", "\\frac12")
    assert not b.grade("\\frac{2}{3}", "\\frac{3}{4}") and not b.grade(None, "1")


def test_registry():
    assert list_benchmarks() == ["arc_challenge", "arc_easy", "arith", "bbh", "gsm8k", "math500", "svamp"]
    with pytest.raises(ValueError, match="known: arc_challenge"):
        get_benchmark("nope")
    with pytest.raises(ValueError, match="Unknown BBH task"):
        get_benchmark("bbh:nope")
    assert get_benchmark("bbh:navigate").tasks == ["navigate"]
    assert get_benchmark("gsm8k").stop_strings("fewshot") == ["\nQ:", "\n\n"]
    assert get_benchmark("gsm8k").stop_strings("chat_cot") == []
    with pytest.raises(ValueError, match="style"):
        get_benchmark("gsm8k").stop_strings("zero")


def test_arc_answers_named_by_choice_text_or_option_word_map_to_labels():
    b = get_benchmark("arc_easy")
    row = {"problem_id": "x", "question": "q", "choices": ["photosynthesis", "dark red", "red", "respiration"],
           "gold": "A", "meta": '{"labels": ["A", "B", "C", "D"]}'}
    assert b.extract("The answer is photosynthesis.", row) == "A"
    assert b.extract("So the answer is dark red.", row) == "B"  # longest choice first: not "red"
    assert b.extract("Answer: Red.", row) == "C"
    assert b.extract("Respiration", row) == "D"  # a reply that is exactly one choice
    assert b.extract("red things are nice", row) is None  # no cue, not a whole choice
    assert b.extract("I pick option D", row) == "D" and b.extract("C) red", row) == "C"
    assert b.extract("B. dark red", row) == "B" and b.extract("A planet is big.", row) is None
    text = "Plants do this. The answer is photosynthesis."
    span = b.extract_span(text, row)
    assert text[span[1]:span[2]] == span[0] == "photosynthesis"  # the span is the quoted text itself
    assert b.grade(b.extract(text, row), row["gold"])
    assert b.extract("The answer is photosynthesis.") is None  # without the row there are no choice texts
