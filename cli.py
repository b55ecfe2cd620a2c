"""What the command-line programs share: the usage error they report in one line, yes/no and variant flags."""
import argparse
import sys

from variants import variant_name


class UsageError(Exception):
    """Bad input from the user: the command-line programs print the message on one line and exit 2."""


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


def report(message: str, status: int = 2) -> int:
    """Print `error: message` on stderr and return the exit status to use."""
    print(f"error: {message}", file=sys.stderr)
    return status
