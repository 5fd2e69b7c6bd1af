"""data.py: tiny trees in each official layout, checked against hand-computed expectations and HF's own code."""
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import data
import qshift
import synthetic
from data import IGNORE_INDEX, DataError, build_dataset, collate

H, W = 6, 8  # frame size of the small trees


def save_image(path, pixels):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path)


def save_palette_label(path, raw):
    """A VSPW-style palette PNG whose indices are the raw ids."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(np.asarray(raw, np.uint8)).convert("P")
    image.putpalette(list(np.random.default_rng(0).integers(0, 256, 768)))
    image.save(path)


def colour_frame(t):
    """A frame whose colour tells its index t."""
    return np.broadcast_to(np.array([10 * t % 256, 100, 200], np.uint8), (H, W, 3))


def make_vspw(root, lengths, split="train", masks=True, raw=None):
    """ROOT/data/<video>/{origin,mask}/ with videos of the given lengths, and ROOT/<split>.txt."""
    for name, n in lengths.items():
        for t in range(n):
            save_image(f"{root}/data/{name}/origin/{t + 1:08d}.jpg", colour_frame(t))
            if masks:
                save_palette_label(f"{root}/data/{name}/mask/{t + 1:08d}.png",
                                   np.full((H, W), t % 124 + 1) if raw is None else raw)
    (root / f"{split}.txt").write_text("".join(f"{name}\n" for name in lengths))
    return root


def make_clips(root, videos, classes=None):
    """ROOT/<video>/frames/ and labels/: videos = {name: [(frame stem, image, labels or None)]}."""
    for name, frames in videos.items():
        for stem, image, labels in frames:
            save_image(f"{root}/{name}/frames/{stem}.png", image)
            if labels is not None:
                save_image(f"{root}/{name}/labels/{stem}.png", labels)
    if classes is not None:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def denormalise(pixel_values):
    """float (..., 3, H, W) -> the uint8 values it was made from, as floats."""
    mean, std = torch.tensor(qshift.MEAN).view(3, 1, 1), torch.tensor(qshift.STD).view(3, 1, 1)
    return (pixel_values * std + mean) * 255


# ---------------------------------------------------------------- VSPW


def test_vspw_shapes_normalisation_and_label_mapping(tmp_path):
    raw = np.array([[0, 1, 124, 255, 7, 7, 7, 7]] * H)
    root = make_vspw(tmp_path, {"v1": 3}, split="val", raw=raw)
    ds = build_dataset("vspw", root, split="val", clip_len=2, train=False, min_frames=1)
    assert ds.num_classes == 124 and len(ds.class_names) == 124 and ds.id2label[0] == ds.class_names[0]
    assert ds.videos == [("v1", ["00000001", "00000002", "00000003"])]
    assert [item["frames"] for item in ds] == [["00000001", "00000002"], ["00000003"]]  # eval: every frame once
    item = ds[0]
    assert item["pixel_values"].shape == (2, 3, H, W) and item["pixel_values"].dtype == torch.float32
    assert item["labels"].shape == (2, H, W) and item["labels"].dtype == torch.int64
    assert item["video"] == "v1" and "cue_hidden" not in item
    # raw 0 ("others") and 255 are ignored, raw v is class v - 1
    assert item["labels"][0, 0].tolist() == [255, 0, 123, 255, 6, 6, 6, 6]
    assert ds.to_raw(item["labels"][0]).dtype == np.uint8
    assert ds.to_raw(item["labels"][0])[0].tolist() == [0, 1, 124, 0, 7, 7, 7, 7]
    # ImageNet normalisation of the frame's colour (JPEG: within a few levels)
    expected = (torch.tensor([10.0, 100, 200]) / 255 - torch.tensor(qshift.MEAN)) / torch.tensor(qshift.STD)
    assert torch.allclose(item["pixel_values"][1, :, 2, 3], expected, atol=0.1)
    frame = ds.frame(0, 1)
    assert frame["name"] == "00000002" and torch.equal(frame["pixel_values"], item["pixel_values"][1])
    assert torch.equal(frame["labels"], item["labels"][1])


def test_vspw_class_names_from_json(tmp_path):
    root = make_vspw(tmp_path, {"v1": 2})
    assert build_dataset("vspw", root, clip_len=1, min_frames=1).class_names[:2] == ["class_0", "class_1"]
    names = {"others": 0, **{f"name{raw}": raw for raw in range(1, 125)}}
    (root / "label_num_dic_final.json").write_text(json.dumps(names))
    ds = build_dataset("vspw", root, clip_len=1, min_frames=1)
    assert ds.class_names[0] == "name1" and ds.class_names[123] == "name124" and ds.id2label[5] == "name6"
    del names["name50"]
    (root / "label_num_dic_final.json").write_text(json.dumps(names))
    with pytest.raises(DataError, match="label_num_dic_final.json.*50"):
        build_dataset("vspw", root, clip_len=1, min_frames=1)


def test_vspw_min_frames_filter(tmp_path, capsys):
    root = make_vspw(tmp_path, {"long": 32, "short": 31})
    ds = build_dataset("vspw", root, clip_len=8)
    assert [name for name, _ in ds.videos] == ["long"] and len(ds) == 32 // 8
    assert "skipped 1 of 2 videos with fewer than 32 frames" in capsys.readouterr().err
    assert [name for name, _ in build_dataset("vspw", root, min_frames=31).videos] == ["long", "short"]


def test_vspw_test_split_has_no_labels(tmp_path):
    root = make_vspw(tmp_path, {"v1": 3}, split="test", masks=False)
    ds = build_dataset("vspw", root, split="test", clip_len=None, train=False, min_frames=1)
    item = ds[0]
    assert "labels" not in item and item["pixel_values"].shape == (3, 3, H, W)
    batch = collate([item])
    assert "mask_labels" not in batch and batch["pixel_values"].shape == (1, 3, 3, H, W)


# ---------------------------------------------------------------- Cityscapes-VPS


def test_cityscapes_vps_grouping_ordering_and_annotated_frames(tmp_path, capsys):
    img, lab = tmp_path / "val" / "img", tmp_path / "val" / "labelmap"
    annotated = [("0002", "0010"), ("0001", "0025"), ("0001", "0005"), ("0002", "0002")]
    for i, (video, frame) in enumerate(annotated + [("0001", "0007")]):  # the last one has no labels
        stem = f"{video}_{frame}_frankfurt_000000_{int(frame):06d}_{'leftImg8bit' if i % 2 else 'newImg8bit'}"
        save_image(f"{img}/{stem}.png", colour_frame(i))
        if (video, frame) in annotated:
            save_image(f"{lab}/{video}_{frame}_frankfurt_000000_{int(frame):06d}_gtFine_color.png",
                       np.full((H, W), [3, 18, 255, 0, 0, 0, 0, 0][i]))
    ds = build_dataset("cityscapes-vps", tmp_path, split="val", clip_len=None, train=False)
    assert "loading the 4 annotated frames of 5" in capsys.readouterr().err
    assert ds.num_classes == 19 and ds.class_names[0] == "road" and ds.class_names[18] == "bicycle"
    assert ds.videos == [("0001", ["0001_0005_frankfurt_000000_000005_newImg8bit",
                                   "0001_0025_frankfurt_000000_000025_leftImg8bit"]),
                         ("0002", ["0002_0002_frankfurt_000000_000002_leftImg8bit",
                                   "0002_0010_frankfurt_000000_000010_newImg8bit"])]
    first, second = ds[0], ds[1]
    assert first["labels"][:, 0, 0].tolist() == [255, 18] and second["labels"][:, 0, 0].tolist() == [0, 3]
    assert ds.to_raw(first["labels"][0]).max() == 255  # train ids are the raw ids
    # frames stay attached to their own labels: the colour tells which file was read
    assert denormalise(first["pixel_values"])[:, 0, 0, 0].round().tolist() == [20, 10]
    os.rename(tmp_path / "val", tmp_path / "test")  # the test split: every image, no labels
    test = build_dataset("cityscapes-vps", tmp_path, split="test", clip_len=None, train=False)
    assert [len(frames) for _, frames in test.videos] == [3, 2] and "labels" not in test[0]


# ---------------------------------------------------------------- own clips


def coordinate_image(h, w):
    """Pixels that encode their coordinates: red = 4 x, green = 5 y."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([4 * x, 5 * y, np.zeros_like(x)], -1)


