"""Delete all but the newest versions of the versioned model datasets (``make prune-models``).

Every ``v1_rerank`` run saves a new version of each learned energy under ``data/06_models/<name>.pt/
<version>/`` (Kedro's ``versioned: true``), about 167 MB a run with the default TextEBM ensemble: its
six members' token-embedding tables (vocabulary x d_model) are 96% of it. Kedro loads the newest
version unless told otherwise, and MLflow keeps its own copy of each run's models, so old local
versions only take disk. This removes them, keeping the newest ``keep`` of each dataset; folders
whose names are not Kedro version stamps are never touched.

    python -m impetus.framework.prune --keep 3 [--dry-run] [data/06_models]
"""

from __future__ import annotations

import argparse
import shutil
from datetime import datetime
from pathlib import Path

from kedro.io.core import VERSION_FORMAT


def _is_version(name: str) -> bool:
    try:
        datetime.strptime(name, VERSION_FORMAT)
    except ValueError:
        return False
    return True


def old_versions(folder: Path, keep: int) -> list[Path]:
    """The version folders under each ``folder/<dataset>/`` older than its newest ``keep`` (Kedro's
    stamps sort in time order as strings)."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the newest version is what Kedro loads), got {keep}")
    out: list[Path] = []
    for dataset in sorted(p for p in folder.iterdir() if p.is_dir()):
        versions = sorted(p for p in dataset.iterdir() if p.is_dir() and _is_version(p.name))
        out += versions[:-keep]
    return out


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="data/06_models", type=Path)
    parser.add_argument("--keep", type=int, default=3, help="newest versions kept per dataset (at least 1)")
    parser.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    doomed = old_versions(args.folder, args.keep)
    freed = 0
    for path in doomed:
        freed += _size(path)
        if not args.dry_run:
            shutil.rmtree(path)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(doomed)} old versions under {args.folder} ({freed / 1e6:.1f} MB), kept the newest "
          f"{args.keep} of each dataset")


if __name__ == "__main__":
    main()
