"""Every ``linewatch`` subcommand answers a bad value with one line naming it, its exit status, no traceback.

The subcommands are read from the parser, so a new one is covered without editing this file by the
argparse-level walk, and must be given a case in ``BAD_VALUES`` (the walk over settings, files and flag
combinations) before this file passes again. Exit statuses are documented in linewatch/errors.py.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from linewatch.deploy.cli import build_parser, main
from linewatch.detector.model.backends.names import BACKENDS, PRECISIONS
from linewatch.detector.model.training.recipes import recipe_names
from linewatch.detector.model.vocabulary import Backbone, Backend, Precision, RecipeName
from linewatch.errors import BackendError, BrokerError, ConfigurationError, DataError, LinewatchError, ModelError

pytestmark = pytest.mark.unit

API_TOKEN = "Ex1tsTokn_Pl-XeCTIXxWlI8N-cRYvJLGmuE7gx8FLFs"  # a valid token, so only the value under test is bad
MISSING = "/nonexistent/linewatch-test"
# Types whose every string is valid (paths, free text): a bad value for them is not an argparse matter.
FREE_TYPES = (None, str, Path)


def leaf_commands(parser: argparse.ArgumentParser,
                  prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """(words, parser) of every runnable subcommand, e.g. (("models", "register"), parser)."""
    groups = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not groups:
        yield prefix, parser
        return
    for name, child in groups[0].choices.items():
        yield from leaf_commands(child, (*prefix, name))


LEAVES = dict(leaf_commands(build_parser()))


def checked_option(parser: argparse.ArgumentParser) -> argparse.Action | None:
    """The first optional flag whose values argparse checks (choices or a converting type)."""
    for action in parser._actions:
        if action.option_strings and action.nargs != 0 and (action.choices or action.type not in FREE_TYPES):
            return action
    return None


def required_values(parser: argparse.ArgumentParser) -> list[str]:
    """Placeholder values for the required positionals and flags (they are never used: parsing fails)."""
    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings and action.nargs != argparse.PARSER:
            argv.append(MISSING)
        elif action.required and action.option_strings:
            argv += [action.option_strings[0]] if action.nargs == 0 else [action.option_strings[0], MISSING]
    return argv


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """``linewatch ARGV`` in-process: (exit status, the non-empty lines of stderr)."""
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as exited:  # argparse ends the process itself
        status = int(exited.code or 0)
    return status, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def assert_one_line_naming(lines: list[str], name: str) -> None:
    assert len(lines) == 1, "\n".join(lines)
    assert "error:" in lines[0] and name in lines[0], lines[0]
    assert "Traceback" not in lines[0]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No LINEWATCH_* or GRAFANA_TOKEN from the caller, and a working folder without a .env file."""
    for name in list(os.environ):
        if name.startswith("LINEWATCH_") or name == "GRAFANA_TOKEN":
            monkeypatch.delenv(name)
    monkeypatch.setenv("LINEWATCH_API_TOKEN", API_TOKEN)
    monkeypatch.chdir(tmp_path)


# --- a value argparse rejects, for every subcommand -----------------------------------------------------

