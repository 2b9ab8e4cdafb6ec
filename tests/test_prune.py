"""``make prune-models``: old versions of the versioned model datasets go, the newest stay, and
nothing that is not a Kedro version folder is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from impetus.framework.prune import main, old_versions

STAMPS = ["2026-12-06T19.30.46.669Z", "2026-12-07T09.01.00.000Z", "2026-12-07T14.24.55.833Z"]


def _models(root: Path) -> Path:
    folder = root / "06_models"
    for name in ("text_ebm.pt", "latent_ebm.pt"):
        for stamp in reversed(STAMPS):  # made newest first: the order on disk must not matter
            (folder / name / stamp).mkdir(parents=True)
            (folder / name / stamp / name).write_bytes(b"x" * 1000)
    (folder / "text_ebm.pt" / "notes").mkdir()  # not a version: kept whatever its age
    (folder / "base_lm.json").write_text("{}")
    return folder


def test_keeps_the_newest_versions_of_each_dataset(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _models(tmp_path)
    assert old_versions(folder, 2) == [folder / "latent_ebm.pt" / STAMPS[0], folder / "text_ebm.pt" / STAMPS[0]]
    main([str(folder), "--keep", "1"])
    for name in ("text_ebm.pt", "latent_ebm.pt"):
        assert sorted(p.name for p in (folder / name).iterdir() if p.name != "notes") == [STAMPS[-1]]
    assert (folder / "text_ebm.pt" / "notes").is_dir() and (folder / "base_lm.json").exists()
    assert "deleted 4 old versions" in capsys.readouterr().out


def test_dry_run_deletes_nothing_and_keep_zero_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = _models(tmp_path)
    main([str(folder), "--keep", "1", "--dry-run"])
    assert "would delete 4 old versions" in capsys.readouterr().out
    assert len(list((folder / "text_ebm.pt").iterdir())) == 4
    with pytest.raises(ValueError, match="at least 1"):
        old_versions(folder, 0)
