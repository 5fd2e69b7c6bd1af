"""The command line of train.py, evaluate.py and bench.py: one pattern, light enough to run before torch loads.

Each script reads and checks its flags in `parse_args(argv)` before it imports torch and transformers (2-4 s), so
that --help and a mistake answer at once; a bad flag or input is one line `error: ...` and exit status 2.
"""
import argparse
import sys


def fail(message):
    """Bad input: one line on stderr, exit status 2 (argparse's own status for bad flags), no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def make_parser(doc, epilog=None):
    """An ArgumentParser described by the first paragraph of doc: no abbreviated flags (--max-step must not pass for
    --max-steps), errors through fail."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0].strip(), epilog=epilog, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = fail
    return parser


def check_at_least(args, lows):
    """fail unless every flag in lows ({"--name": lowest value}) that was given is at least its lowest value."""
    for flag, low in lows.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and value < low:
            fail(f"{flag} {value}: must be at least {low}")


def count(n, noun):
    """'1 video', '2 videos': n and the noun, plural unless n is 1."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def first_line(e):
    """An exception as one line: its type and the first line of its message."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
