"""Clip datasets for video semantic segmentation: VSPW, Cityscapes-VPS, your own folders, and a synthetic benchmark.

Every dataset yields clips of T consecutive frames (see `build_dataset`). The layouts on disk:

VSPW and VSPW_480p (`vspw`), as released:
    ROOT/train.txt, val.txt, test.txt       one video name a line
    ROOT/label_num_dic_final.json           optional: class name -> raw id (0 is "others")
    ROOT/data/<video>/origin/<frame>.jpg
    ROOT/data/<video>/mask/<frame>.png      raw ids: 1..124 are the classes, 0 ("others") and 255 are ignored
  Only videos of at least `min_frames` frames are used: the paper's filter keeps those of VSPW_MIN_FRAMES for
  training and validation; VSPW's official evaluation scores every video of val.txt (min_frames=1). The test split
  has no masks.

Cityscapes-VPS (`cityscapes-vps`):
    ROOT/<split>/img/VVVV_FFFF_<city>_<seq>_<frame>_newImg8bit.png    (or _leftImg8bit.png)
    ROOT/<split>/labelmap/VVVV_FFFF_*.png   uint8 Cityscapes train ids 0..18, 255 = ignore
  Frames are grouped by the video id VVVV and ordered by the frame id FFFF; train and val load the annotated frames
  (those with a labelmap PNG, 6 per video), test loads every image. The release has no labelmap/ folder: VPSNet's
  prepare_data/create_panoptic_labels.py writes it from the release's per-frame class-colour maps (cls/) by mapping
  each class colour to its train id and everything else to 255. Any tool that writes such uint8 PNGs will do.

Your own clips (`clips`):
    ROOT/classes.txt                        one class name a line (required when there are labels), optionally
                                            followed by its colour in pictures: "road #804080"
    ROOT/<video>/frames/<frame>.jpg|png
    ROOT/<video>/labels/<frame>.png         optional: class ids 0..K-1, 255 = ignore, the frames' file stems
    ROOT/train.txt, val.txt, ...            optional: one video folder name a line, the videos of a split
  The split "all" is every video; "train" without a train.txt every video that val.txt does not list. Every video
  has labels, or none has.

Synthetic (`synthetic`): generated in memory from the seed, no files; see synthetic.py and `Synthetic`.

Bad input (a missing folder, an unreadable or mismatched file) raises DataError (reading.py): one line naming the
path and what is wrong.
"""
import json
import math
import os
import re
import sys

import numpy as np
import torch
from torch.utils.data import Dataset

import synthetic
from augment import SCALES, random_geometry, warp
from qshift import frames_to_pixel_values  # the normalisation of qshift.MEAN and STD (ImageNet)
from reading import (DataError, check_pairs, frame_files, image_size, matching_files, natural_key, open_image,
                     read_lines)

IGNORE_INDEX = 255
PADS = {"labels": IGNORE_INDEX, "cue_distance": 0, "object_ids": synthetic.NO_OBJECT}  # a clip's maps; pads: "none"

CITYSCAPES_CLASSES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
                      "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
                      "bicycle"]