def test_clips_augmentation_moves_frames_and_labels_together(tmp_path):
    h, w = 40, 60  # labels of frame 0 are the x coordinate, of frame 1 the y coordinate
    y, x = np.mgrid[0:h, 0:w]
    image = coordinate_image(h, w)
    root = make_clips(tmp_path, {"v": [("0", image, x), ("1", image, y)]}, classes=[f"c{i}" for i in range(w)])
    ds = build_dataset("clips", root, clip_len=2, crop=(48, 72), seed=3)
    flips, scales, padded = set(), set(), 0
    for epoch in range(12):
        ds.set_epoch(epoch)
        item = ds[0]
        pixels, labels = denormalise(item["pixel_values"]), item["labels"]
        assert pixels.shape == (2, 3, 48, 72) and labels.shape == (2, 48, 72)
        assert torch.equal(item["pixel_values"][0], item["pixel_values"][1])  # one geometry for the whole clip
        assert torch.equal(labels[0] == IGNORE_INDEX, labels[1] == IGNORE_INDEX)
        valid = labels[0] != IGNORE_INDEX
        for label, coordinate in ((labels[0], pixels[0, 0] / 4), (labels[1], pixels[0, 1] / 5)):
            error = (label[valid] - coordinate[valid]).abs()  # nearest vs bilinear: half a pixel inside
            assert (error <= 0.75).float().mean() > 0.95 and error.max() <= 3
        assert (pixels[:, :, ~valid].abs() < 1e-3).all()  # padding: black pixels where labels are ignored
        padded += bool((~valid).any())
        row = labels[0, 0][valid[0]]
        flips.add(bool(row[0] > row[-1]))
        scales.add(int(valid[0].sum()))
    assert flips == {True, False} and len(scales) > 3 and 0 < padded < 12


