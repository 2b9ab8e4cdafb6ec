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
    train, dev, evals = split_problems(df, n_train=20, n_dev=5, n_eval=10, seed=3)
    assert len(train) == 20 and len(dev) == 5 and len(evals) == 10
    assert not set(train.problem_id) & set(evals.problem_id)
    assert not set(dev.problem_id) & (set(evals.problem_id) | set(train.problem_id))
    train2, _, evals2 = split_problems(df.sample(frac=1, random_state=1), 20, 5, 10, seed=3)
    # Independent of input order: depends only on ids and seed.
    assert list(train.problem_id) == list(train2.problem_id)
    assert list(evals.problem_id) == list(evals2.problem_id)
    _, _, evals3 = split_problems(df, 20, 5, 10, seed=4)
    assert list(evals3.problem_id) != list(evals.problem_id)


def test_source_splits_are_respected_and_fewshot_excluded():
    splits = ["train"] * 20 + ["test"] * 10 + ["fewshot"] * 3
    df = _table(33, splits)
    train, dev, evals = split_problems(df, n_train=None, n_dev=4, n_eval=None, seed=0)
    assert set(train.split) == {"train"} and len(train) == 16
    assert set(dev.split) == {"train"} and len(dev) == 4
    assert set(evals.split) == {"test"} and len(evals) == 10


def test_asking_for_too_many_problems_fails_with_counts():
    with pytest.raises(ValueError, match="only 5 are available"):
        split_problems(_table(15), n_train=100, n_dev=0, n_eval=10, seed=0)
    with pytest.raises(ValueError, match="3 dev problems but only 2"):
        split_problems(_table(12), n_train=1, n_dev=3, n_eval=10, seed=0)


def test_duplicate_ids_fail_fast():
    df = pd.concat([_table(5), _table(5)])
    with pytest.raises(ValueError, match="duplicate problem_id"):
        split_problems(df, 2, 0, 2, 0)
