"""What the command-line programs share: the usage error they report in one line, yes/no, variant and device
flags, and file names made printable on one line."""
import argparse
import contextlib
import os
import re
import shutil
import signal
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any, NoReturn

from effnet.variants import variant_name


class UsageError(Exception):
    """Bad input from the user: the command-line programs print the message on one line and exit 2."""


HELP_WIDTH = 100  # columns of every program's --help, narrower on a narrower terminal


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help at one width: the description's paragraphs and the flags' help wrapped alike, its indented lines (the
    examples) kept as written."""

    def __init__(self, prog: str) -> None:
        width = min(HELP_WIDTH, shutil.get_terminal_size((HELP_WIDTH + 2, 24)).columns - 2)
        super().__init__(prog, width=width, max_help_position=32)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in text.strip("\n").split("\n\n"):
            if paragraph.startswith(" "):  # examples: one command a line, as written
                paragraphs.append(paragraph)
            else:
                paragraphs.append(textwrap.fill(" ".join(paragraph.split()), width, initial_indent=indent,
                                                subsequent_indent=indent))
        return "\n\n".join(paragraphs)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, reporting a bad flag the way the programs report every usage error: one `error:` line
    on stderr and exit status 2 (argparse would print the whole usage first, and the program's name before
    `error:`); --help at one width (HelpFormatter)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {one_line(message)} (--help lists every flag)\n")


def parse_bool(text: str) -> bool:
    """argparse type for true/false flags (argparse's type=bool would take the string "False" as true)."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_variant(text: str) -> str:
    """argparse type for --model: 'b3', 'B3' or 'efficientnet_b3' all mean b3."""
    try:
        return variant_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_device_name(name: str) -> str:
    """The type of a --device name such as cpu, cuda or cuda:1 (checked without importing PyTorch, so that a
    wrong name is reported as such whatever backend would run the model); UsageError for anything else."""
    match = re.fullmatch(r"([a-z_]+)(:\d+)?", name.strip())
    if match is None or match.group(1) not in DEVICE_TYPES:
        raise UsageError(f"--device {name}: only {', '.join(DEVICE_TYPES[:-1])} and {DEVICE_TYPES[-1]} are "
                         f"supported (e.g. cpu, cuda, cuda:1)")
    return match.group(1)


def printable(text: str) -> str:
    """`text` as any UTF-8 stream can print it: the bytes of a file name that are not UTF-8 (which Python
    carries as lone surrogates, such as b'caf\\xe9.jpg' read as 'caf\\udce9.jpg') shown as \\xNN escapes."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file name decodes to: escape the code point itself
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


_LINE_BREAKERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # control characters and line separators


def one_line(text: str) -> str:
    """`text` printable (see printable) and on one line: a newline, tab or other control character, which a file
    name may hold, shown as its escape (\\n, \\t, \\x1b)."""
    return _LINE_BREAKERS.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), printable(text))


def report(message: str, status: int = 2) -> int:
    """Print `error: message` on stderr, on one line, and return the exit status to use."""
    print(f"error: {one_line(message)}", file=sys.stderr)
    return status


def exit_now(status: int) -> None:
    """End the program with `status`, its output flushed, without the interpreter's teardown: destroying ONNX
    Runtime's session and thread pools and freeing every module takes tens of milliseconds, a good part of a
    one-photo prediction, and serves nothing once the results are written. Only for a program's last step,
    when every file it wrote is closed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away, or a stream closed: nothing more to deliver
            pass
    os._exit(status)


def exit_with(status: int) -> NoReturn:
    """sys.exit(status) once a program's main() has returned, with a Ctrl-C during the interpreter's teardown ending
    it at once in one line and status 130: PyTorch's finalizers and thread pools run in atexit callbacks, where a
    KeyboardInterrupt is printed as an "Exception ignored" traceback and the status stays what main() said."""
    def interrupted(number: int, frame: Any) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        os.write(2, b"error: interrupted while the program was ending; what it printed and wrote is complete\n")
        os._exit(130)

    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, interrupted)
    sys.exit(status)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) back until the block is done, then act on it as Python would have (KeyboardInterrupt).
    Around a result's writes, it is then in every output (stdout, --csv) or in none; around the imports of
    PyTorch and friends, no module is left half-imported (numpy, matplotlib and torch fail in odd ways, or swallow
    the interrupt, when a KeyboardInterrupt lands inside their initialisation)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: caught.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if caught and callable(previous):  # Python's own handler raises KeyboardInterrupt
            previous(signal.SIGINT, None)
        elif caught and previous == signal.SIG_DFL:  # the default would have ended the program
            raise KeyboardInterrupt