def test_the_crop_is_capped_at_the_largest_frame_at_the_largest_scale(tmp_path):
    """Videos of 10x12 and 8x20 frames, scaled by at most 2, fill at most 20x40: a 480x480 canvas would be padding."""
    root = make_clips(tmp_path, {"small": [("0", coordinate_image(10, 12), np.zeros((10, 12)))],
                                 "wide": [("0", coordinate_image(8, 20), np.zeros((8, 20)))]}, classes=["c"])
    ds = build_dataset("clips", root, clip_len=1, crop=(480, 480), seed=1)
    assert ds.crop == (2 * 10, 2 * 20)
    filled = np.zeros(ds.crop, bool)
    for epoch in range(40):  # every clip fits the capped canvas; the largest scales nearly fill it
        ds.set_epoch(epoch)
        for item in (ds[0], ds[1]):
            assert item["pixel_values"].shape == (1, 3, *ds.crop)
            filled |= (item["labels"][0] != IGNORE_INDEX).numpy()
    assert filled[:18, :22].all() and filled[:14, :36].all()
    assert build_dataset("clips", root, clip_len=1, crop=(16, 480)).crop == (16, 40)  # a smaller crop stays
    assert build_dataset("clips", root, clip_len=1, crop=(480, 480), train=False)[0]["labels"].shape == (1, 10, 12)


def test_one_videos_folder_as_root_gets_a_hint(tmp_path):
    root = make_clips(tmp_path / "my_videos", {"video0": [("0", coordinate_image(4, 4), np.zeros((4, 4)))]},
                      classes=["c"])
    with pytest.raises(DataError, match=r"my_videos/video0 looks like one video's folder .* the video folders, here "
                       r".*my_videos$"):
        build_dataset("clips", root / "video0", clip_len=1)
    assert len(build_dataset("clips", root, clip_len=1)) == 1


def test_clips_without_crop_flips_only_and_eval_is_whole(tmp_path):
    h, w = 10, 12
    y, x = np.mgrid[0:h, 0:w]
    root = make_clips(tmp_path, {"v": [("0", coordinate_image(h, w), x)]}, classes=[f"c{i}" for i in range(w)])
    seen = set()
    ds = build_dataset("clips", root, clip_len=1)
    for epoch in range(8):
        ds.set_epoch(epoch)
        labels = ds[0]["labels"][0]
        assert labels.tolist() in (x.tolist(), x[:, ::-1].tolist())
        seen.add(labels[0, 0].item())
    assert seen == {0, w - 1}
    item = build_dataset("clips", root, clip_len=1, train=False)[0]
    assert item["labels"][0].tolist() == x.tolist()
    assert torch.allclose(denormalise(item["pixel_values"][0]), torch.tensor(coordinate_image(h, w)).permute(2, 0, 1)
                          .float(), atol=0.01)


