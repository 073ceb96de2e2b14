"""The commands declare the options they share once (cli/command_options.py), so they cannot drift apart."""

from __future__ import annotations

import click

from virnucpro_trt.cli.bench_command import bench
from virnucpro_trt.cli.command_options import replace_option
from virnucpro_trt.cli.main import cli
from virnucpro_trt.models.kinds import MODELS
from virnucpro_trt.settings import CHUNK_LENGTHS, PRECISIONS


def _options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option) and p.name}


def _declaration(option: click.Option) -> tuple:
    kind = option.type
    choices = tuple(kind.choices) if isinstance(kind, click.Choice) else None
    bounds = (kind.min, kind.max) if isinstance(kind, click.IntRange) else None
    return (tuple(option.opts), type(kind).__name__, choices, bounds, option.default)


NAMES = ("build", "predict", "embed", "demo", "prepare")


def test_build_bench_and_predict_share_their_option_groups() -> None:
    commands = {name: _options(cli.commands[name]) for name in NAMES}
    commands["bench"] = _options(bench)
    for name in ("device", "max_batch_tokens"):
        declared = {_declaration(commands[c][name]) for c in ("build", "bench", "predict", "embed", "demo")}
        assert len(declared) == 1, (name, declared)
    for name in ("dnabert", "esm", "classifier"):
        declared = {_declaration(commands[c][name]) for c in ("build", "bench", "predict")}
        assert len(declared) == 1, (name, declared)
        helps = {commands[c][name].help for c in ("build", "bench", "predict")}
        assert len(helps) == 1, helps
    assert [f"--{n}" for n in ("dnabert", "esm", "classifier")] == [m.flag for m in MODELS.values()]
    assert commands["build"]["dnabert"].required and not commands["predict"]["dnabert"].required
    chunk = {_declaration(commands[c]["chunk_length"]) for c in ("bench", "predict", "demo", "prepare")}
    assert chunk == {(("--chunk-length",), "Choice", tuple(map(str, CHUNK_LENGTHS)), None, "500")}
    for c in ("build", "predict"):
        assert tuple(commands[c]["precision"].type.choices) == PRECISIONS
    for c in ("build", "bench"):
        assert {"verbose", "quiet", "log_file"} <= set(commands[c])


def test_commands_without_a_run_folder_share_one_force_option() -> None:
    """prepare, embed and convert-classifier replace only their own outputs; --force is one declaration,
    its help one text, to which each adds one sentence: its rerun skip, which --force overrides."""
    options = [_options(cli.commands[c])["force"] for c in ("prepare", "embed", "convert-classifier")]
    assert len({(_declaration(o), o.is_flag) for o in options}) == 1
    shared = _options(click.command()(replace_option(lambda force: None)))["force"].help or ""
    for text in (o.help or "" for o in options):
        assert text.startswith(shared + " ") and "UP TO DATE" in text and "--force" in text[len(shared) :]
    assert options[0].opts == ["--force"] and options[0].is_flag
