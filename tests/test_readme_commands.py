"""Every command in the README's code blocks works as written, checked without running a model.

Each ``kedro`` line is parsed by Kedro's own CLI (the options and ``--params`` parser the shell
command reaches). For ``kedro run`` the configuration its ``--env`` and ``--params`` produce must
validate against every block of the typed schema (:data:`impetus.framework.config.PARAMS`) and against the
nodes' type hints as Kedro checks them; its ``-p``/``--from-nodes``/``--namespaces`` must select
nodes; and the configured benchmark must yield enough problems for the train + dev + eval splits
(the check ingest makes before any model is loaded). ``make`` lines must name a Makefile target,
and Python blocks must run.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
_SHELL = {"bash", "sh", "shell", "console", ""}


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced code block of a markdown text."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def shell_commands(body: str) -> list[list[str]]:
    """The commands of a shell block as argv lists: comments dropped, ``&&``/``;`` split."""
    commands: list[list[str]] = []
    for line in body.replace("\\\n", " ").splitlines():
        current: list[str] = []
        for token in shlex.split(line, comments=True):
            if token in ("&&", ";", "||"):
                commands.append(current)
                current = []
            else:
                current.append(token)
        if current:
            commands.append(current)
    return [c for c in commands if c]


def _commands() -> list[list[str]]:
    return [_without_env(cmd) for lang, body in readme_blocks(README.read_text()) if lang in _SHELL
            for cmd in shell_commands(body) if cmd[0] != "export"]


_ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def _program(argv: list[str]) -> str:
    return Path(argv[0]).name


def _without_env(argv: list[str]) -> list[str]:
    """``VAR=value cmd ...`` -> ``cmd ...`` (the shell's per-command environment)."""
    i = 0
    while i < len(argv) - 1 and _ENV_ASSIGNMENT.match(argv[i]):
        i += 1
    return argv[i:]


KEDRO = [c for c in _commands() if _program(c) == "kedro"]
RUNS = [c for c in KEDRO if c[1:2] == ["run"]]
MAKE = [c for c in _commands() if _program(c) == "make"]
PYTHON_BLOCKS = [body for lang, body in readme_blocks(README.read_text()) if lang == "python"]


def _id(argv: list[str]) -> str:
    return " ".join(argv[1:])


def test_the_readme_shows_the_commands_this_test_checks():
    # A change in the fence syntax must not silently leave nothing to check.
    assert len(RUNS) >= 8 and MAKE and PYTHON_BLOCKS
    assert ["make", "run"] in MAKE
    assert any("--params" in c for c in RUNS) and any("--env" in c for c in RUNS)


# ------------------------------------------------------------------------------ kedro parsing
@pytest.fixture(scope="module")
def kedro_cli() -> click.Group:
    """Kedro's CLI for this project (bootstraps it: pipelines and settings become importable)."""
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
    from kedro.framework.cli.cli import KedroCLI

    return KedroCLI(ROOT)


def parse_kedro(cli: click.Group, args: list[str]) -> tuple[str, dict[str, Any]]:
    """Resolve ``kedro <args>`` to its command and parsed options, as the shell would, without running it."""
    cmd: click.Command = cli
    ctx: click.Context | None = None
    name = "kedro"
    rest = list(args)
    while isinstance(cmd, click.Group):
        ctx = click.Context(cmd, info_name=name, parent=ctx)
        name, found, rest = cmd.resolve_command(ctx, rest)
        assert found is not None, f"kedro has no command {name!r}"
        cmd = found
    sub = cmd.make_context(name, list(rest), parent=ctx)  # click.UsageError on a bad option
    return name, sub.params


@pytest.mark.parametrize("argv", KEDRO, ids=_id)
def test_kedro_command_parses(kedro_cli, argv):
    name, _ = parse_kedro(kedro_cli, argv[1:])
    assert name in argv


# ------------------------------------------------------------------------------ kedro run checks
@pytest.fixture(scope="module")
def conf_source(tmp_path_factory, kedro_cli) -> Path:
    """The repository's conf/ as a fresh clone has it: without the user's conf/local overrides."""
    dest = tmp_path_factory.mktemp("readme") / "conf"
    shutil.copytree(ROOT / "conf", dest, ignore=shutil.ignore_patterns("local"))
    (dest / "local").mkdir()
    return dest


def run_parameters(conf: Path, env: str | None, params: dict[str, Any]) -> dict[str, Any]:
    """The merged parameters ``kedro run --env <env> --params <params>`` sees (project settings)."""
    from kedro.config import OmegaConfigLoader
    from kedro.framework.project import settings

    loader = OmegaConfigLoader(conf_source=str(conf), env=env, runtime_params=params, **settings.CONFIG_LOADER_ARGS)
    return dict(loader["parameters"])


def typed_blocks(raw: dict[str, Any]) -> dict[str, Any]:
    """Every parameter block parsed by its :mod:`impetus.framework.config` class (unknown blocks fail)."""
    from impetus.framework.config import PARAMS, parse

    unknown = sorted(set(raw) - set(PARAMS))
    assert not unknown, f"parameter blocks without a schema: {unknown}"
    missing = sorted(set(PARAMS) - set(raw))
    assert not missing, f"blocks of the schema missing from conf/base: {missing}"
    return {name: parse(cls, raw[name], name) for name, cls in PARAMS.items()}


def check_splits(typed: dict[str, Any]) -> tuple[int, int, int]:
    """Load the configured benchmark and cut the splits exactly as ingest does; return their sizes."""
    from impetus.benchmarks.splits import split_problems

    bench, ingest = typed["benchmark"], typed["ingest"]
    source = bench.source
    if source == "hf":
        pytest.skip("benchmark.source=hf needs the hub: split sizes not checked offline")
    if source != "generated" and not Path(source).is_absolute():
        source = str(ROOT / source)  # kedro runs in the project root
        if not Path(source).exists():
            pytest.skip(f"{bench.source} not found (the shared data folder is not here)")
    table = bench.build().load(source)
    train, dev, evals = split_problems(table, ingest.n_train, ingest.n_dev, ingest.n_eval, ingest.seed)
    return len(train), len(dev), len(evals)


@pytest.mark.parametrize("argv", RUNS, ids=_id)
def test_kedro_run_command_validates_and_its_splits_fit(kedro_cli, conf_source, argv, monkeypatch):
    import torch
    from kedro.framework.project import pipelines
    from kedro.validation.parameter_validator import ParameterValidator

    _, opts = parse_kedro(kedro_cli, argv[1:])
    name = opts["pipeline"] or "__default__"
    assert name in pipelines, f"no pipeline {name!r}; registered: {sorted(pipelines)}"
    selected = pipelines[name].filter(
        from_nodes=opts["from_nodes"] or None, node_namespaces=opts["namespaces"] or None,
        node_names=opts["node_names"] or None, tags=opts["tags"] or None,
    )
    assert selected.nodes, f"{_id(argv)} selects no node"

    if str(opts["params"].get("model", {}).get("device", "cpu")).startswith("cuda"):
        # a command for a GPU machine: validate it as there (the device check asks torch)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    raw = run_parameters(conf_source, opts["env"], opts["params"])
    ParameterValidator(dict(pipelines)).validate_raw_params(raw)  # what `kedro run` checks
    typed = typed_blocks(raw)
    for block, fields in opts["params"].items():  # the override reached the typed block
        for field, value in fields.items():
            if not isinstance(value, dict):
                assert getattr(typed[block], field) == value, f"{block}.{field}"
    n_train, n_dev, n_eval = check_splits(typed)
    ingest = typed["ingest"]
    assert (n_dev, n_eval) == (ingest.n_dev, ingest.n_eval or n_eval)
    assert n_train == (ingest.n_train if ingest.n_train is not None else n_train) and n_train > 0


# ------------------------------------------------------------------------------ other blocks
@pytest.mark.parametrize("argv", MAKE, ids=_id)
def test_make_target_exists(argv):
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    wanted = [a for a in argv[1:] if not a.startswith("-") and "=" not in a]
    assert wanted and set(wanted) <= targets, f"unknown make target(s) {sorted(set(wanted) - targets)}"


@pytest.mark.parametrize("body", PYTHON_BLOCKS, ids=lambda b: b.splitlines()[0][:40])
def test_python_block_runs(body, monkeypatch):
    code = compile(body, "README.md", "exec")
    if "../shared/data" in body and not (ROOT.parent / "shared" / "data").is_dir():
        pytest.skip("needs ../shared/data")
    monkeypatch.chdir(ROOT)
    exec(code, {})


# ------------------------------------------------------------------------------ the parser itself
def test_shell_commands_split_comments_and_chains():
    body = 'a run -p x --params "b.c=1,d.e=2"   # note\n\nx && y --z "q r"\n'
    assert shell_commands(body) == [["a", "run", "-p", "x", "--params", "b.c=1,d.e=2"], ["x"], ["y", "--z", "q r"]]


def test_a_run_whose_splits_do_not_fit_fails(kedro_cli, conf_source):
    # The check must be able to fail: 200 eval + 80 dev + 160 train > the 400 generated problems.
    _, opts = parse_kedro(kedro_cli, ["run", "--params", "ingest.n_eval=200"])
    typed = typed_blocks(run_parameters(conf_source, opts["env"], opts["params"]))
    with pytest.raises(ValueError, match="Asked for 160 train problems but only 120"):
        check_splits(typed)


def test_a_run_with_a_bad_parameter_fails(kedro_cli, conf_source):
    _, opts = parse_kedro(kedro_cli, ["run", "--params", "v2_latent.lr=-1"])
    with pytest.raises(ValueError, match=r"v2_latent[\s\S]*lr"):
        typed_blocks(run_parameters(conf_source, opts["env"], opts["params"]))