def test_clips_frame_order_classes_and_unlabelled(tmp_path):
    frames = [(stem, colour_frame(i), None) for i, stem in enumerate(["frame10", "frame2", "frame1"])]
    root = make_clips(tmp_path, {"b": frames, "a": frames[:1]})
    ds = build_dataset("clips", root, clip_len=None, train=False)
    assert ds.videos == [("a", ["frame10"]), ("b", ["frame1", "frame2", "frame10"])]
    assert ds.num_classes == 0 and "labels" not in ds[1]
    assert denormalise(ds[1]["pixel_values"])[:, 0, 0, 0].round().tolist() == [20, 10, 0]
    (root / "classes.txt").write_text("sky\n\nroad\n")
    assert build_dataset("clips", root, clip_len=1).id2label == {0: "sky", 1: "road"}
    assert build_dataset("clips", root, clip_len=1).palette is None
    (root / "classes.txt").write_text("blue sky #4080ff\nroad #000000\n")  # with the colours of pictures
    ds = build_dataset("clips", root, clip_len=1)
    assert ds.class_names == ["blue sky", "road"] and ds.palette.tolist() == [[64, 128, 255], [0, 0, 0]]
    (root / "classes.txt").write_text("sky #4080ff\nroad\n")
    with pytest.raises(DataError, match="classes.txt: give every class a colour"):
        build_dataset("clips", root, clip_len=1)


def test_clips_splits_come_from_split_files(tmp_path):
    frames = [(str(t), colour_frame(t), np.zeros((H, W))) for t in range(2)]
    root = make_clips(tmp_path, {name: frames for name in ("a", "b", "c", "d")}, classes=["x"])
    videos = lambda split: [name for name, _ in build_dataset("clips", root, split, clip_len=None).videos]  # noqa: E731
    assert videos("train") == videos("all") == ["a", "b", "c", "d"]  # no split files: every video
    with pytest.raises(DataError, match=r"val.txt: no such file .*'all'"):
        build_dataset("clips", root, "val")
    (root / "val.txt").write_text("d\nb\n")
    assert videos("val") == ["d", "b"] and videos("train") == ["a", "c"]  # train: every video val.txt leaves
    (root / "train.txt").write_text("a\n")
    assert videos("train") == ["a"] and videos("all") == ["a", "b", "c", "d"]
    assert build_dataset("clips", root, "val", clip_len=None).labelled


def test_clips_check_reads_every_file_before_training(tmp_path):
    y, x = np.mgrid[0:H, 0:W]
    root = make_clips(tmp_path, {"v": [("0", colour_frame(0), x % 2), ("1", colour_frame(1), x % 3)]},
                      classes=["a", "b"])
    ds = build_dataset("clips", root, clip_len=1)  # made without reading the files
    with pytest.raises(DataError, match=r"1.png: label values \[2\] out of range"):
        ds.check()
    save_image(root / "v" / "labels" / "1.png", x % 2)
    build_dataset("clips", root, clip_len=1).check()
    save_image(root / "v" / "frames" / "1.png", np.zeros((H + 1, W, 3)))
    save_image(root / "v" / "labels" / "1.png", np.zeros((H + 1, W)))
    with pytest.raises(DataError, match=rf"1.png: size {W}x{H + 1} differs from the video's first frame {W}x{H}"):
        build_dataset("clips", root, clip_len=1).check()
    unlabelled = make_clips(tmp_path / "unlabelled", {"v": [("0", colour_frame(0), None)]})
    assert not build_dataset("clips", unlabelled, clip_len=1).labelled


# ---------------------------------------------------------------- training clips


def test_training_clips_cover_videos_and_are_reproducible(tmp_path):
    root = make_vspw(tmp_path, {"a": 11, "b": 8, "c": 3})
    ds = build_dataset("vspw", root, clip_len=4, min_frames=1, seed=5)
    starts = {}
    for epoch in range(6):
        ds.set_epoch(epoch)
        assert len(ds) == 11 // 4 + 8 // 4  # constant, as DistributedSampler needs
        clips = [(item["video"], [int(f) - 1 for f in item["frames"]]) for item in ds]
        for video, frames in clips:
            assert frames == list(range(frames[0], frames[0] + 4))
        a = [frames[0] for video, frames in clips if video == "a"]
        assert a[1] == a[0] + 4 and 0 <= a[0] <= 11 - 8  # consecutive clips, random offset
        starts[epoch] = a[0]
    assert len(set(starts.values())) > 1  # the offset changes with the epoch
    again = build_dataset("vspw", root, clip_len=4, min_frames=1, seed=5)  # e.g. after a resume
    again.set_epoch(3)
    ds.set_epoch(3)
    for i in range(len(ds)):
        assert ds[i]["frames"] == again[i]["frames"]
        assert torch.equal(ds[i]["pixel_values"], again[i]["pixel_values"])


def test_clip_len_none_gives_whole_videos(tmp_path):
    root = make_vspw(tmp_path, {"a": 5, "b": 2})
    ds = build_dataset("vspw", root, clip_len=None, train=False, min_frames=1)
    assert [len(item["frames"]) for item in ds] == [5, 2]