CITYSCAPES_PALETTE = [(128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
                      (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
                      (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32)]
# the official colours of the train ids (cityscapesScripts' labels.py)
VSPW_NUM_CLASSES = 124
VSPW_MIN_FRAMES = 32  # the paper keeps the VSPW videos of at least 32 frames, for training and validation


def build_dataset(name, root=None, split="train", clip_len=8, train=True, crop=None, min_frames=VSPW_MIN_FRAMES,
                  seed=0, **world):
    """The clip dataset `name` ("vspw", "cityscapes-vps", "clips" or "synthetic") for one split.

    clip_len: frames per clip T; None gives one item per whole video (evaluation). train: random clip offsets,
    scale, crop to `crop` = (h, w) and flip (crop=None: flip only); otherwise whole frames, deterministic. The crop
    is capped at the largest frame at the largest scale (the dataset's `crop`): a canvas beyond it is padding only.
    min_frames: VSPW only, the shortest video kept (the data set's `skipped`: how many of the split's it left out).
    seed: the training randomness (and the synthetic world).
    world: the synthetic world's knobs, keyword arguments of synthetic.videos (sizes of the generated world).
    """
    common = dict(clip_len=clip_len, train=train, crop=crop, seed=seed)
    if name == "synthetic":
        return Synthetic(split=split, **common, **world)
    if world:
        raise TypeError(f"unexpected arguments for {name}: {sorted(world)}")
    if name not in ("vspw", "cityscapes-vps", "clips"):
        raise DataError(f"unknown dataset {name!r} (vspw, cityscapes-vps, clips or synthetic)")
    if root is None:
        raise DataError(f"{name}: no data set folder given (--root)")
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such dataset folder for {name}")
    if name == "vspw":
        return _vspw(root, split, min_frames, **common)
    if name == "cityscapes-vps":
        return _cityscapes_vps(root, split, **common)
    return _clips(root, split, **common)


class ClipDataset(Dataset):
    """Clips of T consecutive frames of `videos`; subclasses read the frames in `_load(v, frame indices)`.

    An item: pixel_values float32 (T, 3, H, W) normalised, labels int64 (T, H, W) (0..num_classes-1, IGNORE_INDEX;
    absent without labels), cue_hidden bool, cue_distance uint8 and object_ids uint8 (T, H, W) (synthetic only: see
    synthetic.py), video (str), frames (T frame names).
    Training covers every video each epoch with n // T clips starting at a random offset drawn in set_epoch, so
    len() never changes; all randomness comes from (seed, epoch, video or item index), never from global state.
    Evaluation: consecutive clips that show every frame once (the last of a video may be shorter), or whole videos.
    labelled: whether the items have labels. palette: (num_classes, 3) uint8 colours of the classes in pictures, or
    None (evaluate.py then uses a generic colour map). background_class: the class of no object, where there is one.
    """

    palette = None
    background_class = None

    def __init__(self, videos, class_names, clip_len, train, crop, seed, where, lut=None, raw_lut=None, labelled=True):
        if not videos:
            raise DataError(f"{where}: no videos")
        longest = max(len(frames) for _, frames in videos)
        if clip_len is not None and clip_len > longest:
            raise DataError(f"{where}: clip length {clip_len} is longer than every video (longest: {longest} frames)")
        self.videos = videos  # [(video name, [frame names])]
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.id2label = dict(enumerate(self.class_names))
        self.clip_len, self.train, self.seed, self.labelled = clip_len, train, seed, labelled
        self.crop = (crop, crop) if isinstance(crop, int) else crop
        if train and crop is not None:  # a clip scaled by at most SCALES[1] fills no more; the rest would be padding
            largest = np.max([self.frame_size(v) for v in range(len(videos))], 0)  # (H, W), over the videos
            self.crop = tuple(min(c, math.ceil(SCALES[1] * n)) for c, n in zip(self.crop, largest))
        identity = np.where(np.arange(256) < self.num_classes, np.arange(256), -1)
        identity[IGNORE_INDEX] = IGNORE_INDEX
        self.lut = identity if lut is None else lut  # raw label value -> class (or IGNORE_INDEX); -1: invalid
        self.raw_lut = np.arange(256, dtype=np.uint8) if raw_lut is None else raw_lut  # class -> raw value
        self.set_epoch(0)

    def set_epoch(self, epoch):
        """Draw the training clips of this epoch (deterministic in seed and epoch)."""
        self.epoch = epoch
        self.clips = []  # (video index, first frame, length)
        T = self.clip_len
        for v, (_, frames) in enumerate(self.videos):
            n = len(frames)
            if T is None:
                self.clips.append((v, 0, n))
            elif self.train:
                k = n // T
                offset = int(np.random.default_rng([self.seed, epoch, v, 0]).integers(n - k * T + 1))
                self.clips += [(v, offset + i * T, T) for i in range(k)]
            else:  # every frame once; the last clip may be shorter
                self.clips += [(v, s, min(T, n - s)) for s in range(0, n, T)]

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, index):
        v, start, length = self.clips[index]
        rng = np.random.default_rng([self.seed, self.epoch, index, 1]) if self.train else None
        item = self._clip(v, range(start, start + length), rng)
        name, frames = self.videos[v]
        return {**item, "video": name, "frames": frames[start:start + length]}

    def frame(self, v, t, short_side=0):
        """Frame t of video v, whole and un-augmented: pixel_values (3, h, w), labels (H, W), name, ... The
        pixel_values are scaled down to a short side of short_side where it is longer (scaled_size; 0: never), so that
        the model sees smaller frames; the labels, and the maps scored against them, keep the frame's size (H, W)."""
        item = {key: x[0] for key, x in self._clip(v, [t], short_side=short_side).items()}
        return {**item, "name": self.videos[v][1][t]}

    def to_raw(self, labels):
        """Class map (H, W) (0..num_classes-1, IGNORE_INDEX) -> uint8 numpy (H, W) in the dataset's raw ids."""
        return self.raw_lut[np.asarray(labels, dtype=np.int64)]

    def frame_size(self, v):
        """(H, W) of video v's frames, and of their labels."""
        return self._load(v, [0])[0].shape[1:3]

    def _load(self, v, ts):
        """Frames ts (a list of indices) of video v, read: images uint8 (T, H, W, 3), and maps {name: uint8 (T, H, W)}
        of the frames' pixels, keyed as PADS ("labels": raw labels, where there are labels). Each data set reads its
        own; DataError for a bad file."""
        raise NotImplementedError

    def _clip(self, v, ts, rng=None, short_side=0):
        """Frames ts of video v as tensors, all under one random geometry when rng is given; else whole, with the
        pixel_values alone scaled down to short_side (see frame)."""
        images, maps = self._load(v, ts)  # (T, H, W, 3) uint8, {name: (T, H, W) uint8}
        H, W = images.shape[1:3]
        if rng is None:
            region, size, flip, out = (0, 0, H, W), (H, W), False, (H, W)
            seen = seen_out = scaled_size(H, W, short_side)
        else:
            region, size, flip = random_geometry(H, W, self.crop, rng)
            out = self.crop or size
            seen, seen_out = size, out
        pixels = warp(torch.from_numpy(images).permute(0, 3, 1, 2), region, seen, flip, seen_out, "bilinear", 0)
        item = {"pixel_values": frames_to_pixel_values(pixels.permute(0, 2, 3, 1))}  # (T, 3, H, W), as qshift's
        for key, x in maps.items():  # each under the labels' geometry: one draw of rng for the whole clip
            item[key] = warp(torch.from_numpy(x)[:, None], region, size, flip, out, "nearest-exact", PADS[key])[:, 0]
        if "labels" in item:
            item["labels"] = torch.from_numpy(self.lut[item["labels"].numpy()])  # (T, H, W) int64 classes
        if "cue_distance" in item:
            item["cue_hidden"] = item["cue_distance"] > 0
        return item


class FolderClips(ClipDataset):
    """Frames, and labels if any, read from image files: files[v][t] = (image path, label path or None)."""

    def __init__(self, videos, files, class_names, **kwargs):
        self.files = files
        labelled = all(label is not None for video in files for _, label in video)
        super().__init__(videos, class_names, labelled=labelled, **kwargs)

    def check(self):
        """Read every file once, so that a bad one (unreadable, of another size than its video's first frame, labels
        of a bad mode, size or value) stops a run before it starts: DataError."""
        for v, (_, frames) in enumerate(self.videos):
            size = None
            for t in range(len(frames)):
                images = self._load(v, [t])[0]
                if size is not None and images.shape != size:
                    raise DataError(f"{self.files[v][t][0]}: size {images.shape[2]}x{images.shape[1]} differs from "
                                    f"the video's first frame {size[2]}x{size[1]}")
                size = images.shape

    def frame_size(self, v):
        """(H, W) of video v's first frame, from the file's header (decoding every video's first frame takes long)."""
        return image_size(self.files[v][0][0])

    def _load(self, v, ts):
        images = labels = None
        for i, t in enumerate(ts):
            image_path, label_path = self.files[v][t]
            image = open_image(image_path)
            if image.mode != "RGB":
                image = image.convert("RGB")
            if images is None:
                W, H = image.size
                images = np.empty((len(ts), H, W, 3), np.uint8)
                labels = None if label_path is None else np.empty((len(ts), H, W), np.uint8)
            elif image.size != (W, H):
                raise DataError(f"{image_path}: size {image.size} differs from the clip's first frame {(W, H)}")
            images[i] = np.asarray(image)
            if label_path is not None:
                labels[i] = self._label(label_path, image.size)
        return images, {} if labels is None else {"labels": labels}

    def _label(self, path, size):
        """The raw label map at path, checked: uint8 (H, W)."""
        label = open_image(path)
        if label.mode not in ("L", "P"):  # P: VSPW's palette PNGs, whose indices are the raw ids
            raise DataError(f"{path}: labels must be an 8-bit single-channel PNG, not mode {label.mode}")
        if label.size != size:
            raise DataError(f"{path}: size {label.size} differs from its frame's {size}")
        bad = np.flatnonzero((np.asarray(label.histogram()) > 0) & (self.lut < 0))
        if bad.size:
            top = np.flatnonzero(self.lut[:IGNORE_INDEX] >= 0).max()
            raise DataError(f"{path}: label values {bad.tolist()} out of range (valid: 0..{top}, {IGNORE_INDEX})")
        return np.asarray(label)


def _vspw(root, split, min_frames, **common):
    """VSPW: raw mask ids 1..124 are classes 0..123, raw 0 ("others") and 255 are ignored."""
    split_file = os.path.join(root, f"{split}.txt")
    names = read_lines(split_file)
    videos, files, skipped = [], [], 0
    for name in names:
        folder = os.path.join(root, "data", name)
        frames = frame_files(os.path.join(folder, "origin"))
        masks = None
        if split != "test":  # the test split has no masks
            masks = frame_files(os.path.join(folder, "mask"), (".png",))
            check_pairs(frames, masks, os.path.join(folder, "mask"))
        if len(frames) < min_frames:
            skipped += 1
            continue
        videos.append((name, list(frames)))
        files.append([(frames[f], None if masks is None else masks[f]) for f in frames])
    if skipped:
        print(f"{split_file}: skipped {skipped} of {len(names)} videos with fewer than {min_frames} frames",
              file=sys.stderr)
    lut = np.full(256, -1)
    lut[1:VSPW_NUM_CLASSES + 1] = np.arange(VSPW_NUM_CLASSES)
    lut[0] = lut[255] = IGNORE_INDEX
    raw_lut = np.zeros(256, np.uint8)  # ignore -> 0 ("others")
    raw_lut[:VSPW_NUM_CLASSES] = np.arange(1, VSPW_NUM_CLASSES + 1)
    dataset = FolderClips(videos, files, _vspw_class_names(root), where=split_file, lut=lut, raw_lut=raw_lut, **common)
    dataset.skipped = skipped  # evaluate.py's report says how many
    return dataset


def _vspw_class_names(root):
    """The 124 class names from ROOT/label_num_dic_final.json ({name: raw id}), else generic ones."""
    path = os.path.join(root, "label_num_dic_final.json")
    if not os.path.exists(path):
        return [f"class_{c}" for c in range(VSPW_NUM_CLASSES)]
    try:
        with open(path) as f:
            names = {int(raw): name for name, raw in json.load(f).items()}
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: not a JSON object of class name -> raw id ({e})") from None
    missing = [raw for raw in range(1, VSPW_NUM_CLASSES + 1) if raw not in names]
    if missing:
        raise DataError(f"{path}: no class name for raw ids {missing}")
    return [names[raw] for raw in range(1, VSPW_NUM_CLASSES + 1)]


_CITY_IMAGE = re.compile(r"(\d{4})_(\d{4})_.+_(?:newImg8bit|leftImg8bit)\.png")
_CITY_LABEL = re.compile(r"(\d{4})_(\d{4})_.*\.png")


def _cityscapes_vps(root, split, **common):
    """Cityscapes-VPS: frames grouped by the video id VVVV, ordered by FFFF; train/val keep the annotated ones."""
    image_dir = os.path.join(root, split, "img")
    images = matching_files(image_dir, _CITY_IMAGE, "VVVV_FFFF_<city>_<seq>_<frame>_newImg8bit.png")
    labels = None
    if split != "test":
        label_dir = os.path.join(root, split, "labelmap")
        labels = matching_files(label_dir, _CITY_LABEL, "VVVV_FFFF_*.png")
        for key, path in labels.items():
            if key not in images:
                raise DataError(f"{path}: no image {key[0]}_{key[1]}_*.png in {image_dir}")
        if len(labels) < len(images):
            print(f"{image_dir}: loading the {len(labels)} annotated frames of {len(images)}", file=sys.stderr)
    videos, files = [], []
    for key in sorted(images if labels is None else labels):  # fixed-width digits: text order is numeric order
        if not videos or videos[-1][0] != key[0]:
            videos.append((key[0], []))
            files.append([])
        videos[-1][1].append(os.path.basename(images[key])[:-len(".png")])
        files[-1].append((images[key], None if labels is None else labels[key]))
    dataset = FolderClips(videos, files, CITYSCAPES_CLASSES, where=image_dir, **common)
    dataset.palette = np.array(CITYSCAPES_PALETTE, np.uint8)
    return dataset


def _clips(root, split, **common):
    """Your own videos: ROOT/<video>/frames, optional ROOT/<video>/labels, ROOT/classes.txt, ROOT/<split>.txt."""
    if os.path.isdir(os.path.join(root, "frames")) and not os.path.isdir(os.path.join(root, "frames", "frames")):
        parent = os.path.dirname(os.path.normpath(root)) or "."
        raise DataError(f"{root} looks like one video's folder (it holds frames/); --root takes the folder that holds "
                        f"the video folders, here {parent}")
    folders = sorted((d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d))),
                     key=natural_key)
    split_file, val_file = os.path.join(root, f"{split}.txt"), os.path.join(root, "val.txt")
    if os.path.exists(split_file):
        names = read_lines(split_file)
    elif split == "all":
        names = folders
    elif split == "train":  # every video not kept for validation
        val = set(read_lines(val_file)) if os.path.exists(val_file) else set()
        names = [name for name in folders if name not in val]
    else:
        raise DataError(f"{split_file}: no such file (list the videos of split {split!r} in it, one folder name a "
                        f"line, or use the split 'all': every video)")
    videos, files, unlabelled = [], [], []
    for name in names:
        frames = frame_files(os.path.join(root, name, "frames"))
        label_dir = os.path.join(root, name, "labels")
        labels = None
        if os.path.isdir(label_dir):
            labels = frame_files(label_dir, (".png",))
            check_pairs(frames, labels, label_dir)
        else:
            unlabelled.append(label_dir)
        videos.append((name, list(frames)))
        files.append([(frames[f], None if labels is None else labels[f]) for f in frames])
    if unlabelled and len(unlabelled) < len(names):
        raise DataError(f"{unlabelled[0]}: missing, while other videos have labels")
    classes_file = os.path.join(root, "classes.txt")
    if not unlabelled and not os.path.exists(classes_file):
        raise DataError(f"{classes_file}: missing; with labels, it names the classes, one a line (class 0 first)")
    lines = read_lines(classes_file) if os.path.exists(classes_file) else []
    if len(lines) >= IGNORE_INDEX:
        raise DataError(f"{classes_file}: {len(lines)} classes, at most {IGNORE_INDEX - 1} fit 8-bit labels")
    coloured = [re.fullmatch(r"(.+?)\s+#([0-9a-fA-F]{6})", line) for line in lines]  # "name #rrggbb"
    if any(coloured) and not all(coloured):
        raise DataError(f"{classes_file}: give every class a colour (name #rrggbb) or none")
    class_names = [match[1] for match in coloured] if any(coloured) else lines
    where = split_file if os.path.exists(split_file) else root
    dataset = FolderClips(videos, files, class_names, where=where, **common)
    if any(coloured):
        dataset.palette = np.array([list(bytes.fromhex(match[2])) for match in coloured], np.uint8)
    return dataset


