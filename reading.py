"""Reading a data set's files, each failure one DataError that names the file and what is wrong: images (open_image,
image_size), a folder's frames in frame order (frame_files), list files (read_lines). data.py's layouts read through
it, and so does predict.py's folder of frames, which is no data set.
"""
import os
import re

from PIL import Image

UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)  # what PIL raises for a bad image file


class DataError(Exception):
    """Bad input data; the message is one line naming the path and what is wrong."""


def open_image(path):
    """The decoded image at path (PIL), in its own mode; DataError if it cannot be read."""
    try:
        image = Image.open(path)
        image.load()  # decode now: truncated and corrupt files fail here
    except UNREADABLE as e:
        raise DataError(f"{path}: unreadable image ({e})") from None
    return image


def image_size(path):
    """(H, W) of the image at path, from its header alone; DataError if it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size[::-1]
    except UNREADABLE as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


def frame_files(folder, extensions=(".jpg", ".jpeg", ".png")):
    """{file stem: path} of the files in folder ending in one of extensions, in frame order (frame2 before frame10);
    DataError for a missing folder, none of those files, or two files of one stem."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such folder")
    found = {}
    for name in os.listdir(folder):
        stem, extension = os.path.splitext(name)
        if extension.lower() in extensions:
            if stem in found:
                raise DataError(f"{folder}: two files for frame {stem!r}")
            found[stem] = os.path.join(folder, name)
    if not found:
        raise DataError(f"{folder}: no {'/'.join(extensions)} files")
    return {stem: found[stem] for stem in sorted(found, key=natural_key)}


def check_pairs(frames, labels, label_dir):
    """DataError unless the label files have exactly the frames' stems."""
    if frames.keys() != labels.keys():
        odd = sorted(frames.keys() ^ labels.keys(), key=natural_key)
        raise DataError(f"{label_dir}: {len(labels)} label files for {len(frames)} frames ({odd[0]!r} is not in both)")


def matching_files(folder, pattern, expected):
    """{match groups: path} of the files in folder (Cityscapes-VPS: {(VVVV, FFFF): path}); every name but hidden ones
    must fullmatch pattern (a compiled regex), which `expected` describes."""
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such folder")
    found = {}
    for name in os.listdir(folder):
        if name.startswith("."):
            continue
        match = pattern.fullmatch(name)
        if match is None:
            raise DataError(f"{os.path.join(folder, name)}: name is not {expected}")
        if match.groups() in found:
            raise DataError(f"{os.path.join(folder, name)}: a second file for {'_'.join(match.groups())}")
        found[match.groups()] = os.path.join(folder, name)
    if not found:
        raise DataError(f"{folder}: no {expected} files")
    return found


def read_lines(path):
    """The non-empty lines of a text file, stripped."""
    try:
        with open(path) as f:
            lines = [line.strip() for line in f]
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    lines = [line for line in lines if line]
    if not lines:
        raise DataError(f"{path}: empty")
    return lines


def natural_key(name):
    """Sort key putting frame2 before frame10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
