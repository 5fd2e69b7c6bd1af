"""evaluate.py: metrics on hand-computed cases and brute force, streaming inference against whole-clip runs, the
saved predictions, pictures and table, the command line end to end, and every bad-input error."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
import evaluate
import qshift
from evaluate import SegMetrics, colorize, main, video_consistency

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
    return qshift.build_model(qshift.tiny_config(synthetic.num_classes, id2label=synthetic.id2label), 8, True)


def test_evaluate_gives_the_whole_clip_predictions_saved_and_drawn(synthetic, tiny_model, tmp_path):
    tiny_model.train()
    results = evaluate.evaluate(tiny_model, synthetic, "cpu", progress=False, chunk=5,
                                save_predictions=tmp_path / "pred", visualize=tmp_path / "vis", num_vis=1)
    assert tiny_model.training  # restored for the training loop
    maps, labels = [], []
    for v, (video, frames) in enumerate(synthetic.videos):
        clip = synthetic[v]  # the whole video as one clip
        maps.append(qshift.semantic_segmentation(*whole_clip(tiny_model.eval(), clip["pixel_values"]), (64, 96)))
        labels.append(clip["labels"])
        for t, frame in enumerate(frames):  # DIR/<video>/<frame>.png, a palette PNG of raw ids
            png = Image.open(tmp_path / "pred" / video / f"{frame}.png")
            assert png.mode == "P" and np.array_equal(np.array(png), synthetic.to_raw(maps[-1][t]))
    _, miou, acc = scores_by_definition(torch.stack(maps), torch.stack(labels), synthetic.num_classes,
                                        torch.stack(labels) != 255)
    assert results["miou"] == pytest.approx(miou) and results["pixel_acc"] == pytest.approx(acc)
    assert list(results["iou"]) == synthetic.class_names and results["num_frames"] == 36

    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == ["val-000.png"]  # num_vis=1
    picture = np.array(Image.open(tmp_path / "vis" / "val-000.png"))
    H, W, gap, title = 64, 96, 2, 16  # 6 rows of frames 0, 3, 7, 10, 14, 17; columns image | truth | prediction
    assert picture.shape[1] == 3 * W + 2 * gap and picture.shape[0] > title + 6 * (H + gap)
    for row, t in [(0, 0), (5, 17)]:
        top = title + row * (H + gap)
        assert np.array_equal(picture[top:top + H, W + gap:2 * W + gap], colorize(labels[0][t]))
        assert np.array_equal(picture[top:top + H, 2 * (W + gap):], colorize(maps[0][t]))


def test_evaluate_scores_match_the_definitions(synthetic, monkeypatch):
    # predictions made from the image itself (varied, unlike an untrained model's), to check the bookkeeping
    def fake(x):
        return (x[0] > 0).long() + 2 * (x[2] > 0.5).long()

    monkeypatch.setattr(qshift, "predict_video", lambda model, frames, *args: (fake(x) for x in frames))
    results = evaluate.evaluate(torch.nn.Linear(1, 1), synthetic, progress=False)
    preds = [torch.stack([fake(x) for x in synthetic[v]["pixel_values"]]) for v in range(2)]
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


def test_own_frames_without_labels_give_predictions_and_pictures_only(tiny_model, tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "clips" / "walk" / "frames").mkdir(parents=True)
    for t in range(3):
        Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(tmp_path / f"clips/walk/frames/{t}.png")
    tiny_model.save_pretrained(tmp_path / "run" / "best")
    main(["--checkpoint", str(tmp_path / "run" / "best"), "--data", "clips", "--root", str(tmp_path / "clips"),
          "--save-predictions", str(tmp_path / "pred"), "--visualize", str(tmp_path / "vis"), "--device", "cpu"])
    assert "no labels" in capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "eval-val.json").read_text())
    assert saved["results"] == {"num_videos": 1, "num_frames": 3}
    assert sorted(p.name for p in (tmp_path / "pred" / "walk").iterdir()) == ["0.png", "1.png", "2.png"]
    picture = Image.open(tmp_path / "vis" / "walk.png")
    assert picture.width == 2 * 96 + 2  # image | prediction


# -----------------------------------------------------------------------------
# the results table


def write_run(folder, shift_div, match, miou, pixel_acc, mvc8=0.8, causal=False):
    folder.mkdir(parents=True)
    run = {"checkpoint": str(folder / "best"), "data": "synthetic", "root": None, "split": "val", "clip_len": None,
           "max_videos": None, "shift_div": shift_div, "match": match, "causal": causal,
           "channels": 256 // shift_div if shift_div else 0,
           "results": {"num_videos": 2, "num_frames": 48, "miou": miou, "pixel_acc": pixel_acc, "mvc8": mvc8}}
    (folder / "eval-val.json").write_text(json.dumps(run))
    return str(folder)


def test_table_has_the_papers_layout_with_mean_and_std_over_seeds(tmp_path, capsys):
    runs = [write_run(tmp_path / "base0", 0, False, 0.50, 0.90, mvc8=None),
            write_run(tmp_path / "base1", 0, True, 0.52, 0.92),  # matching means nothing without a shift
            *(write_run(tmp_path / f"m{seed}", 16, True, miou, 0.93) for seed, miou in enumerate([0.55, 0.56, 0.57])),
            write_run(tmp_path / "nomatch", 16, False, 0.49, 0.90),
            write_run(tmp_path / "k128", 128, True, 0.40, 0.88)]
    main(["--table", *runs, "--out", str(tmp_path / "table.md")])
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[2:] == [
        "| shift fraction | channels | matching | mIoU | pix. acc. | Δ mIoU | Δ pix. acc. | mVC8 | runs |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        "| 0 | 0 |  | 51.00 ± 1.41 | 91.00 ± 1.41 |  |  | 80.00 | 2 |",  # mVC8: the one run that has it
        "| 1/128 | 2 | ✓ | 40.00 | 88.00 | -11.00 | -3.00 | 80.00 | 1 |",
        "| 1/16 | 16 |  | 49.00 | 90.00 | -2.00 | -1.00 | 80.00 | 1 |",
        "| 1/16 | 16 | ✓ | 56.00 ± 1.00 | 93.00 ± 0.00 | +5.00 | +2.00 | 80.00 ± 0.00 | 3 |",
    ]
    assert (tmp_path / "table.md").read_text() == printed


# -----------------------------------------------------------------------------
# command line: end to end, and every bad input


@pytest.fixture(scope="module")
def checkpoint(synthetic, tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("run") / "best"
    tiny_model.save_pretrained(path)
    return path


def test_command_line_end_to_end_and_its_errors(checkpoint, tmp_path):
    run = checkpoint.parent
    cli = [sys.executable, str(REPO / "evaluate.py")]
    jobs = [subprocess.Popen(cli + args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for args in (["--checkpoint", str(checkpoint), "--data", "synthetic", "--max-videos", "1", "--chunk", "4",
                          "--device", "cpu"],
                         ["--checkpoint", str(tmp_path / "missing"), "--data", "synthetic"])]
    (ok_out, ok_err), (_, bad_err) = (job.communicate(timeout=300) for job in jobs)
    assert jobs[0].returncode == 0, ok_err
    saved = json.loads((run / "eval-val-first1.json").read_text())
    assert (saved["shift_div"], saved["match"], saved["causal"], saved["channels"]) == (8, True, False, "8")
    assert {"miou", "pixel_acc", "mvc8", "mvc16", "hidden_miou", "hidden_acc", "visible_miou", "visible_acc"} \
        <= set(saved["results"]) and saved["results"]["num_frames"] == 24
    assert (run / "eval-val-first1.md").read_text() in ok_out and "| mIoU | pix. acc. | mVC8 | mVC16 |" in ok_out
    assert jobs[1].returncode == 2
    assert bad_err.splitlines() == [f"error: --checkpoint {tmp_path / 'missing'}: no such folder"]  # no traceback


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
    (root / "settings" / "qshift.json").write_text("[1, 2")
    (root / "no-qshift").mkdir()
    qshift.build_model(qshift.tiny_config(3), 8, True).save_pretrained(root / "three-classes")
    (root / "corrupt-run").mkdir()
    (root / "corrupt-run" / "eval-val.json").write_text("{")
    return root


@pytest.mark.parametrize("args,message", [
    (["--checkpoint", "{bad}/missing", "--data", "synthetic"], "no such folder"),
    (["--checkpoint", "{bad}/no-qshift", "--data", "synthetic"], "not a qshift checkpoint"),
    (["--checkpoint", "{bad}/weights", "--data", "synthetic"], "cannot load"),
    (["--checkpoint", "{bad}/config", "--data", "synthetic"], "cannot load"),
    (["--checkpoint", "{bad}/settings", "--data", "synthetic"], "cannot load"),
    (["--checkpoint", "{bad}/three-classes", "--data", "synthetic"], "4 classes, but the checkpoint"),
    (["--checkpoint", "{good}", "--data", "synthetic", "--split", "bogus"], "unknown split"),
    (["--checkpoint", "{good}", "--data", "vspw", "--root", "{bad}/missing"], "no such dataset folder"),
    (["--checkpoint", "{good}", "--data", "synthetic", "--clip-len", "0"], "--clip-len 0: must be at least 1"),
    (["--checkpoint", "{good}", "--data", "imagenet"], "invalid choice"),
    (["--checkpoint", "{good}"], "--checkpoint needs --data"),
    (["--data", "synthetic"], "either --checkpoint"),
    (["--table", "{bad}/missing"], "no eval-val.json"),
    (["--table", "{bad}/corrupt-run"], "cannot read"),
    (["--table", "{bad}/corrupt-run", "--out", "{bad}/missing/table.md"], "--out"),
])
def test_bad_input_is_one_line_and_exit_status_2(args, message, bad_checkpoints, checkpoint, capfd):
    args = [a.format(bad=bad_checkpoints, good=checkpoint) for a in args]
    def files():
        return {(p, p.stat().st_mtime_ns) for root in (bad_checkpoints, checkpoint.parent) for p in root.rglob("*")}

    before = files()
    with pytest.raises(SystemExit) as exit_:
        main(args)
    out, err = capfd.readouterr()
    assert exit_.value.code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and message in err, err
    assert files() == before  # nothing written
