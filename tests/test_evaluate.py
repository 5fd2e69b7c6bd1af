"""evaluate.py: metrics on hand-computed cases and brute force, streaming inference against whole-clip runs, the
saved predictions, pictures and table, the command line end to end, and every bad-input error."""
import math

import numpy as np
import pytest
import torch

import qshift
from evaluate import SegMetrics, predict_video, stream_logits, video_consistency

# -----------------------------------------------------------------------------
# SegMetrics


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
    lab, prd = label.numpy().ravel(), pred.numpy().ravel()
    valid = lab != 255
    ious = []
    for c in range(C):
        gt, pr = (lab == c) & valid, (prd == c) & valid
        ious.append((gt & pr).sum() / (gt | pr).sum() if gt.any() else np.nan)
    assert np.allclose(r["iou"], ious, equal_nan=True) and math.isnan(r["iou"][C - 1])
    assert r["miou"] == pytest.approx(np.nanmean(ious))
    assert r["pixel_acc"] == pytest.approx((lab == prd)[valid].mean())


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


# -----------------------------------------------------------------------------
# streaming inference


def whole_clip(model, frames):
    """Reference: the model's forward on the clip as one batch of one clip."""
    with torch.no_grad():
        out = model(frames[None])
    return out.class_queries_logits, out.masks_queries_logits


@pytest.mark.parametrize("shift_div,match,causal", [(8, True, False), (8, True, True), (16, False, False), (0, False, False)])
def test_streaming_equals_the_whole_clip(shift_div, match, causal):
    torch.manual_seed(0)
    model = qshift.build_model(qshift.tiny_config(5), shift_div, match, causal).eval()
    frames = torch.randn(7, 3, 64, 96)
    ref_class, ref_mask = whole_clip(model, frames)
    ref_maps = qshift.semantic_segmentation(ref_class, ref_mask, (64, 96))
    for chunk in (1, 3, 8):  # chunk 1: online, one frame decoded at a time
        out = list(stream_logits(model, iter(frames), chunk))
        assert torch.allclose(torch.cat([c for c, _ in out]), ref_class, atol=1e-5)
        assert torch.allclose(torch.cat([m for _, m in out]), ref_mask, atol=1e-5)
        assert torch.equal(torch.stack(list(predict_video(model, iter(frames), chunk))), ref_maps)


def test_clip_len_runs_independent_clips_with_zeros_at_their_ends():
    torch.manual_seed(0)
    model = qshift.build_model(qshift.tiny_config(5), 8, True).eval()
    frames = torch.randn(7, 3, 64, 96)
    ref = torch.cat([qshift.semantic_segmentation(*whole_clip(model, frames[i:i + 3]), (64, 96)) for i in (0, 3, 6)])
    got = torch.stack(list(predict_video(model, iter(frames), chunk=2, clip_len=3)))
    assert torch.equal(got, ref)
    assert not torch.equal(got, torch.stack(list(predict_video(model, iter(frames)))))  # the clip ends do matter
