"""evaluate.py: metrics on hand-computed cases and brute force, streaming inference against whole-clip runs, the
saved predictions, pictures and table, distributed evaluation against one process, the command line end to end, and
every bad-input error."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image

import data
import evaluate
import qshift
import streaming
import pictures
from evaluate import parse_args
from metrics import SegMetrics, VideoConsistency, json_safe
from pictures import colorize
from test_data import save_image, save_palette_label
from test_tables import tables
from tiny import build_model, tiny_config

REPO = Path(__file__).resolve().parent.parent

# -----------------------------------------------------------------------------
# SegMetrics


def scores_by_definition(pred, label, C, valid):
    """Per-class IoU (NaN if absent from the ground truth), their nanmean and accuracy over the pixels `valid`."""
    prd, lab, valid = np.asarray(pred).ravel(), np.asarray(label).ravel(), np.asarray(valid).ravel()
    ious = []
    for c in range(C):
        gt, pr = (lab == c) & valid, (prd == c) & valid
        ious.append((gt & pr).sum() / (gt | pr).sum() if gt.any() else np.nan)
    return ious, np.nanmean(ious), (lab == prd)[valid].mean()


def test_segmetrics_hand_computed_with_ignore_and_a_class_absent_from_the_ground_truth():
    label = torch.tensor([0, 0, 1, 1, 2, 255])
    pred = torch.tensor([0, 1, 1, 3, 0, 2])  # class 3 is predicted but absent from the ground truth
    m = SegMetrics(4)
    m.update(pred[:3].view(1, 3), label[:3].view(1, 3))  # two updates, 2-d: any matching shape accumulates
    m.update(pred[3:], label[3:])
    r = m.compute()
    # 5 non-ignore pixels, 2 correct; class 0: tp 1, gt 2, pred 2 -> 1/3; class 1 the same; class 2: tp 0 -> 0
    # (its prediction on the ignore pixel does not count); class 3: absent from the ground truth -> NaN
    assert r["pixel_acc"] == pytest.approx(2 / 5)
    assert r["iou"][:3] == pytest.approx([1 / 3, 1 / 3, 0.0]) and math.isnan(r["iou"][3])
    assert r["miou"] == pytest.approx(2 / 9)


def test_segmetrics_matches_brute_force_per_class_masks():
    g = torch.Generator().manual_seed(0)
    C = 6
    label = torch.randint(0, C - 1, (3, 17, 19), generator=g)  # class C-1 never in the ground truth
    label[torch.rand(label.shape, generator=g) < 0.2] = 255
    pred = torch.where(torch.rand(label.shape, generator=g) < 0.5, label.clamp(max=C - 1),
                       torch.randint(0, C, label.shape, generator=g))
    m = SegMetrics(C)
    for p, l in zip(pred, label):
        m.update(p, l)
    r = m.compute()
    ious, miou, acc = scores_by_definition(pred, label, C, label != 255)
    assert np.allclose(r["iou"], ious, equal_nan=True) and math.isnan(r["iou"][C - 1])
    assert r["miou"] == pytest.approx(miou) and r["pixel_acc"] == pytest.approx(acc)


def test_segmetrics_counts_the_same_without_bincount():
    # the CUDA path (index_add_ into fixed bins, no wait for the GPU) run on the CPU against bincount's
    g = torch.Generator().manual_seed(2)
    pred, label = torch.randint(0, 5, (40, 30), generator=g), torch.randint(0, 5, (40, 30), generator=g)
    label[:5] = 255
    m = SegMetrics(5)
    m.update(pred, label)
    index = label.to(torch.int32).reshape(-1) * 5 + pred.to(torch.int32).reshape(-1)
    counts = torch.zeros_like(m.counts).index_add_(0, index, torch.ones((), dtype=torch.int64).expand(len(index)))
    assert torch.equal(counts, m.counts) and m.confusion.sum() == 35 * 30


def test_segmetrics_without_updates_or_labelled_pixels_is_nan():
    assert math.isnan(SegMetrics(3).compute()["miou"])
    m = SegMetrics(3)
    m.update(torch.zeros(2, 2, dtype=torch.long), torch.full((2, 2), 255))
    r = m.compute()
    assert math.isnan(r["miou"]) and math.isnan(r["pixel_acc"])


# -----------------------------------------------------------------------------
# video consistency (VSPW's VC_perclip.py)


def vc_by_definition(preds, labels, k):
    """The official definition, written out: windows i in range(n - k), frames i..i+k-1, nanmean'd later."""
    accs = []
    for i in range(len(labels) - k):
        g = np.all([labels[i] == labels[i + j] for j in range(k)], axis=0)
        p = np.all([preds[i] == preds[i + j] for j in range(k)], axis=0)
        with np.errstate(invalid="ignore"):
            accs.append((g & p).sum() / g.sum())
    accs = np.array(accs)
    return accs[~np.isnan(accs)].sum(), int((~np.isnan(accs)).sum())


def video_consistency(preds, labels, k):
    """VideoConsistency fed a whole video: preds, labels (n, H, W) int tensors -> (sum of acc_i, number of windows)."""
    vc = VideoConsistency(k)
    for pred, label in zip(preds, labels):
        vc.update(pred, label)
    return vc.result()


