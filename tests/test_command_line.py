"""The programs' command lines: --help names every flag's default, and help and bad flags are answered before
PyTorch is imported (seconds saved), with usage errors in the one-line `error:` style of every other error."""
import argparse
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import app
import evaluate
import export
import predict
from effnet import command_line
from effnet.training import flags

REPO = Path(__file__).resolve().parents[1]
PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "train": flags.build_parser, "predict": predict.build_parser, "evaluate": evaluate.build_parser,
    "export": export.build_parser, "app": app.build_parser}
NEAR = 40  # characters between the word "default" and the value it names


def spellings(value: Any) -> set[str]:
    """How a default value may be written in a help text."""
    if isinstance(value, bool):
        return {"true", "on"} if value else {"false", "off"}
    if isinstance(value, float):
        return {f"{value:g}", str(value)}
    return {str(value)}


def names_its_default(action: argparse.Action) -> bool:
    """The help says "default" and, for a default that is a value (not off or none), writes that value near it."""
    text = action.help or ""
    if action.default in (None, False, (), []):  # off / none: saying what the default is suffices
        return "default" in text
    windows = [text[max(0, found.start() - NEAR):found.end() + NEAR] for found in re.finditer("default", text)]
    return any(spelling in window for window in windows for spelling in spellings(action.default))


@pytest.mark.parametrize("program", sorted(PARSERS))
def test_every_flag_s_help_names_its_default(program):
    actions = [action for action in PARSERS[program]()._actions
               if action.default is not argparse.SUPPRESS and (action.option_strings or action.nargs == "?")]
    assert len(actions) >= 8
    missing = [action.option_strings or action.dest for action in actions if not names_its_default(action)]
    assert not missing, f"{program}.py: the help of {missing} does not name the default"


# Each program's --help and a few bad command lines, run in one fresh interpreter: (program, argv, exit status).
COMMAND_LINES = [
    ("train", ["--help"], 0), ("train", ["--epochs", "x"], 2), ("train", ["--epochs", "0"], 2),
    ("train", ["--recipe", "fancy"], 2), ("train", ["--lr", "nan"], 2), ("train", ["--no-such-flag"], 2),
    ("predict", ["--help"], 0), ("predict", [], 2), ("predict", ["a.jpg", "--top-k", "0"], 2),
    ("evaluate", ["--help"], 0), ("evaluate", ["photos", "--batch-size", "0"], 2),
    ("export", ["--help"], 0), ("export", ["--opset", "3"], 2), ("export", ["--opset", "many"], 2),
    ("app", ["--help"], 0), ("app", ["--port", "70000"], 2), ("app", ["--max-files", "0"], 2),
]
ANSWER = """
import contextlib, importlib, io, json, sys
answers = []
for program, argv, _ in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = importlib.import_module(program).main(argv)
        except SystemExit as stop:
            status = stop.code
    answers.append([status, out.getvalue(), err.getvalue(), sorted({'torch', 'torchvision'} & set(sys.modules))])
print(json.dumps(answers))
"""


def test_help_and_bad_flags_are_answered_without_importing_pytorch():
    result = subprocess.run([sys.executable, "-c", ANSWER, json.dumps(COMMAND_LINES)], cwd=REPO, capture_output=True,
                            text=True, check=True)
    for (program, argv, expected), (status, out, err, heavy) in zip(COMMAND_LINES, json.loads(result.stdout)):
        command = f"{program}.py {' '.join(argv)}"
        assert heavy == [], f"{command} imported {heavy}"
        assert status == expected, (command, status, err)
        if expected == 0:
            assert out.startswith("usage:") and "default" in out and err == "", command
        else:  # one line in the style of every other error: no usage block, no program name before it
            assert err.startswith("error: ") and err.count("\n") == 1 and out == "", (command, err)


@pytest.mark.parametrize("program", sorted(PARSERS))
def test_help_opens_with_examples_groups_its_flags_and_speaks_to_users(program, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the widest --help: HELP_WIDTH
    parser = PARSERS[program]()
    paragraphs = parser.description.strip("\n").split("\n\n")
    examples = paragraphs[1].splitlines()  # after the one-paragraph summary
    assert len(examples) >= 3 and all(line.startswith((f"    python {program}.py", "    torchrun ", "    curl "))
                                      for line in examples), paragraphs[1]
    ungrouped = [action.option_strings for action in parser._optionals._group_actions if action.dest != "help"]
    assert not ungrouped, f"{program}.py: flags outside any group of --help: {ungrouped}"
    text = parser.format_help()
    assert "effnet/" not in text and "BENCHMARKS" not in text  # users' help: no maintainers' files
    too_long = [line for line in text.splitlines() if len(line) > command_line.HELP_WIDTH]
    assert not too_long, f"{program}.py --help is wider than {command_line.HELP_WIDTH} columns: {too_long}"
