"""The synthetic world: a benchmark where time matters, generated from a seed in memory (no files), and --world's
knobs. data.py serves it as clips (build_dataset("synthetic")).

The scripts read --world before they import torch (see cli.py), so this file imports numpy alone.
"""
import argparse
import math

WORLD = {"hide_run": 1, "speed": 1.0}  # the knobs of the world that --world sets, with their defaults


def parse_world(text):
    """--world 'hide_run=3,speed=8' -> {"hide_run": 3, "speed": 8.0}, the world's knobs that differ from their
    defaults, so that every spelling of one world is one dict ('' and 'hide_run=1': {}).
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