# ---------------------------------------------------------------- collate


def test_collate_targets_match_hf_and_survive_all_ignored_frames():
    from transformers.models.maskformer.image_processing_pil_maskformer import (
        convert_segmentation_map_to_binary_masks)  # HF's reference; its import is slow, so only here
    labels = torch.tensor([[[0, 3], [255, 3]], [[255, 255], [255, 255]], [[7, 7], [0, 255]]])  # (3, 2, 2)
    items = [{"pixel_values": torch.zeros(3, 3, 2, 2) + i, "labels": labels.roll(i, 0), "video": f"v{i}",
              "frames": ["a", "b", "c"]} for i in range(2)]
    batch = collate(items)
    assert batch["pixel_values"].shape == (2, 3, 3, 2, 2) and batch["labels"].shape == (2, 3, 2, 2)
    assert batch["video"] == ["v0", "v1"] and batch["frames"] == [["a", "b", "c"]] * 2
    assert len(batch["mask_labels"]) == len(batch["class_labels"]) == 6
    for frame, masks, classes in zip(batch["labels"].flatten(0, 1), batch["mask_labels"], batch["class_labels"]):
        assert masks.dtype == torch.bool and classes.dtype == torch.int64
        if (frame == IGNORE_INDEX).all():
            assert masks.shape == (0, 2, 2) and classes.shape == (0,)
        else:
            hf_masks, hf_classes = convert_segmentation_map_to_binary_masks(frame.numpy(), ignore_index=IGNORE_INDEX)
            assert np.array_equal(masks.numpy(), hf_masks) and np.array_equal(classes.numpy(), hf_classes)
    assert batch["class_labels"][0].tolist() == [0, 3] and batch["mask_labels"][0][1].tolist() == [[0, 1], [0, 1]]
    assert batch["class_labels"][1].tolist() == [] and batch["class_labels"][3].tolist() == [0, 7]


# ---------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def default_world():
    return build_dataset("synthetic", split="train", seed=0)  # the defaults, as train.py uses them


def test_synthetic_defaults_shapes_and_determinism(default_world):
    ds = default_world
    assert ds.background_class == 0 and ds.class_names[0] == "background" and ds.num_classes >= 3
    item = ds[0]
    T = len(item["frames"])
    assert item["pixel_values"].shape == (T, 3, 64, 96) and item["labels"].shape == (T, 64, 96)
    assert item["cue_hidden"].dtype == torch.bool and item["cue_hidden"].shape == (T, 64, 96)
    again = build_dataset("synthetic", split="train", seed=0, num_videos=3)  # videos follow from (seed, split)
    assert np.array_equal(again.images, ds.images[:3]) and np.array_equal(again.labels, ds.labels[:3])
    other_seed = build_dataset("synthetic", split="train", seed=1, num_videos=3)
    val = build_dataset("synthetic", split="val", seed=0, num_videos=3)
    assert not np.array_equal(other_seed.images, again.images) and not np.array_equal(val.images, again.images)
    frame = ds.frame(2, 5)
    assert torch.equal(frame["cue_hidden"], torch.from_numpy(ds.cue_distance[2, 5] > 0))
    assert frame["name"] == ds.videos[2][1][5]
    assert torch.equal(frame["labels"], torch.from_numpy(ds.labels[2, 5]).long())


def test_synthetic_hides_the_class_cue(default_world):
    ds = default_world
    images, labels = ds.images[:16].astype(np.int16), ds.labels[:16]  # 16 videos are plenty
    cue = ds.cue_distance[:16] > 0  # hidden
    objects = labels != ds.background_class
    assert not (cue & ~objects).any()  # only object pixels lose their cue
    spread = images.max(-1) - images.min(-1)  # 0 for grey
    assert (spread[cue] <= 1).all()  # hidden: exactly grey, whatever the class
    assert np.median(spread[objects & ~cue]) > 100  # visible: strongly coloured
    hidden_share = cue.sum() / objects.sum()
    assert 0.25 < hidden_share < 0.42  # about a third of the object pixels
    for c in range(1, ds.num_classes):  # the hidden pixels of every class look alike
        mean = images[(labels == c) & cue].mean(0)
        assert abs(mean - images[objects & cue].mean(0)).max() < 10
    visible = [images[(labels == c) & ~cue].mean(0) for c in range(1, ds.num_classes)]
    assert min(np.abs(a - b).max() for i, a in enumerate(visible) for b in visible[i + 1:]) > 80  # distinct hues
    per_frame = cue.reshape(*cue.shape[:2], -1).any(-1)  # (V, T): some frames hide, most frames show
    assert 0.3 < per_frame.mean() < 0.95 and objects.mean() > 0.08


