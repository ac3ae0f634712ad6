"""The `flashstream` command as a new user meets it: --version, help that shows every option with its default,
and every example of `up --help` and of README.md checked by `up --dry-run` (ports, model folder, stage flags)."""

from __future__ import annotations

import argparse
import re
import shlex
import socket
from pathlib import Path

import pytest

from services import cli, launcher, stages, up_options
from services.common.config import HelpFormatter
from services.demo import build_demo_model
from services.demo.build import DEMO_VERSION
from services.port_check import describe_taken, is_free, port_owner
from services.up_options import EXAMPLES, STAGE_ARGS_EXAMPLES

README = Path(__file__).resolve().parents[3] / "README.md"
PLACEHOLDER_CHECKPOINT = "/path/to/Llama-3.2-1B-Instruct"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the demo build, so dry runs print no build progress."""
    folder = tmp_path_factory.mktemp("cache")
    build_demo_model(folder / f"demo-model-v{DEMO_VERSION}")
    return folder


@pytest.fixture(autouse=True)
def _own_cache_dir(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHSTREAM_CACHE_DIR", str(cache_dir))


def _help(capsys: pytest.CaptureFixture, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as done:
        cli.main(argv)
    assert done.value.code == 0
    return capsys.readouterr().out


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture) -> None:
    import importlib.metadata

    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"flashstream {importlib.metadata.version('flashstream')}\n"


def _all_parsers() -> dict[str, argparse.ArgumentParser]:
    from services.generate_client import build_parser as generate_parser

    parsers = {f"serve {stage}": stages.stage_parser(stage) for stage in stages.STAGE_MAINS}
    return parsers | {"up": up_options.build_parser(), "generate": generate_parser(),
                      "demo-model": cli.demo_model_parser()}


def test_every_option_of_every_command_has_help_that_shows_its_default() -> None:
    for command, parser in _all_parsers().items():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            name = action.option_strings[-1] if action.option_strings else action.dest
            assert action.help, f"{command}: {name} has no help"
            text = HelpFormatter(command)._get_help_string(action)
            if isinstance(action, argparse.BooleanOptionalAction):
                state = "on" if action.default else "off"
                assert text == f"{action.help} (default: {state})", f"{command}: {name} is {state} by default"
            elif action.option_strings and action.nargs == 0:
                assert text == f"{action.help} (default: off)", f"{command}: {name} is a flag, off unless given"
            elif action.option_strings and action.default not in (None, False, argparse.SUPPRESS):
                assert "%(default)s" in text, f"{command}: {name} shows no default"
        assert parser.formatter_class is HelpFormatter, command


@pytest.mark.parametrize("command", [["up"], ["serve", "gateway"], ["serve", "worker"], ["generate"],
                                     ["demo-model"]])
def test_help_of_each_command_prints_and_exits_zero(capsys: pytest.CaptureFixture, command: list[str]) -> None:
    assert "(default:" in _help(capsys, [*command, "--help"])


def _dry_run(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str, str]:
    code = launcher.main([*argv, "--dry-run"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _up_examples() -> list[str]:
    return [line.strip() for line in EXAMPLES.splitlines() if line.strip().startswith("flashstream up")]


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line.removeprefix(".venv/bin/") for line in lines if line.startswith((".venv/bin/flashstream",
                                                                                 "flashstream"))]


def test_every_example_of_up_help_and_readme_passes_a_dry_run(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    checkpoint = build_demo_model(tmp_path / "checkpoint")
    capsys.readouterr()  # the build's progress lines
    examples = _up_examples() + [c for c in _readme_commands() if c.startswith("flashstream up")]
    assert len(examples) >= 7
    for example in examples:
        argv = shlex.split(example.replace(PLACEHOLDER_CHECKPOINT, str(checkpoint)))[2:]
        code, out, err = _dry_run(capsys, [*argv, "--base-port", "0", "--http-port", "0"])
        assert (code, err) == (0, ""), example
        names = [line.split(":")[0] for line in out.splitlines() if ": flashstream serve " in line]
        assert names[0] == "worker0" and names[-1].startswith("gateway"), example


def test_the_readme_generate_commands_and_the_stage_flag_examples_parse() -> None:
    from services.generate_client import build_parser as generate_parser

    generate = [c for c in _readme_commands() if c.startswith("flashstream generate")]
    assert generate
    for command in generate:
        assert generate_parser().parse_args(shlex.split(command)[2:]).prompt
    for stage, example in STAGE_ARGS_EXAMPLES.items():
        stages.stage_parser(stage).parse_args(shlex.split(example))


def test_a_flag_a_stage_does_not_know_is_refused_in_one_line_before_anything_starts(
        capsys: pytest.CaptureFixture) -> None:
    code, out, err = _dry_run(capsys, ["--base-port", "0", "--http-port", "0", "--tokenizer-args",
                                       "--max-num-seqs 64"])
    assert code == 1
    assert err == ("error: --tokenizer-args: flashstream serve tokenizer: error: unrecognized arguments: "
                   "--max-num-seqs 64\n")
    assert "flashstream serve" not in out


def test_a_folder_without_a_tokenizer_is_refused_in_one_line_before_weights_load(
        capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    code, _, err = _dry_run(capsys, ["--model", str(folder), "--base-port", "0", "--http-port", "0"])
    assert (code, err) == (1, f"error: model folder {folder} lacks tokenizer.json, *.safetensors (or use "
                              "--load-format dummy)\n")
    code, _, err = _dry_run(capsys, ["--model", "llama-3.2-1b", "--base-port", "0", "--http-port", "0"])
    assert (code, err) == (1, "error: preset 'llama-3.2-1b' has no weights: add --load-format dummy (random "
                              "weights of its real shapes) or fake\n")
    code, _, err = _dry_run(capsys, ["--model", "no-such-folder", "--base-port", "0", "--http-port", "0"])
    assert code == 1 and err.startswith("error: --model 'no-such-folder' is neither a folder nor a preset")


def test_a_preset_gets_a_folder_whose_tokenizer_covers_its_vocabulary(capsys: pytest.CaptureFixture) -> None:
    from services.tokenizer.tokenizer import TextTokenizer

    argv = ["--model", "llama-3.2-1b", "--load-format", "dummy", "--base-port", "0", "--http-port", "0"]
    code, out, err = _dry_run(capsys, argv)
    assert (code, err) == (0, "")
    assert out.startswith("building the llama-3.2-1b preset folder")
    folder = re.search(r"--model (\S+)", out.splitlines()[1]).group(1)
    tokenizer = TextTokenizer.from_dir(folder)
    assert (tokenizer.vocab_size, tokenizer.eos_token_ids, tokenizer.bos_token_id) == (128256, (128001,), 128000)
    assert tokenizer.encode("hi")[0] == 128000
    code, out, _ = _dry_run(capsys, argv)
    assert code == 0 and "building" not in out  # built once


def test_the_demo_build_message_prints_on_the_run_that_builds_and_on_no_later_run(
        capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHSTREAM_CACHE_DIR", str(tmp_path / "fresh"))
    code, out, err = _dry_run(capsys, ["--base-port", "0", "--http-port", "0"])
    assert (code, err) == (0, "".join(f"building the demo model: {p}% ({i}/3 step)\n"
                                      for i, p in ((1, 33), (2, 66), (3, 100))))
    assert out.startswith("building the demo model (first run only) ...\n")
    code, out, err = _dry_run(capsys, ["--base-port", "0", "--http-port", "0"])
    assert (code, err) == (0, "")
    assert "building" not in out and out.startswith("worker0: flashstream serve worker ")


def test_a_taken_port_is_named_with_its_process_before_anything_starts(capsys: pytest.CaptureFixture) -> None:
    import os

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert not is_free("127.0.0.1", port)
        assert port_owner(port).pid == os.getpid()
        code, out, err = _dry_run(capsys, ["--base-port", "0", "--http-port", str(port)])
        assert code == 1 and "flashstream serve" not in out
        assert err.startswith(f"error: {describe_taken('127.0.0.1', port, 'gateway HTTP API')}")
        assert f"port {port} (gateway HTTP API) on 127.0.0.1 is already in use by pid {os.getpid()}: " in err
    assert is_free("127.0.0.1", port)


def test_a_port_held_by_no_listener_in_the_outgoing_range_says_that_range_may_hold_it() -> None:
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    with socket.socket() as outgoing:  # bound, not listening: as a connection's local port is
        for port in range(high, low, -1):
            try:
                outgoing.bind(("127.0.0.1", port))
                break
            except OSError:
                continue
        assert port_owner(port) is None and not is_free("127.0.0.1", port)
        assert describe_taken("127.0.0.1", port, "scheduler status HTTP") == (
            f"port {port} (scheduler status HTTP) on 127.0.0.1 is already in use (no process listens on it: ports "
            f"{low}-{high} are this system's range for outgoing connections, and one of those may hold it for a "
            "while)")
