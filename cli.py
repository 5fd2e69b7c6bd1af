"""The command line of train.py, evaluate.py, predict.py and bench.py: one pattern, light enough to run before torch
loads.

Each script reads and checks its flags in `parse_args(argv)` before it imports torch and transformers (2-4 s), so
that --help and a mistake answer at once; a bad flag or input is one line `error: ...` and exit status 2.
"""
import argparse
import json
import math
import sys
from pathlib import Path


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


def check_checkpoint(flag, folder):
    """fail unless folder is a qshift checkpoint, as QShiftSegmenter.save_pretrained writes it: a config.json with a
    "qshift" entry (the settings), or, from earlier versions, a qshift.json beside the config. Reads JSON only."""
    folder = Path(folder)
    if not folder.is_dir():
        fail(f"{flag} {folder}: no such folder")
    config = folder / "config.json"
    if not config.is_file():
        fail(f"{flag} {folder}: not a qshift checkpoint (no config.json; train.py writes RUN/best)")
    try:
        saved = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        fail(f"{flag} {folder}: cannot read {config} ({first_line(e)})")
    if not (isinstance(saved, dict) and "qshift" in saved) and not (folder / "qshift.json").is_file():
        fail(f"{flag} {folder}: not a qshift checkpoint (its config.json has no qshift settings, and there is no "
             f"qshift.json; train.py writes RUN/best)")


WORLD = {"hide_run": 1, "speed": 1.0}  # the knobs of the synthetic world that --world sets (data.Synthetic's), defaults


def parse_world(text):
    """--world 'hide_run=3,speed=8' -> {"hide_run": 3, "speed": 8.0}, the synthetic world's knobs (see data.Synthetic)
    that differ from their defaults, so that every spelling of one world is one dict ('' and 'hide_run=1': {}).
    A bad key or value: argparse.ArgumentTypeError, which the parser turns into one line."""
    world = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        if key not in WORLD:
            raise argparse.ArgumentTypeError(f"{item!r}: unknown knob {key!r} (knobs: {', '.join(WORLD)})")
        try:
            number = type(WORLD[key])(value)
        except ValueError:
            number = None
        if number is None or not (number >= 1 if key == "hide_run" else math.isfinite(number) and number > 0):
            what = "a whole number of at least 1" if key == "hide_run" else "a finite number above 0"
            raise argparse.ArgumentTypeError(f"{item!r}: {key} must be {what}")
        if number != WORLD[key]:
            world[key] = number
    return world


def world_name(world):
    """A world's knobs in file names: "" for the default world, "-hide_run3-speed8" for {"hide_run": 3, "speed": 8}."""
    return "".join(f"-{key}{value:g}" for key, value in sorted(world.items()))