def test_synthetic_hidden_frames_never_come_two_in_a_row():
    ds = build_dataset("synthetic", num_videos=6, num_frames=12, size=(32, 48), num_objects=1, object_size=(8, 16),
                       clip_len=4)
    assert ds.images.shape == (6, 12, 32, 48, 3)
    hidden = (ds.cue_distance > 0).reshape(6, 12, -1).any(-1)  # (V, T): one object, so the frames where it is grey
    assert (hidden.sum(1) == 4).all()  # a third of 12 frames
    assert not (hidden[:, 1:] & hidden[:, :-1]).any()  # a neighbour always shows the class


@pytest.mark.parametrize("kwargs,sha256", [
    (dict(split="val"), "58f1be5e82147fa1da6498242c2973aa1f2bb94b79c8921bb5205123a44c0d28"),
    (dict(split="train", seed=3, num_videos=4), "4e775be2187c4394c419fb34eb2faa9d561f65855e91d25f2da117bcc2e3d498"),
    (dict(split="test", num_videos=3, num_frames=9, hidden_fraction=0.4),
     "965c0757c3190f756835cb2d4dbb0e1ab86054335bb2611402a524c476f14a1d")])
def test_synthetic_default_world_is_byte_for_byte_the_earlier_one(kwargs, sha256):
    # the digests were taken from the version before hide_run and speed existed (commit a39157c): every experiment
    # in the default world stays comparable, and its image models reproducible
    for knobs in ({}, dict(hide_run=1, speed=1.0)):
        ds = data.Synthetic(**kwargs, **knobs)
        digest = hashlib.sha256()
        for array in (ds.images, ds.labels, ds.cue_distance > 0, ds.object_ids):
            digest.update(array.tobytes())
        assert digest.hexdigest() == sha256


def one_object_world(**knobs):
    """Synthetic videos of one object, which nothing occludes: a frame shows its cue or hides it all over."""
    return data.Synthetic("train", num_videos=8, num_objects=1, **knobs)


@pytest.mark.parametrize("hide_run,runs", [(1, 8), (2, 4), (3, 3), (4, 2)])  # a third of 24 frames, about
def test_hidden_frames_come_in_runs_of_exactly_hide_run(hide_run, runs):
    ds = one_object_world(hide_run=hide_run)
    hidden = (ds.cue_distance > 0).reshape(8, 24, -1).any(-1)  # (V, T)
    for video in hidden:
        edges = np.diff(np.concatenate([[0], video.astype(int), [0]]))  # +1 where a run starts, -1 after it ends
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        assert len(starts) == runs and (ends - starts == hide_run).all()  # runs never touch: a visible frame between
    assert len({tuple(np.flatnonzero(video)) for video in hidden}) >= 6  # drawn anew for every video (may repeat)


def test_cue_distance_is_the_frames_to_the_nearest_frame_in_colour():
    ds = one_object_world(hide_run=3)
    hidden = (ds.cue_distance > 0).reshape(8, 24, -1).any(-1)  # (V, T)
    for v in range(8):
        shown = np.flatnonzero(~hidden[v])
        for t in range(24):
            nearest = np.abs(shown - t).min()  # brute force
            on_object = ds.object_ids[v, t] == 0
            assert (ds.cue_distance[v, t][on_object] == nearest).all()
            assert (ds.cue_distance[v, t][~on_object] == 0).all()  # the background never hides
    counts = np.bincount(ds.cue_distance.ravel())
    assert counts[1] > counts[2] > 0  # the ends of runs, their middles (and d >= 3 where a run starts a video)
    item = ds[0]
    assert item["cue_distance"].dtype == torch.uint8 and torch.equal(item["cue_hidden"], item["cue_distance"] > 0)
    assert collate([item, ds[1]])["cue_distance"].shape == (2, 8, 64, 96)


def test_speed_scales_the_blobs_motion():
    def mean_step(world):  # the object's centroid, moved per frame, mean over the videos
        centres = [[np.argwhere(ids == 0).mean(0) for ids in video] for video in world.object_ids]
        return np.linalg.norm(np.diff(np.array(centres), axis=1), axis=-1).mean(1)  # (V,)

    slow, fast = mean_step(one_object_world()), mean_step(one_object_world(speed=2.0))
    assert np.allclose(fast / slow, 2, atol=0.15)  # the same draws, twice as far (a bounce shortens a step)
    assert np.array_equal(one_object_world(speed=2.0).labels.sum((1, 2, 3)) > 0, np.ones(8, bool))