class Synthetic(ClipDataset):
    """The synthetic world of synthetic.py as clips, generated in memory when the dataset is made; world: its knobs
    (synthetic.videos' keyword arguments). The whole world: images uint8 (V, T, H, W, 3), and labels, cue_distance and
    object_ids uint8 (V, T, H, W) each. Items also carry object_ids (T, H, W): which object 0..num_objects-1 each pixel
    shows, synthetic.NO_OBJECT for none, under the labels' geometry (to ask whether a model tracks objects,
    experiments/match_diagnostic.py)."""

    background_class = 0

    def __init__(self, split="train", clip_len=8, train=True, crop=None, seed=0, **world):
        if split not in synthetic.SPLITS:
            raise DataError(f"synthetic: unknown split {split!r} (train, val or test)")
        class_names, self.palette, *arrays = synthetic.videos(split, seed, **world)
        self.images, self.labels, self.cue_distance, self.object_ids = arrays
        V, T = self.labels.shape[:2]
        videos = [(f"{split}-{v:03d}", [f"{t:03d}" for t in range(T)]) for v in range(V)]
        super().__init__(videos, class_names, clip_len, train, crop, seed, where=f"synthetic {split}")

    def _load(self, v, ts):
        ts = np.asarray(ts)
        maps = {"labels": self.labels, "cue_distance": self.cue_distance, "object_ids": self.object_ids}
        return self.images[v, ts], {key: x[v, ts] for key, x in maps.items()}


