"""The synthetic world: a benchmark where time matters, generated from a seed in memory (no files), and --world's
knobs. data.py serves it as clips (build_dataset("synthetic"), data.Synthetic).

Each video has `num_objects` star-shaped blobs of random outline, size (`object_size`: range of the bounding diameter
in pixels) and spin, moving smoothly and bouncing off the borders over a mildly textured, noisy background (class 0).
An object's class (1..num_object_classes) sets its colour and nothing else. In about `hidden_fraction` of the frames,
drawn per object in runs of exactly `hide_run` frames with at least one visible frame between runs, the object is drawn
grey: its shape stays visible, its class can only come from other frames. The cue distance says how far the class is:
the frames to the nearest frame where the pixel's object is drawn in colour (0 where it is, and on the background; 1 at
the ends of a run, 2 in the middle of a run of 3); cue_hidden marks the pixels where it is above 0. `speed` scales the
blobs' speeds (0.5 to 1.5 pixels a frame at 1). Object ids say which object each pixel shows (NO_OBJECT: none).
The world follows from (seed, split), video by video; the defaults (hide_run=1, speed=1) give the world of earlier
versions, byte for byte.

The scripts read --world before they import torch (see cli.py), so this file imports numpy alone.
"""
import argparse
import math

import numpy as np

NO_OBJECT = 255  # object_ids of pixels that show no object (background, padding)
SPLITS = ("train", "val", "test")  # each its own videos
COLOURS = {"red": (0.9, 0.15, 0.15), "green": (0.15, 0.8, 0.2), "blue": (0.15, 0.3, 0.95),  # the object classes
           "yellow": (0.9, 0.85, 0.1), "magenta": (0.85, 0.2, 0.85), "cyan": (0.1, 0.85, 0.85)}
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


def videos(split="train", seed=0, num_videos=None, num_frames=24, size=(64, 96), num_object_classes=3, num_objects=3,
           object_size=(16, 32), hidden_fraction=1 / 3, hide_run=WORLD["hide_run"], speed=WORLD["speed"]):
    """The world's videos of split (one of SPLITS), num_videos of them (default: 64 for train, 32 for the others) of
    num_frames frames of size (H, W), each drawn from (seed, split, video) -> (class_names, palette, images, labels,
    cue_distance, object_ids): the classes' names, background first, and their colours in pictures uint8 (K, 3);
    images uint8 (V, T, H, W, 3); labels, cue distances and object ids uint8 (V, T, H, W) each.
    ValueError for knobs that do not fit together."""
    if not 1 <= num_object_classes <= len(COLOURS):
        raise ValueError(f"num_object_classes must be 1..{len(COLOURS)}")
    if object_size[1] >= min(size):
        raise ValueError(f"object_size {object_size}: objects must fit the {size[0]}x{size[1]} frame")
    if not (isinstance(hide_run, int) and hide_run >= 1) or not speed > 0:
        raise ValueError(f"hide_run {hide_run}, speed {speed}: hide_run must be a whole number of at least 1 "
                         f"and speed above 0")
    runs = hidden_runs(num_frames, hidden_fraction, hide_run)
    if runs * hide_run + runs - 1 > num_frames:
        raise ValueError(f"hide_run {hide_run}: {runs} x {hide_run} hidden frames, with a visible frame between "
                         f"runs, do not fit {num_frames} frames (hidden_fraction {hidden_fraction:.3g})")
    num_videos = num_videos or (64 if split == "train" else 32)
    names = list(COLOURS)[:num_object_classes]
    palette = np.array([COLOURS[n] for n in names])
    drawn = [_video(np.random.default_rng([seed, SPLITS.index(split), v, 2]), num_frames, *size, palette, num_objects,
                    object_size, runs, hide_run, speed) for v in range(num_videos)]
    colours = [(0.25, 0.25, 0.25)] + [COLOURS[n] for n in names]  # pictures: background dark grey
    return (["background", *names], np.round(255 * np.array(colours)).astype(np.uint8),
            *(np.stack(x) for x in zip(*drawn)))


def hidden_runs(T, hidden_fraction, hide_run):
    """How many runs of hide_run hidden frames each object has in a video of T frames: about hidden_fraction of T
    hidden frames in all, and at least one run when any frame is to be hidden."""
    k = round(hidden_fraction * T)
    return max(1, round(k / hide_run)) if k else 0