def test_video_consistency_hand_computed():
    labels = torch.tensor([[0, 1, 255], [0, 2, 255], [0, 2, 255], [0, 2, 0]])  # 4 frames of 1x3 pixels
    preds = torch.tensor([[0, 1, 1], [0, 1, 2], [3, 1, 2], [3, 0, 2]])
    # k=2: windows (0,1), (1,2) only (range(n - k)). (0,1): G = pixels 0 and 2 (ignore == ignore counts),
    # P = pixels 0 and 1 -> 1/2. (1,2): G = all, P = pixels 1 and 2 -> 2/3. The left-out (2,3) would give 1/2.
    s, n = video_consistency(preds.view(4, 1, 3), labels.view(4, 1, 3), 2)
    assert n == 2 and s == pytest.approx(1 / 2 + 2 / 3)
    # k=3: one window (0,1,2): G = pixels 0 and 2, P = pixel 1 -> 0
    assert video_consistency(preds.view(4, 1, 3), labels.view(4, 1, 3), 3) == (0.0, 1)


def test_video_consistency_short_videos_and_empty_g():
    labels, preds = torch.zeros(8, 2, 2, dtype=torch.long), torch.zeros(8, 2, 2, dtype=torch.long)
    assert video_consistency(preds, labels, 8) == (0.0, 0)  # n <= k: no window, as the official script skips it
    assert video_consistency(preds[:5], labels[:5], 8) == (0.0, 0)
    assert video_consistency(preds, labels, 7) == (1.0, 1)
    labels = torch.arange(5).view(5, 1, 1).expand(5, 2, 2)  # every pixel changes every frame: G empty, NaN skipped
    assert video_consistency(preds[:5], labels, 2) == (0.0, 0)


def test_video_consistency_matches_the_definition_on_random_videos():
    g = torch.Generator().manual_seed(1)
    for n, k in [(12, 3), (9, 8), (20, 4)]:
        labels = torch.randint(0, 2, (n, 6, 7), generator=g)
        labels[torch.rand(labels.shape, generator=g) < 0.1] = 255
        preds = torch.randint(0, 2, (n, 6, 7), generator=g)
        s, cnt = video_consistency(preds, labels, k)
        ref_s, ref_cnt = vc_by_definition(preds.numpy(), labels.numpy(), k)
        assert cnt == ref_cnt and s == pytest.approx(ref_s)


def whole_clip(model, frames):
    """Reference: the model's forward on the clip as one batch of one clip."""
    with torch.no_grad():
        out = model(frames[None])
    return out.class_queries_logits, out.masks_queries_logits


# -----------------------------------------------------------------------------
# evaluate() on a small synthetic set: metrics, saved predictions, pictures


@pytest.fixture(scope="module")
def synthetic():
    return data.build_dataset("synthetic", split="val", clip_len=None, train=False, num_videos=2, num_frames=18)


@pytest.fixture(scope="module")
def tiny_model(synthetic):
    torch.manual_seed(0)
    return build_model(tiny_config(synthetic.num_classes, id2label=synthetic.id2label), shift_div=8, match=True)


def test_evaluate_gives_the_whole_clip_predictions_saved_and_drawn(synthetic, tiny_model, tmp_path):
    tiny_model.train()
    results = evaluate.evaluate(tiny_model, synthetic, "cpu", progress=False, chunk=5,
                                save_predictions=tmp_path / "pred", visualize=tmp_path / "vis", num_vis=1)
    assert tiny_model.training  # restored for the training loop
    colours = pictures.class_colours(synthetic.palette)
    maps, labels = [], []
    for v, (video, frames) in enumerate(synthetic.videos):
        clip = synthetic[v]  # the whole video as one clip
        maps.append(qshift.semantic_segmentation(*whole_clip(tiny_model.eval(), clip["pixel_values"]), (64, 96)))
        labels.append(clip["labels"])
        for t, frame in enumerate(frames):  # DIR/<video>/<frame>.png, a palette PNG of raw ids
            png = Image.open(tmp_path / "pred" / video / f"{frame}.png")
            assert png.mode == "P" and np.array_equal(np.array(png), synthetic.to_raw(maps[-1][t]))
            assert png.getpalette()[:3 * 4] == colours[:4].ravel().tolist()  # raw id = class here
    _, miou, acc = scores_by_definition(torch.stack(maps), torch.stack(labels), synthetic.num_classes,
                                        torch.stack(labels) != 255)
    assert results["miou"] == pytest.approx(miou) and results["pixel_acc"] == pytest.approx(acc)
    assert list(results["iou"]) == synthetic.class_names and results["num_frames"] == 36

    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["val-000.png"]  # num_vis=1
    picture = np.array(Image.open(tmp_path / "vis" / "val-000.png"))
    H, W, gap, title = 64, 96, 2, 16  # 6 rows of frames 0, 3, 7, 10, 14, 17; frame numbers | image | truth | prediction
    left = picture.shape[1] - (3 * W + 2 * gap)
    assert 10 < left < 40 and picture.shape[0] > title + 6 * (H + gap)
    for row, t in [(0, 0), (5, 17)]:
        top = title + row * (H + gap)
        assert np.array_equal(picture[top:top + H, left + W + gap:left + 2 * W + gap], colorize(labels[0][t], colours))
        assert np.array_equal(picture[top:top + H, -W:], colorize(maps[0][t], colours))
        assert (picture[top:top + H, :left] < 128).any()  # the frame number is written in the margin


