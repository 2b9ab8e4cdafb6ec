import pandas as pd
import pytest

from impetus.benchmarks.splits import split_problems


def _table(n: int, splits: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "problem_id": [f"p{i:03d}" for i in range(n)],
            "benchmark": "toy",
            "split": splits or ["test"] * n,
            "question": [f"q{i}" for i in range(n)],
            "choices": None,
            "gold": [str(i) for i in range(n)],
            "meta": "{}",
        }
    )


def test_single_split_is_disjoint_deterministic_and_sized():
    df = _table(50)
    train, evals = split_problems(df, n_train=20, n_eval=10, seed=3)
    assert len(train) == 20 and len(evals) == 10
    assert not set(train.problem_id) & set(evals.problem_id)
    train2, evals2 = split_problems(df.sample(frac=1, random_state=1), 20, 10, seed=3)
    # Independent of input order: depends only on ids and seed.
    assert list(train.problem_id) == list(train2.problem_id)
    assert list(evals.problem_id) == list(evals2.problem_id)
    _, evals3 = split_problems(df, 20, 10, seed=4)
    assert list(evals3.problem_id) != list(evals.problem_id)


def test_source_splits_are_respected_and_fewshot_excluded():
    splits = ["train"] * 20 + ["test"] * 10 + ["fewshot"] * 3
    df = _table(33, splits)
    train, evals = split_problems(df, n_train=None, n_eval=None, seed=0)
    assert set(train.split) == {"train"} and len(train) == 20
    assert set(evals.split) == {"test"} and len(evals) == 10


def test_asking_for_too_many_problems_fails_with_counts():
    with pytest.raises(ValueError, match="only 5 are available"):
        split_problems(_table(15), n_train=100, n_eval=10, seed=0)


def test_duplicate_ids_fail_fast():
    df = pd.concat([_table(5), _table(5)])
    with pytest.raises(ValueError, match="duplicate problem_id"):
        split_problems(df, 2, 2, 0)