@pytest.mark.parametrize("words", sorted(LEAVES), ids=" ".join)
def test_every_subcommand_rejects_a_bad_flag_value_in_one_line(words: tuple[str, ...],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    parser = LEAVES[words]
    option = checked_option(parser)
    if option is None:  # nothing typed to get wrong: an unknown flag is the bad value
        argv, name = [*words, *required_values(parser), "--no-such-flag"], "--no-such-flag"
    else:
        argv, name = [*words, option.option_strings[0], "not-a-valid-value!"], option.option_strings[0]
    status, lines = run_main(argv, capsys)
    assert status == 2
    assert_one_line_naming(lines, name)


# --- a value only the command itself can judge, for every subcommand ----------------------------------------

BAD_URL = ["--database-url", "nosuchdialect://"]
# words -> (arguments, what the line must name, exit status); None: the command takes nothing that its
# parser does not already check (covered by the walk above)
BAD_VALUES: dict[tuple[str, ...], tuple[list[str], str, int] | None] = {
    ("camera",): (["--fps", "-1"], "--fps", 2),
    ("cameras",): (["--config", f"{MISSING}.yaml"], f"{MISSING}.yaml", 2),
    ("topics",): (["--partitions", "0"], "--partitions", 2),
    ("train",): ([MISSING, "--out", "m.safetensors", "--recipe", "auto", "--backbone", "resnet18"], "--recipe", 2),
    ("recipes",): None,
    ("calibrate",): ([MISSING, "--model", MISSING], "--print-threshold", 2),
    ("predict",): ([MISSING, "--model", MISSING, "--out", "out"], MISSING, ModelError.exit_code),
    ("export",): (["--model", MISSING, "--out", "m.onnx", "--int8"], "--int8", 2),
    ("evaluate",): ([MISSING, "--model", MISSING, "--report", "r", "--roi", f"{MISSING}.yaml"], f"{MISSING}.yaml", 2),
    ("detect",): (["--max-batch", "0"], "--max-batch", 2),
    ("bench",): (["--model", MISSING, "--device", "cpu"], MISSING, ModelError.exit_code),
    ("models", "register"): ([MISSING, "--product", "p", *BAD_URL], "--database-url", 2),
    ("models", "list"): (BAD_URL, "--database-url", 2),
    ("models", "show"): (["abcd", *BAD_URL], "--database-url", 2),
    ("models", "promote"): (["abcd", "--product", "p", *BAD_URL], "--database-url", 2),
    ("models", "rollback"): (["--product", "p", *BAD_URL], "--database-url", 2),
    ("models", "history"): (["--product", "p", *BAD_URL], "--database-url", 2),
    ("models", "shadow"): (["abcd", "--product", "p", "--since", "2h", *BAD_URL], "--database-url", 2),
    ("models", "migrate"): (BAD_URL, "--database-url", 2),
    ("audit", "run"): (BAD_URL, "--database-url", 2),
    ("audit", "export"): (BAD_URL, "--database-url", 2),
    ("audit", "show"): (["--camera", "c", "--sequence", "1", *BAD_URL], "--database-url", 2),
    ("audit", "prune"): (BAD_URL, "--database-url", 2),
    ("dataset", "export"): (["--feedback", "--product", "p", "--out", "o", *BAD_URL], "--database-url", 2),
    ("alerts",): (["--port", "999999"], "--port", 2),
    ("verdicts",): (["--mqtt-port", "0"], "--mqtt-port", 2),
    ("camera-health",): (["--metrics-port", "70000"], "--metrics-port", 2),
    ("stack",): None,
    ("demo",): None,  # its flags are argparse-typed; it runs the other commands, whose checks are above
    ("dashboards", "push"): (["--grafana-url", "http://127.0.0.1:9"], "--token", 2),
    ("config-doc",): None,
}


def test_every_subcommand_has_a_bad_value_case() -> None:
    assert set(BAD_VALUES) == set(LEAVES), "add the new subcommand to BAD_VALUES"


@pytest.mark.timeout(120)  # a case that does not fail would run the command: fail instead of hanging
@pytest.mark.parametrize("words", sorted(words for words, case in BAD_VALUES.items() if case), ids=" ".join)
def test_a_bad_value_the_command_judges_gives_one_line_and_its_status(words: tuple[str, ...],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    case = BAD_VALUES[words]
    assert case is not None
    arguments, name, expected = case
    status, lines = run_main([*words, *arguments], capsys)
    assert status == expected, "\n".join(lines)
    assert_one_line_naming(lines, name)


@pytest.mark.parametrize(("command", "variable", "value"), [
    (["camera"], "LINEWATCH_FPS", "fast"),
    (["topics"], "LINEWATCH_TOPICS__PARTITIONS", "zero"),
    (["detect"], "LINEWATCH_BACKEND", "tensorflow"),
    (["alerts"], "LINEWATCH_HTTP__PORT", "999999"),
    (["verdicts"], "LINEWATCH_DEADLINES__DEFAULT_MS", "-5"),
    (["camera-health"], "LINEWATCH_METRICS_PORT", "port"),
    (["audit", "run"], "LINEWATCH_REGISTRY__DATABASE_URL", "nosuchdialect://"),
    (["models", "list"], "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS", " , "),
    (["alerts"], "LINEWATCH_ALERTMANAGER_URL", "alertmanager:9093"),
    (["detect"], "LINEWATCH_REDIS__URL", "127.0.0.1:6379"),
])
def test_a_bad_environment_setting_gives_one_line_naming_the_variable(
        command: list[str], variable: str, value: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(variable, value)
    status, lines = run_main(command, capsys)
    assert status == 2
    assert_one_line_naming(lines, variable)


def test_a_flag_error_names_the_flag_and_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines = run_main(["alerts", "--port", "999999"], capsys)
    assert status == 2
    assert_one_line_naming(lines, "--port (LINEWATCH_HTTP__PORT)")


def test_a_password_in_a_bad_url_is_not_printed(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines = run_main(["models", "list", "--database-url", "nosuchdialect://user:s3cret@db/x"], capsys)
    assert status == 2
    assert "s3cret" not in lines[0] and "user:***@db" in lines[0]


# --- the service runner: overrides merged with the environment, validated together; exit statuses ----------

def test_flags_merge_with_the_environment_and_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    from linewatch.alerts.cli import FLAGS
    from linewatch.alerts.settings import AlertsSettings
    from linewatch.common.service_runner import Overrides

    monkeypatch.setenv("LINEWATCH_HTTP__HOST", "0.0.0.0")
    args = argparse.Namespace(host=None, port=9000, bootstrap_servers=None, redis_url=None, alertmanager_url=None)
    settings = Overrides.from_args(args, FLAGS).load(AlertsSettings)
    assert (settings.http.host, settings.http.port) == ("0.0.0.0", 9000)  # the variable kept, the flag applied
    args.port = 999999
    with pytest.raises(ConfigurationError, match=r"--port \(LINEWATCH_HTTP__PORT\)"):
        Overrides.from_args(args, FLAGS).load(AlertsSettings)


def test_the_runner_maps_a_service_outcome_to_an_exit_status() -> None:
    from linewatch.common.service_runner import run_until_signalled

    assert run_until_signalled(lambda _stop: None) == 0
    assert run_until_signalled(lambda _stop: 1) == 1

    def fails(_stop: object) -> None:
        raise RuntimeError("detector worker failed: out of memory")

    with pytest.raises(LinewatchError, match="worker failed") as failed:
        run_until_signalled(fails, fatal=(RuntimeError,))
    assert failed.value.exit_code == 1
    with pytest.raises(RuntimeError):  # not declared fatal: a bug, with its traceback
        run_until_signalled(fails)


# --- the error classes --------------------------------------------------------------------------------------

def test_error_classes_carry_their_documented_statuses() -> None:
    assert [cls.exit_code for cls in (LinewatchError, ConfigurationError, DataError, ModelError, BackendError,
                                      BrokerError)] == [1, 2, 3, 4, 5, 6]


def test_typed_errors_are_linewatch_errors_and_keep_their_old_bases() -> None:
    from linewatch.common.images import DataError as ImagesDataError
    from linewatch.common.settings import ConfigError
    from linewatch.common.topics import TopicError
    from linewatch.detector.model.backends.errors import BackendError as BackendsError
    from linewatch.detector.model.checkpoint import CheckpointError
    from linewatch.detector.model.device import DeviceError
    from linewatch.detector.model.metadata import MetadataError
    from linewatch.detector.model.stfpm.backbones import BackboneError
    from linewatch.ingest.wire import WireFormatError

    expected = {ConfigError: ConfigurationError, ImagesDataError: DataError, WireFormatError: DataError,
                CheckpointError: ModelError, MetadataError: ModelError, BackboneError: ModelError,
                BackendsError: BackendError, DeviceError: BackendError, TopicError: BrokerError}
    for cls, base in expected.items():
        assert issubclass(cls, base), cls
    for cls in (ImagesDataError, WireFormatError, CheckpointError, MetadataError, BackboneError, BackendsError,
                DeviceError):
        assert issubclass(cls, ValueError), f"{cls.__name__}: callers catching ValueError must still catch it"


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ValueError that is not a LinewatchError (a shape bug) is not turned into a one-line message."""
    from linewatch.detector import cli as detector_cli

    def broken(_args: argparse.Namespace) -> int:
        raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")

    monkeypatch.setattr(detector_cli, "_recipes", broken)
    with pytest.raises(ValueError, match="broadcast"):
        main(["recipes"])


# --- vocabularies: parsers, settings and loaders list the same names ------------------------------------

def _choices(words: tuple[str, ...], flag: str) -> tuple[str, ...]:
    action = next(a for a in LEAVES[words]._actions if flag in a.option_strings)
    return tuple(action.choices or ())


def test_parser_choices_are_the_vocabularies() -> None:
    for words in (("predict",), ("evaluate",), ("detect",), ("bench",)):
        assert _choices(words, "--backend") == Backend.values(), words
    assert _choices(("bench",), "--precision") == Precision.values()
    assert _choices(("train",), "--backbone") == Backbone.values()
    assert _choices(("train",), "--recipe") == RecipeName.values()


def test_vocabularies_match_what_they_name() -> None:
    from linewatch.detector.model.stfpm.backbones import BACKBONES
    from linewatch.detector.service.settings import DetectorSettings

    assert Backend.values() == BACKENDS
    assert Precision.values() == PRECISIONS
    assert recipe_names() == RecipeName.values()
    assert tuple(BACKBONES) == Backbone.values()
    assert DetectorSettings.model_fields["backend"].annotation is Backend


# --- the real console script --------------------------------------------------------------------------------

LINEWATCH = Path(sys.executable).with_name("linewatch")


@pytest.mark.slow
@pytest.mark.parametrize(("argv", "env", "name"), [
    (["alerts", "--port", "999999"], {}, "--port"),
    (["detect"], {"LINEWATCH_BACKEND": "tensorflow"}, "LINEWATCH_BACKEND"),
    (["camera", "--resize", "640by480"], {}, "--resize"),
    (["models", "list", "--database-url", "nosuchdialect://"], {}, "--database-url"),
], ids=["flag-port", "env-backend", "argparse-resize", "registry-url"])
def test_the_console_script_exits_2_with_one_line(argv: list[str], env: dict[str, str], name: str,
                                                  tmp_path: Path) -> None:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("LINEWATCH_")}
    environment |= {"LINEWATCH_API_TOKEN": API_TOKEN, **env}
    proc = subprocess.run([str(LINEWATCH), *argv], env=environment, cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_one_line_naming([line for line in proc.stderr.splitlines() if line.strip()], name)