def test_impossible_worlds_are_refused():
    with pytest.raises(ValueError, match="hide_run 5: 2 x 5 hidden frames"):
        data.Synthetic(num_videos=1, num_frames=10, hidden_fraction=0.9, hide_run=5)
    for knobs in (dict(hide_run=0), dict(hide_run=1.5), dict(speed=0)):
        with pytest.raises(ValueError, match="hide_run .*, speed "):
            data.Synthetic(num_videos=1, **knobs)


def test_synthetic_training_crop_and_flip_keep_cue_aligned():
    ds = build_dataset("synthetic", num_videos=2, clip_len=4, crop=(48, 48), seed=1)
    for epoch in range(3):
        ds.set_epoch(epoch)
        item = ds[1]
        assert item["pixel_values"].shape == (4, 3, 48, 48)
        assert not (item["cue_hidden"] & (item["labels"] == ds.background_class)).any()
        assert not (item["cue_hidden"] & (item["labels"] == IGNORE_INDEX)).any()


def check_object_ids(ids, labels, cue, background_class):
    """Every object's pixels have one class (the world draws a class per object) and one cue state per frame;
    the pixels of no object are background, or ignored padding."""
    assert ids.dtype == torch.uint8 and ids.shape == labels.shape
    objects = ids != synthetic.NO_OBJECT
    assert set(labels[~objects].unique().tolist()) <= {background_class, IGNORE_INDEX}
    assert not (labels[objects] == background_class).any() and not (labels[objects] == IGNORE_INDEX).any()
    for o in ids[objects].unique():
        assert labels[ids == o].unique().numel() == 1
        for t in range(ids.shape[0]):
            assert cue[t][ids[t] == o].unique().numel() <= 1  # grey all over or not at all


def test_synthetic_object_ids_follow_labels_through_crop_and_flip():
    whole = build_dataset("synthetic", split="val", clip_len=None, train=False, num_videos=3)
    for v in range(3):
        item = whole[v]
        check_object_ids(item["object_ids"], item["labels"], item["cue_hidden"], whole.background_class)
        assert torch.equal(item["object_ids"], torch.from_numpy(whole.object_ids[v]))  # whole frames: untouched
        assert item["object_ids"].unique().numel() >= 3  # objects and background
    assert torch.equal(whole.frame(1, 4)["object_ids"], torch.from_numpy(whole.object_ids[1, 4]))
    ds = build_dataset("synthetic", num_videos=2, clip_len=4, crop=(48, 48), seed=1)
    seen = 0  # cropped frames that show an object
    for epoch in range(6):
        ds.set_epoch(epoch)  # a new scale, crop and flip each epoch
        item = ds[1]
        ids, labels = item["object_ids"], item["labels"]
        assert ids.shape == (4, 48, 48)
        check_object_ids(ids, labels, item["cue_hidden"], ds.background_class)
        assert torch.equal(ids == synthetic.NO_OBJECT, (labels == ds.background_class) | (labels == IGNORE_INDEX))
        seen += int((ids != synthetic.NO_OBJECT).flatten(1).any(1).sum())
    assert seen > 6 * 4 // 2  # most crops show some object
    batch = collate([ds[0], ds[1]])
    assert batch["object_ids"].shape == (2, 4, 48, 48) and torch.equal(batch["object_ids"][1], item["object_ids"])


# ---------------------------------------------------------------- bad input


def corrupt(path, content=b"not an image"):
    path.write_bytes(content)


def test_bad_roots_and_split_files(tmp_path):
    with pytest.raises(DataError, match=r"vspw: no data set folder given \(--root\)"):
        build_dataset("vspw")
    with pytest.raises(DataError, match="nowhere"):
        build_dataset("vspw", tmp_path / "nowhere")
    with pytest.raises(DataError, match="train.txt"):
        build_dataset("vspw", tmp_path)
    (tmp_path / "train.txt").write_text("ghost\n")
    with pytest.raises(DataError, match="ghost"):
        build_dataset("vspw", tmp_path)
    with pytest.raises(DataError, match="imagenet"):
        build_dataset("imagenet", tmp_path)
    with pytest.raises(DataError, match="img"):
        build_dataset("cityscapes-vps", tmp_path)


def test_frames_and_masks_must_match(tmp_path):
    root = make_vspw(tmp_path, {"v": 3})
    os.remove(root / "data" / "v" / "mask" / "00000002.png")
    with pytest.raises(DataError, match=r"mask.*2 label files for 3 frames"):
        build_dataset("vspw", root, min_frames=1)
    save_palette_label(root / "data" / "v" / "mask" / "00000009.png", np.ones((H, W)))
    with pytest.raises(DataError, match="00000002"):  # same count, different names
        build_dataset("vspw", root, min_frames=1)