def mask_targets(labels, dtype=torch.float32):
    """HF MaskFormer targets of a class map labels (H, W): mask_labels (n, H, W) of dtype, one binary mask per
    class present (IGNORE_INDEX excluded), and class_labels int64 (n,); all ignored: (0, H, W) and (0,)."""
    classes = torch.bincount(labels.flatten(), minlength=256)[:IGNORE_INDEX].nonzero().flatten()  # (n,) sorted
    return (labels[None] == classes[:, None, None]).to(dtype), classes


def collate(items):
    """Batch B clip items: pixel_values (B, T, 3, H, W), labels (B, T, H, W), mask_labels (bool) and class_labels
    (lists of B*T targets, frame b*T + t at index b*T + t), video (B names), frames (B lists), and where the items
    have them cue_hidden, cue_distance and object_ids (B, T, H, W)."""
    batch = {"pixel_values": torch.stack([item["pixel_values"] for item in items]),
             "video": [item["video"] for item in items], "frames": [item["frames"] for item in items]}
    if "labels" in items[0]:
        batch["labels"] = torch.stack([item["labels"] for item in items])
        # bool masks: a quarter of float32's bytes to pass from loader workers; train.py makes them float on the device
        targets = [mask_targets(frame, torch.bool) for frame in batch["labels"].flatten(0, 1)]
        batch["mask_labels"] = [masks for masks, _ in targets]
        batch["class_labels"] = [classes for _, classes in targets]
    for key in ("cue_hidden", "cue_distance", "object_ids"):
        if key in items[0]:
            batch[key] = torch.stack([item[key] for item in items])
    return batch


def scaled_size(H, W, short_side):
    """(h, w): an H x W frame scaled down to a short side of short_side, its aspect kept, where its short side is
    longer; else (H, W), as with short_side 0 (evaluate.py's and predict.py's --short-side)."""
    if not short_side or min(H, W) <= short_side:
        return H, W
    return (short_side, round(W * short_side / H)) if H <= W else (round(H * short_side / W), short_side)