def test_synthetic_pictures_draw_each_class_in_its_own_colour(synthetic):
    colours = pictures.class_colours(synthetic.palette)
    assert synthetic.class_names == ["background", "red", "green", "blue"]
    background, red, green, blue = colours[:4].astype(int)
    assert background.max() - background.min() < 10 and background.max() < 100  # a dark grey
    for colour, channel in ((red, 0), (green, 1), (blue, 2)):
        assert colour.argmax() == channel and colour[channel] > 150 and colour.sum() - colour[channel] < 150
    assert (colours[255] == 0).all()  # ignore
    city = data.CITYSCAPES_PALETTE
    assert len(city) == len(data.CITYSCAPES_CLASSES) == 19 and city[0] == (128, 64, 128)  # road, as Cityscapes draws it


def fake_predictions(model, frames, *args):
    """Class maps made from the images themselves: varied, unlike an untrained model's (for the bookkeeping)."""
    return ((x[0] > 0).long() + 2 * (x[2] > 0.5).long() for x in frames)


def test_evaluate_scores_match_the_definitions(synthetic, monkeypatch):
    monkeypatch.setattr(streaming, "predict_video", fake_predictions)
    results = evaluate.evaluate(torch.nn.Linear(1, 1), synthetic, progress=False)
    preds = [torch.stack(list(fake_predictions(None, synthetic[v]["pixel_values"]))) for v in range(2)]
    labels = [synthetic[v]["labels"] for v in range(2)]
    hidden = torch.cat([synthetic[v]["cue_hidden"] for v in range(2)])
    pred, label = torch.cat(preds), torch.cat(labels)
    C = synthetic.num_classes
    ious, miou, acc = scores_by_definition(pred, label, C, label != 255)
    assert results["miou"] == pytest.approx(miou) and results["pixel_acc"] == pytest.approx(acc)
    assert list(results["iou"].values()) == pytest.approx(ious, nan_ok=True)
    _, miou, acc = scores_by_definition(pred, label, C, hidden)
    assert results["hidden_miou"] == pytest.approx(miou) and results["hidden_acc"] == pytest.approx(acc)
    visible = ~hidden & (label != synthetic.background_class) & (label != 255)
    _, miou, acc = scores_by_definition(pred, label, C, visible)
    assert results["visible_miou"] == pytest.approx(miou) and results["visible_acc"] == pytest.approx(acc)
    for k in (8, 16):
        sums = [vc_by_definition(p.numpy(), l.numpy(), k) for p, l in zip(preds, labels)]
        assert results[f"mvc{k}"] == pytest.approx(sum(s for s, _ in sums) / sum(n for _, n in sums))
    assert 0 < results["hidden_acc"] < 1 and 0 < results["mvc16"] < 1  # the check is not vacuous


def test_hidden_cue_accuracy_by_distance_matches_the_definition(monkeypatch):
    monkeypatch.setattr(streaming, "predict_video", fake_predictions)
    world = data.build_dataset("synthetic", split="val", clip_len=None, train=False, num_videos=3, hide_run=3)
    results = evaluate.evaluate(torch.nn.Linear(1, 1), world, progress=False)
    pred = torch.cat([torch.stack(list(fake_predictions(None, world[v]["pixel_values"]))) for v in range(3)])
    label = torch.cat([world[v]["labels"] for v in range(3)])
    distance = torch.cat([world[v]["cue_distance"] for v in range(3)]).long()
    for name, where in (("hidden_d1_acc", distance == 1), ("hidden_d2_acc", distance == 2),
                        ("hidden_d3_acc", distance >= 3), ("hidden_acc", distance > 0)):
        assert where.sum() > 100  # runs of 3 have ends and middles; some touch a video's first or last frame
        assert results[name] == pytest.approx(scores_by_definition(pred, label, world.num_classes, where)[2])
    one = evaluate.evaluate(torch.nn.Linear(1, 1), data.build_dataset("synthetic", split="val", clip_len=None,
                                                                      train=False, num_videos=2), progress=False)
    assert one["hidden_d1_acc"] == one["hidden_acc"] and math.isnan(one["hidden_d2_acc"])  # runs of 1: all at d1


def test_vis_frames_draws_those_consecutive_frames(synthetic, monkeypatch, tmp_path):
    monkeypatch.setattr(streaming, "predict_video", fake_predictions)
    heights = {}
    for frames in (None, (2, 4), (5, 5)):
        evaluate.evaluate(torch.nn.Linear(1, 1), synthetic, progress=False, visualize=tmp_path / str(frames),
                          num_vis=1, vis_frames=frames)
        heights[frames] = Image.open(tmp_path / str(frames) / f"{synthetic.videos[0][0]}.png").height
    row = heights[(2, 4)] - heights[(5, 5)]  # two more rows of frames
    assert row > 0 and heights[None] - heights[(5, 5)] == 5 * row // 2  # the default: 6 frames spread over the video