def _video(rng, T, H, W, palette, num_objects, object_size, runs, hide_run, speed_factor):
    """One synthetic video: images uint8 (T, H, W, 3), labels uint8 (T, H, W), cue distances uint8 (T, H, W) (see
    the module's docstring) and object_ids uint8 (T, H, W) (NO_OBJECT: background)."""
    N = num_objects
    t = np.arange(T)[:, None]  # (T, 1)
    classes = rng.integers(1, len(palette) + 1, N)
    radius = rng.uniform(*object_size, N) / 2
    harmonics = (2, 3, 5)  # outline r(angle) = 1 + sum_k a_k cos(k angle + phase_k), shrunk to radius
    amplitude = rng.uniform(0, [0.2, 0.1, 0.05], (N, 3)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (N, 3)).astype(np.float32)
    spin = rng.uniform(0, 2 * np.pi, N) + rng.uniform(-0.08, 0.08, N) * t  # (T, N)
    speed, heading = rng.uniform(0.5, 1.5, N) * speed_factor, rng.uniform(0, 2 * np.pi, N)
    cy = _bounce(rng.uniform(radius, H - radius) + speed * np.sin(heading) * t, radius, H - radius)  # (T, N)
    cx = _bounce(rng.uniform(radius, W - radius) + speed * np.cos(heading) * t, radius, W - radius)

    # each object drawn in an S x S window around its centre, then pasted into a canvas padded by S
    S = int(np.ceil(object_size[1])) + 2
    y0, x0 = np.floor(cy).astype(int) - S // 2, np.floor(cx).astype(int) - S // 2  # (T, N) window corners
    dy = (y0[..., None] + np.arange(S) + 0.5 - cy[..., None])[..., None].astype(np.float32)  # (T, N, S, 1)
    dx = (x0[..., None] + np.arange(S) + 0.5 - cx[..., None])[..., None, :].astype(np.float32)  # (T, N, 1, S)
    angle = np.arctan2(dy, dx) - spin[..., None, None].astype(np.float32)  # (T, N, S, S)
    outline = 1 + sum(amplitude[:, i, None, None] * np.cos(k * angle + phase[:, i, None, None])
                      for i, k in enumerate(harmonics))
    inside = np.sqrt(dy**2 + dx**2) * (1 + amplitude.sum(1))[:, None, None] <= radius[:, None, None] * outline
    owner = np.full((T, H + 2 * S, W + 2 * S), N, np.uint8)  # which object each pixel shows, N: background
    rows = (y0 + S)[..., None, None] + np.arange(S)[:, None]  # (T, N, S, 1)
    cols = (x0 + S)[..., None, None] + np.arange(S)  # (T, N, 1, S)
    for o in range(N):  # later objects in front
        window = (t[..., None], rows[:, o], cols[:, o])
        owner[window] = np.where(inside[:, o], o, owner[window])
    owner = owner[:, S:S + H, S:S + W]

    R, m = hide_run, runs
    hidden = np.zeros((T, N + 1), bool)  # last column: background, never hidden
    for o in range(N):  # m runs of R frames, a visible frame after each: m starts from T - mR + 1 slots, spread apart
        starts = np.sort(rng.choice(T - m * R + 1, m, replace=False)) + R * np.arange(m)
        hidden[(starts[:, None] + np.arange(R)).ravel(), o] = True
    frames_apart = np.abs(t - t.T)[..., None]  # (T, T, 1): |t - t'|
    distance = np.where(~hidden[None], frames_apart, T).min(1)  # (T, N + 1): to the nearest frame in colour
    colour = palette[classes - 1] + rng.uniform(-0.06, 0.06, (N, 3))
    grey = rng.uniform(0.45, 0.65, (N, 1)).repeat(3, 1)  # drawn independently of the class
    table = np.concatenate([np.where(hidden[:, :N, None], grey, colour), np.zeros((T, 1, 3))], 1)  # (T, N + 1, 3)
    table = table.astype(np.float32)

    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    background = (rng.uniform(0.2, 0.4) + rng.uniform(-0.05, 0.05, 3)).astype(np.float32)  # a dim, tinted grey
    for _ in range(2):  # plus two faint gratings
        freq, direction = rng.uniform(1 / 20, 1 / 6), rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * freq * (y * np.sin(direction) + x * np.cos(direction)) + rng.uniform(0, 2 * np.pi))
        background = background + 0.05 * wave[..., None]  # (H, W, 3)
    image = np.take(table.reshape(-1, 3), t[..., None] * (N + 1) + owner, axis=0)  # (T, H, W, 3): table[t, owner]
    np.copyto(image, background, where=(owner == N)[..., None])
    image += rng.random((T, H, W, 1), dtype=np.float32) * 0.1 - 0.05  # pixel noise
    image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    labels = np.append(classes, 0)[owner].astype(np.uint8)
    cue_distance = distance[t[..., None], owner].astype(np.uint8)
    return image, labels, cue_distance, np.where(owner == N, NO_OBJECT, owner).astype(np.uint8)


def _bounce(p, lo, hi):
    """Positions p along a straight line, reflected at lo and hi: a ball bouncing between two walls."""
    span = hi - lo
    q = np.mod(p - lo, 2 * span)
    return lo + np.where(q > span, 2 * span - q, q)