def test_unreadable_and_corrupt_images(tmp_path):
    root = make_vspw(tmp_path, {"v": 3})
    ds = build_dataset("vspw", root, clip_len=1, train=False, min_frames=1)
    corrupt(root / "data" / "v" / "origin" / "00000002.jpg")
    with pytest.raises(DataError, match="00000002.jpg: unreadable"):
        ds[1]
    jpeg = (root / "data" / "v" / "origin" / "00000001.jpg").read_bytes()
    corrupt(root / "data" / "v" / "origin" / "00000003.jpg", jpeg[:len(jpeg) // 2])  # truncated
    with pytest.raises(DataError, match="00000003.jpg: unreadable"):
        ds[2]
    corrupt(root / "data" / "v" / "mask" / "00000001.png")
    with pytest.raises(DataError, match="00000001.png: unreadable"):
        ds[0]


def test_label_values_out_of_range(tmp_path):
    root = make_vspw(tmp_path, {"v": 2}, raw=np.full((H, W), 125))
    with pytest.raises(DataError, match=r"00000001.png: label values \[125\] out of range"):
        build_dataset("vspw", root, clip_len=1, min_frames=1)[0]
    y, x = np.mgrid[0:H, 0:W]
    clips = make_clips(tmp_path / "clips", {"v": [("0", colour_frame(0), np.where(x == 3, 255, x % 3))]},
                       classes=["a", "b", "c"])
    assert build_dataset("clips", clips, clip_len=1)[0]["labels"].max() == 255  # 255 is fine
    save_image(clips / "v" / "labels" / "0.png", x % 4)
    with pytest.raises(DataError, match=r"0.png: label values \[3\] out of range"):
        build_dataset("clips", clips, clip_len=1)[0]
    save_image(clips / "v" / "labels" / "0.png", colour_frame(1))  # RGB labels
    with pytest.raises(DataError, match="8-bit single-channel"):
        build_dataset("clips", clips, clip_len=1)[0]


def test_clip_length_longer_than_every_video(tmp_path):
    root = make_vspw(tmp_path, {"a": 3, "b": 4})
    assert len(build_dataset("vspw", root, clip_len=4, min_frames=1)) == 1  # "a" is too short, "b" is not
    with pytest.raises(DataError, match="clip length 5 is longer than every video"):
        build_dataset("vspw", root, clip_len=5, min_frames=1)
    with pytest.raises(DataError, match="clip length 30"):
        build_dataset("synthetic", clip_len=30, num_videos=1)


def test_bad_cityscapes_vps_and_clips_trees(tmp_path):
    img, lab = tmp_path / "train" / "img", tmp_path / "train" / "labelmap"
    save_image(img / "0001_0001_city_000000_000001_newImg8bit.png", colour_frame(0))
    save_image(lab / "0001_0002_city_000000_000002_gtFine_color.png", np.zeros((H, W)))
    with pytest.raises(DataError, match="0001_0002_city.*no image 0001_0002"):
        build_dataset("cityscapes-vps", tmp_path)
    save_image(img / "frankfurt_000001.png", colour_frame(0))
    with pytest.raises(DataError, match="frankfurt_000001.png: name is not"):
        build_dataset("cityscapes-vps", tmp_path)

    clips = make_clips(tmp_path / "clips", {"a": [("0", colour_frame(0), np.zeros((H, W)))]})
    with pytest.raises(DataError, match="classes.txt: missing; with labels, it names the classes"):
        build_dataset("clips", clips)
    make_clips(clips, {"b": [("0", colour_frame(0), None)]}, classes=["x"])
    with pytest.raises(DataError, match=r"b[/\\]labels: missing"):
        build_dataset("clips", clips)
    os.makedirs(clips / "c")
    with pytest.raises(DataError, match=r"c[/\\]frames: no such folder"):
        build_dataset("clips", clips)


def test_the_command_lines_world_knobs_are_the_synthetic_worlds_with_its_defaults():
    import inspect

    parameters = inspect.signature(synthetic.videos).parameters
    assert {knob: parameters[knob].default for knob in synthetic.WORLD} == synthetic.WORLD
    assert synthetic.parse_world("hide_run=3,speed=8") == {"hide_run": 3, "speed": 8.0}
    assert synthetic.parse_world("hide_run=1,speed=1") == {} == synthetic.parse_world("")  # one world, one spelling