def test_the_world_is_read_from_the_run_and_names_the_evaluation(checkpoint, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    for f in checkpoint.iterdir():
        (run / "best" / f.name).write_bytes(f.read_bytes())
    (run / "config.json").write_text(json.dumps({"data": "synthetic", "root": None, "world": {"hide_run": 3}}))
    main(["--checkpoint", str(run / "best"), "--max-videos", "2", "--device", "cpu"])
    main(["--checkpoint", str(run / "best"), "--max-videos", "2", "--device", "cpu", "--world", "hide_run=1"])
    capsys.readouterr()
    runs3 = json.loads((run / "eval-synthetic-hide_run3-val-first2.json").read_text())
    runs1 = json.loads((run / "eval-synthetic-val-first2.json").read_text())  # the default world: the usual name
    assert runs3["world"] == {"hide_run": 3} and runs1["world"] == {}
    assert runs3["results"]["hidden_d2_acc"] is not None and runs1["results"]["hidden_d2_acc"] is None
    for name in ("eval-synthetic-hide_run3-val", "eval-synthetic-val"):  # as evaluations of all videos, for --table
        first2 = json.loads((run / f"{name}-first2.json").read_text())
        (run / f"{name}.json").write_text(json.dumps({**first2, "max_videos": None}))
    with pytest.raises(SystemExit):  # two worlds evaluated: the table asks which
        tables.main([str(run)])
    assert "choose one with --data, --root, --split and --world" in capsys.readouterr().err
    tables.main([str(run), "--world", "hide_run=3"])
    assert "| hidden d1 | hidden d2 |" in capsys.readouterr().out


def main(argv):
    evaluate.main(parse_args(argv))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_scores_on_cuda_equal_those_on_the_cpu(synthetic, tiny_model, monkeypatch):
    monkeypatch.setattr(streaming, "predict_video", fake_predictions)
    on_cpu = evaluate.evaluate(torch.nn.Linear(1, 1), synthetic, progress=False)
    monkeypatch.setattr(streaming, "predict_video", lambda *args: (pred.cuda() for pred in fake_predictions(*args)))
    on_cuda = evaluate.evaluate(torch.nn.Linear(1, 1), synthetic, "cuda", progress=False)  # index_add_, pinned labels
    assert json.dumps(json_safe(on_cuda)) == json.dumps(json_safe(on_cpu))
    monkeypatch.undo()
    amp = evaluate.evaluate(tiny_model, synthetic, "cuda", amp=torch.bfloat16, progress=False)  # bf16 autocast
    tiny_model.cpu()
    assert amp["num_frames"] == 36 and 0 <= amp["miou"] <= 1


def test_own_frames_without_labels_give_predictions_and_pictures_only(tiny_model, tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "clips" / "walk" / "frames").mkdir(parents=True)
    for t in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(tmp_path / f"clips/walk/frames/{t}.png")
    tiny_model.save_pretrained(tmp_path / "run" / "best")
    main(["--checkpoint", str(tmp_path / "run" / "best"), "--data", "clips", "--root", str(tmp_path / "clips"),
          "--save-predictions", str(tmp_path / "pred"), "--visualize", str(tmp_path / "vis"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "3 frames of 1 video predicted; no labels" in out and f"drew 1 of 1 video in {tmp_path / 'vis'}" in out
    saved = json.loads((tmp_path / "run" / "eval-clips-clips-all.json").read_text())  # no val.txt: split "all"
    assert saved["split"] == "all" and saved["results"] == {"num_videos": 1, "num_frames": 3}
    assert sorted(p.name for p in (tmp_path / "pred" / "walk").iterdir()) == ["0.png", "1.png", "2.png"]
    picture = Image.open(tmp_path / "vis" / "walk.png")
    assert 2 * 96 + 2 < picture.width < 3 * 96  # frame numbers | image | prediction


def test_own_clips_splits_and_data_sets_never_overwrite_each_other(checkpoint, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for video in ("a", "b"):
        (tmp_path / "clips" / video / "frames").mkdir(parents=True)
        for t in range(2):
            Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(
                tmp_path / "clips" / video / "frames" / f"{t}.png")
    run = checkpoint.parent
    clips = ["--data", "clips", "--root", str(tmp_path / "clips"), "--device", "cpu"]
    main(["--checkpoint", str(checkpoint), *clips])
    (tmp_path / "clips" / "val.txt").write_text("b\n")
    main(["--checkpoint", str(checkpoint), *clips])  # now the default split is val: video b only
    main(["--checkpoint", str(checkpoint), "--data", "synthetic", "--max-videos", "1", "--device", "cpu"])
    capsys.readouterr()
    assert json.loads((run / "eval-clips-clips-all.json").read_text())["results"]["num_videos"] == 2
    assert json.loads((run / "eval-clips-clips-val.json").read_text())["results"]["num_videos"] == 1
    assert json.loads((run / "eval-synthetic-val-first1.json").read_text())["data"] == "synthetic"
    report = (run / "eval-clips-clips-val.md").read_text()
    assert report.startswith(f"# {checkpoint} on clips val\n\nshift_div 8, match True, causal False, shift_at queries, "
                             "match_by queries, reach 1 (8 channels shifted); whole videos\n")  # as Settings names them
    (tmp_path / "other").mkdir()
    (tmp_path / "clips").rename(tmp_path / "other" / "more-clips")  # another folder of own clips: its own files
    main(["--checkpoint", str(checkpoint), "--data", "clips", "--root", str(tmp_path / "other" / "more-clips"),
          "--device", "cpu"])
    assert (run / "eval-clips-more-clips-val.json").is_file() and (run / "eval-clips-clips-val.json").is_file()
    capsys.readouterr()
    tables.main([str(run), "--root", str(tmp_path / "other" / "more-clips")])
    assert capsys.readouterr().out.startswith("clips val, whole videos")


# -----------------------------------------------------------------------------
# VSPW: the paper's videos or, as VSPW's own code scores it, every video; raw frames scaled for the model

VSPW_VIDEOS = {"short": (60, 99, 5, 124), "long_a": (5, 17, 33, 1), "long_b": (17, 33, 77, 124)}  # raw class ids
VSPW_LENGTHS = {"short": 12, "long_a": 32, "long_b": 33}  # the paper skips the 12-frame video, the official code not
VSPW_SIZE = (40, 56)
RED = [1, 5, 17, 33, 60, 77, 99, 124, 50]  # raw ids drawn in the red levels 20, 45, ..., 220; 50: on no class
RED_LEVEL = np.zeros(256, np.uint8)
RED_LEVEL[RED] = 20 + 25 * np.arange(len(RED))


@pytest.fixture(scope="module")
def vspw(tmp_path_factory):
    """A VSPW tree in the official layout: val.txt, data/<video>/origin/<frame>.jpg and mask/<frame>.png, palette
    PNGs of raw ids (1..124 classes, 0 "others", 255 ignored). Each frame: its video's classes as moving rectangles
    over "others", an ignored band on the right; the frame's red channel tells its pixels' raw id (RED), so that
    colour_predictions reads the classes back, wrong where JPEG blurs them."""
    root = tmp_path_factory.mktemp("vspw")
    rng = np.random.default_rng(0)
    H, W = VSPW_SIZE
    for video, classes in VSPW_VIDEOS.items():
        for t in range(VSPW_LENGTHS[video]):
            raw = np.zeros((H, W), np.uint8)
            for i, c in enumerate(classes):
                y, x = (9 * i + t) % (H - 12), (13 * i + 2 * t) % (W - 20)
                raw[y:y + 12, x:x + 16] = c
            raw[:, -5:] = 255
            image = rng.integers(120, 136, (H, W, 3), dtype=np.uint8)
            image[..., 0] = RED_LEVEL[np.where((raw > 0) & (raw < 255), raw, 50)]
            save_image(root / "data" / video / "origin" / f"{t:08d}.jpg", image)
            save_palette_label(root / "data" / video / "mask" / f"{t:08d}.png", raw)
    (root / "val.txt").write_text("".join(f"{video}\n" for video in VSPW_VIDEOS))
    return root


@pytest.fixture(scope="module")
def vspw_model():
    torch.manual_seed(0)
    return build_model(tiny_config(data.VSPW_NUM_CLASSES), shift_div=8, match=True)


def colour_predictions(model, frames, *args):
    """Class maps read from the frames' red channel (RED, see vspw): right inside the rectangles, wrong near their
    edges (JPEG), class 49 (raw 50, in no ground truth) on "others" and ignored pixels."""
    for x in frames:
        level = (((x[0] * qshift.STD[0] + qshift.MEAN[0]) * 255 - 20) / 25).round().long().clamp(0, len(RED) - 1)
        yield torch.tensor(RED)[level] - 1


def official_vspw_scores(root, predictions, videos):
    """mIoU and pixel accuracy as VSPW's own evaluation computes them (VSPW_code's evaluator_test.py and its
    Evaluator), written out: every mask of each video against the prediction PNG of its name; raw 0 ("others")
    becomes 255, then every id drops by one, and only ids 0..123 count (raw 0 and 255 are ignored, raw k is class
    k - 1); one 124 x 124 confusion matrix [ground truth, prediction] over all frames; IoU = tp / (gt + pred - tp),
    mIoU = their sum over the classes in the ground truth / their number (nansum(IoU * isval) / isval.sum()); pixel
    accuracy = trace / sum. The official script reads predictions as class ids; evaluate.py saves raw ids (class + 1).
    """
    K = data.VSPW_NUM_CLASSES
    confusion = np.zeros((K, K), np.int64)
    for video in videos:
        for mask in (root / "data" / video / "mask").iterdir():
            gt = np.array(Image.open(mask)).astype(np.int64)
            gt = np.where(gt == 0, 255, gt) - 1
            pred = np.array(Image.open(predictions / video / mask.name)).astype(np.int64) - 1
            counted = (gt >= 0) & (gt < K)
            np.add.at(confusion, (gt[counted], pred[counted]), 1)
    tp, in_truth = np.diag(confusion), confusion.sum(1) > 0
    with np.errstate(invalid="ignore"):
        iou = tp / (confusion.sum(1) + confusion.sum(0) - tp)
    return np.nansum(iou * in_truth) / in_truth.sum(), tp.sum() / confusion.sum()


def test_vspw_is_scored_by_the_papers_protocol_or_as_vspws_own_code_scores_every_video(
        vspw, vspw_model, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(streaming, "predict_video", colour_predictions)
    run = tmp_path / "run"
    vspw_model.save_pretrained(run / "best")
    flags = ["--checkpoint", str(run / "best"), "--data", "vspw", "--root", str(vspw), "--device", "cpu"]
    main(flags + ["--min-frames", "1", "--save-predictions", str(tmp_path / "official")])
    main(flags + ["--save-predictions", str(tmp_path / "paper")])  # the paper's protocol, the default
    assert "val.txt: skipped 1 of 3 videos with fewer than 32 frames" in capsys.readouterr().err
    official = json.loads((run / "eval-vspw-val-min1.json").read_text())
    paper = json.loads((run / "eval-vspw-val.json").read_text())  # the default keeps the name tables.py reads
    assert (official["protocol"], official["min_frames"], official["skipped_videos"]) == \
        ("official: every video in val.txt", 1, 0)
    assert (paper["protocol"], paper["min_frames"], paper["skipped_videos"]) == \
        ("paper: videos of at least 32 frames", 32, 1)
    assert (official["results"]["num_videos"], official["results"]["num_frames"]) == (3, 12 + 32 + 33)
    assert (paper["results"]["num_videos"], paper["results"]["num_frames"]) == (2, 32 + 33)
    assert sorted(p.name for p in (tmp_path / "paper").iterdir()) == ["long_a", "long_b"]
    assert "; official: every video in val.txt (0 videos skipped)" in (run / "eval-vspw-val-min1.md").read_text()
    assert "; paper: videos of at least 32 frames (1 video skipped)" in (run / "eval-vspw-val.md").read_text()

    for scores, videos, folder in ((official, VSPW_VIDEOS, "official"), (paper, ["long_a", "long_b"], "paper")):
        miou, accuracy = official_vspw_scores(vspw, tmp_path / folder, videos)
        assert scores["results"]["miou"] == pytest.approx(miou, rel=1e-12, abs=0)
        assert scores["results"]["pixel_acc"] == pytest.approx(accuracy, rel=1e-12, abs=0)
    assert 0.3 < paper["results"]["miou"] < 0.9 and 0.3 < official["results"]["miou"] < 0.9  # neither all nor none
    assert abs(official["results"]["miou"] - paper["results"]["miou"]) > 0.01  # the short video's classes count

    tables.main([str(run)])  # both protocols evaluated: the table takes the paper's
    assert f"| {100 * paper['results']['miou']:.2f} |" in capsys.readouterr().out


def red_logits(model, frames, *args):
    """Per-frame logits standing in for stream_logits' (one frame at a time): 3 queries of classes 4, 58 and 98
    whose masks follow the frame's red channel at a quarter of its size, so that the maps have edges. Records the
    pixel values it is given in red_logits.seen."""
    class_logits = torch.zeros(1, 3, data.VSPW_NUM_CLASSES + 1)
    class_logits[0, [0, 1, 2], [4, 58, 98]] = 8.0
    for x in frames:
        red_logits.seen.append(x)
        red = F.avg_pool2d(x[None, :1], 4, ceil_mode=True)  # (1, 1, h/4, w/4)
        yield class_logits, 4 * torch.cat([red - 1, -red - 1, 1 - red.abs()], 1)


def test_short_side_scales_frames_for_the_model_and_scores_their_class_scores_at_the_labels_size(
        vspw, vspw_model, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(streaming, "stream_logits", red_logits)
    red_logits.seen = []
    run = tmp_path / "run"
    vspw_model.save_pretrained(run / "best")
    main(["--checkpoint", str(run / "best"), "--data", "vspw", "--root", str(vspw), "--min-frames", "1",
          "--max-videos", "1", "--short-side", "24", "--save-predictions", str(tmp_path / "pred"), "--device", "cpu"])
    capsys.readouterr()
    name = run / "eval-vspw-val-min1-short24-first1"  # a scaled evaluation replaces no unscaled one
    saved = json.loads(name.with_suffix(".json").read_text())
    assert saved["short_side"] == 24 and saved["results"]["num_frames"] == 12  # the short video, first in val.txt
    assert "scaled down to a short side of 24 for the model" in name.with_suffix(".md").read_text()

    origin = sorted((vspw / "data" / "short" / "origin").iterdir())
    frames = torch.from_numpy(np.stack([np.array(Image.open(path)) for path in origin])).permute(0, 3, 1, 2)
    small = F.interpolate(frames, size=(24, 34), mode="bilinear", antialias=True)  # 56 * 24 / 40 = 33.6 wide
    pixel_values = qshift.frames_to_pixel_values(small.permute(0, 2, 3, 1))
    assert torch.equal(torch.stack(red_logits.seen), pixel_values)  # what the model saw: the frames scaled down
    logits = [torch.cat(x) for x in zip(*red_logits(None, pixel_values))]
    expected = qshift.semantic_segmentation(*logits, VSPW_SIZE)  # class scores resized to the labels' size, argmax
    maps = np.stack([np.array(Image.open(tmp_path / "pred" / "short" / f"{path.stem}.png")) for path in origin])
    assert maps.shape == (12, *VSPW_SIZE) and np.array_equal(maps.astype(np.int64) - 1, expected.numpy())
    small_maps = qshift.semantic_segmentation(*logits, (24, 34))[:, None].float()
    resized_maps = F.interpolate(small_maps, size=VSPW_SIZE, mode="nearest-exact")[:, 0].long()
    assert len(expected.unique()) == 3 and not torch.equal(resized_maps, expected)  # the check tells them apart


def test_scaled_size_keeps_the_aspect_and_never_scales_up():
    assert data.scaled_size(2160, 3840, 480) == (480, 853)  # 4K: 3840 * 480 / 2160 = 853.3
    assert data.scaled_size(1920, 1080, 480) == (853, 480)  # portrait
    assert data.scaled_size(480, 854, 480) == (480, 854) and data.scaled_size(360, 640, 480) == (360, 640)  # not up
    assert data.scaled_size(720, 1280, 0) == (720, 1280)  # 0: as it is


# -----------------------------------------------------------------------------
# distributed evaluation: two gloo processes on the CPU against one


def evaluate_as_rank(rank, world, folder):
    """One process of an evaluation by `world` processes: its results go to folder/rank<rank>.json."""
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{folder / 'rendezvous'}", rank=rank, world_size=world)
    dataset = data.build_dataset("synthetic", split="val", clip_len=None, train=False, num_videos=3, num_frames=10)
    streaming.predict_video = fake_predictions
    results = evaluate.evaluate(torch.nn.Linear(1, 1), dataset, "cpu", progress=False,
                                save_predictions=folder / "pred")
    (folder / f"rank{rank}.json").write_text(json.dumps(json_safe(results)))
    if world > 1:
        dist.destroy_process_group()


def test_distributed_evaluation_equals_one_process_exactly(tmp_path):
    jobs = []
    for world in (1, 2):  # at once, each in fresh processes, so that both run alike
        (tmp_path / str(world)).mkdir()
        jobs.append(torch.multiprocessing.spawn(evaluate_as_rank, (world, tmp_path / str(world)), world, join=False))
    for job in jobs:
        while not job.join():
            pass
    one = json.loads((tmp_path / "1" / "rank0.json").read_text())
    assert one["num_videos"] == 3 and one["num_frames"] == 30 and 0 < one["mvc8"] < 1 and "hidden_miou" in one
    for rank in (0, 1):  # 3 videos on 2 ranks: 2 and 1, and both return the scores of all three, to the last bit
        assert (tmp_path / "2" / f"rank{rank}.json").read_text() == (tmp_path / "1" / "rank0.json").read_text()
    saved = {folder: {p.relative_to(tmp_path / folder): p.read_bytes() for p in (tmp_path / folder).rglob("*.png")}
             for folder in ("1", "2")}
    assert len(saved["1"]) == 30 and saved["2"] == saved["1"]  # each rank saved the predictions of its videos


# -----------------------------------------------------------------------------
# command line: end to end, and every bad input


@pytest.fixture(scope="module")
def checkpoint(synthetic, tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "best"
    tiny_model.save_pretrained(path)
    return path


def test_command_line_end_to_end_and_its_errors(checkpoint, tmp_path):
    run = tmp_path / "run"  # as train.py leaves it: the data set is read from its config.json
    (run / "best").mkdir(parents=True)
    for f in checkpoint.iterdir():
        (run / "best" / f.name).write_bytes(f.read_bytes())
    (run / "config.json").write_text(json.dumps({"data": "synthetic", "root": None, "seed": 0}))
    cli = [sys.executable, str(REPO / "evaluate.py")]
    jobs = [subprocess.Popen(cli + args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for args in (["--checkpoint", str(run / "best"), "--max-videos", "1", "--chunk", "4", "--device", "cpu"],
                         ["--checkpoint", str(tmp_path / "missing"), "--data", "synthetic"])]
    (ok_out, ok_err), (_, bad_err) = (job.communicate(timeout=300) for job in jobs)
    assert jobs[0].returncode == 0, ok_err
    saved = json.loads((run / "eval-synthetic-val-first1.json").read_text())
    assert (saved["shift_div"], saved["match"], saved["causal"], saved["channels"]) == (8, True, False, "8")
    assert {"miou", "pixel_acc", "mvc8", "mvc16", "hidden_miou", "hidden_acc", "visible_miou", "visible_acc"} \
        <= set(saved["results"]) and saved["results"]["num_frames"] == 24
    assert (run / "eval-synthetic-val-first1.md").read_text() in ok_out
    assert "| mIoU | pix. acc. | mVC8 | mVC16 |" in ok_out
    assert jobs[1].returncode == 2
    assert bad_err.splitlines() == [f"error: --checkpoint {tmp_path / 'missing'}: no such folder"]  # no traceback


def test_loading_a_checkpoint_gives_no_backbone_warning_and_only_that_one_is_silenced(checkpoint):
    import logging

    import transformers
    logger = logging.getLogger("transformers.models.maskformer.configuration_maskformer")
    records, handler, verbosity = [], logging.Handler(), transformers.logging.get_verbosity()
    handler.emit = records.append  # sees what passes the logger's filters
    logger.addHandler(handler)
    transformers.logging.set_verbosity_warning()
    transformers.utils.logging.warning_once.cache_clear()  # it warns once per process
    try:
        qshift.QShiftSegmenter.from_pretrained(checkpoint)
        logger.warning("Backbone maskformer-swin is not a supported model and may not be compatible with Mask2Former.")
        logger.warning("Backbone resnet-9000 is not a supported model")  # any other message goes through
    finally:
        logger.removeHandler(handler)
        transformers.logging.set_verbosity(verbosity)
    assert [r.getMessage() for r in records] == ["Backbone resnet-9000 is not a supported model"]


@pytest.fixture(scope="module")
def bad_checkpoints(checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    for name in ("weights", "config", "settings"):
        (root / name).mkdir()
        for f in checkpoint.iterdir():
            (root / name / f.name).write_bytes(f.read_bytes())
    weights = root / "weights" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    (root / "config" / "config.json").write_text("{not json")
    config = json.loads((root / "settings" / "config.json").read_text())
    (root / "settings" / "config.json").write_text(json.dumps({**config, "qshift": [1, 2]}))
    (root / "no-qshift").mkdir()
    build_model(tiny_config(4), shift_div=8, match=True).model.save_pretrained(root / "image-model")
    build_model(tiny_config(3), shift_div=8, match=True).save_pretrained(root / "three-classes")
    (root / "corrupt-run").mkdir()
    (root / "corrupt-run" / "eval-val.json").write_text("{")
    build_model(tiny_config(4), shift_div=8, match=True).save_pretrained(root / "from-run" / "best")
    (root / "from-run" / "config.json").write_text("{")
    return root


@pytest.mark.parametrize("args,message", [
    (["--checkpoint", "{bad}/missing", "--data", "synthetic"], "no such folder"),
    (["--checkpoint", "{bad}/no-qshift", "--data", "synthetic"], "not a qshift checkpoint"),
    (["--checkpoint", "{bad}/weights", "--data", "synthetic"], "cannot load"),
    (["--checkpoint", "{bad}/image-model", "--data", "synthetic"], "no qshift settings"),
    (["--checkpoint", "{bad}/config", "--data", "synthetic"], "cannot read"),
    (["--checkpoint", "{bad}/settings", "--data", "synthetic"], "qshift entry is not a JSON object"),
    (["--checkpoint", "{bad}/three-classes", "--data", "synthetic"], "4 classes, but the checkpoint"),
    (["--checkpoint", "{good}", "--data", "synthetic", "--split", "bogus"], "unknown split"),
    (["--checkpoint", "{good}", "--data", "vspw", "--root", "{bad}/missing"], "no such dataset folder"),
    (["--checkpoint", "{good}", "--data", "synthetic", "--clip-len", "0"], "--clip-len 0: must be at least 1"),
    (["--checkpoint", "{good}", "--data", "imagenet"], "invalid choice"),
    (["--checkpoint", "{good}"], "needs --data: no"),
    (["--checkpoint", "{good}", "--data", "synthetic", "--device", "gpu"], "--device: gpu: use cpu, cuda"),
    (["--checkpoint", "{good}", "--data", "synthetic", "--max-video", "1"], "unrecognized arguments: --max-video"),
    (["--checkpoint", "{good}", "--data", "synthetic", "--vis-frames", "5", "2"], "--vis-frames 5 2: give frames"),
    (["--checkpoint", "{good}", "--data", "synthetic", "--world", "hide=3"], "unknown knob 'hide'"),
    (["--checkpoint", "{good}", "--data", "synthetic", "--world", "speed=0"], "speed must be"),
    (["--checkpoint", "{good}", "--data", "synthetic", "--world", "hide_run=30"],
     "--world: hide_run 30: 1 x 30 hidden frames"),
    (["--checkpoint", "{good}", "--data", "vspw", "--root", "{bad}", "--world", "hide_run=2"], "only the synthetic"),
    (["--checkpoint", "{bad}/from-run/best"], "cannot read"),
    (["--checkpoint", "{good}", "--data", "vspw", "--root", "{bad}", "--min-frames", "0"],
     "--min-frames 0: must be at least 1"),
    (["--checkpoint", "{good}", "--data", "synthetic", "--min-frames", "1"], "--min-frames: only VSPW skips short"),
    (["--checkpoint", "{good}", "--data", "vspw", "--root", "{bad}", "--short-side", "-1"],
     "--short-side -1: must be at least 0"),
    (["--data", "synthetic"], "--checkpoint: give"),
])
def test_bad_input_is_one_line_and_exit_status_2(args, message, bad_checkpoints, checkpoint, capfd):
    args = [a.format(bad=bad_checkpoints, good=checkpoint) for a in args]

    def files():
        return {(p, p.stat().st_mtime_ns) for root in (bad_checkpoints, checkpoint.parent) for p in root.rglob("*")}

    before = files()
    with pytest.raises(SystemExit) as exit_:
        main(args)  # parse_args, then evaluate.main
    out, err = capfd.readouterr()
    assert exit_.value.code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert files() == before  # nothing written
