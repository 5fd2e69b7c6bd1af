"""qshift.py against hand-computed cases, brute force and Hugging Face's own MaskFormer."""
import itertools
import json
import re
from dataclasses import asdict

import numpy as np
import pytest
import torch
from transformers import Mask2FormerImageProcessor, MaskFormerImageProcessor
from transformers.models.maskformer.modeling_maskformer import MaskFormerForInstanceSegmentationOutput

from qshift import FAMILIES as FAMILY_CLASSES
from qshift import (QShiftSegmenter, SettingError, Settings, frames_to_pixel_values, match_queries,
                    semantic_segmentation, shift_queries, shift_with_reach, temporal_shift)
from streaming import predict_video, stream_logits
from tiny import build_model, tiny_config

# -----------------------------------------------------------------------------
# temporal_shift (Eq. 1)


@pytest.mark.parametrize("shift_div,channels", [(128, 2), (64, 4), (32, 8), (16, 16), (8, 32), (4, 64)])
def test_shift_moves_the_papers_channel_counts(shift_div, channels):
    # frame t holds the value t + 1 in every channel, so a channel's value says which frame it came from
    B, T, Q, C = 2, 5, 3, 256
    x = (torch.arange(T, dtype=torch.float) + 1).view(1, T, 1, 1).expand(B, T, Q, C).clone()
    y = temporal_shift(x, shift_div)
    h = channels // 2
    frame = y[0, :, 0]  # (T, C)
    for t in range(T):
        prev = t if t > 0 else 0  # frame t-1 holds value t; before the clip: zero
        nxt = t + 2 if t < T - 1 else 0
        assert torch.all(frame[t, :h] == prev)
        assert torch.all(frame[t, h:C - h] == t + 1)
        assert torch.all(frame[t, C - h:] == nxt)
    assert (y != x).any(-1).any() and y.shape == x.shape


def test_shift_is_identity_at_zero_and_works_on_any_middle_dims():
    x = torch.randn(2, 4, 3, 5, 8)
    assert temporal_shift(x, 0) is x
    y = temporal_shift(x, 4)  # 2 channels: channel 0 from t-1, channel 7 from t+1
    assert torch.equal(y[:, 1:, ..., 0], x[:, :-1, ..., 0]) and torch.all(y[:, 0, ..., 0] == 0)
    assert torch.equal(y[:, :-1, ..., 7], x[:, 1:, ..., 7]) and torch.all(y[:, -1, ..., 7] == 0)
    assert torch.equal(y[..., 1:7], x[..., 1:7])


def test_causal_shift_takes_every_shifted_channel_from_the_past():
    x = torch.randn(1, 4, 2, 16)
    y = temporal_shift(x, 8, causal=True)  # 2 channels, both from t-1
    assert torch.equal(y[:, 1:, :, :2], x[:, :-1, :, :2]) and torch.all(y[:, 0, :, :2] == 0)
    assert torch.equal(y[..., 2:], x[..., 2:])
    z = torch.randn(1, 3, 2, 48)
    assert torch.equal(temporal_shift(z, 16, causal=True)[:, 1:, :, :3], z[:, :-1, :, :3])  # 3 channels: odd is fine


@pytest.mark.parametrize("shift_div,causal",
                         [(-1, False), (3, False), (256, False), (256, True), (24, False), (32, False)])
def test_shift_rejects_invalid_fractions(shift_div, causal):
    channels = 96 if shift_div == 32 else 256  # 96 / 32 = 3 channels: odd, cannot be split between t-1 and t+1
    with pytest.raises(SettingError, match=rf"shift_div {shift_div}: 1/{shift_div} of the {channels} query "):
        temporal_shift(torch.randn(1, 2, 3, channels), shift_div, causal)


def test_shift_of_feature_maps_along_their_channel_dim_equals_the_channels_last_shift():
    x = torch.randn(2, 4, 8, 3, 5)  # (B, T, C, h, w)
    for causal in (False, True):
        expected = temporal_shift(x.movedim(2, -1), 4, causal).movedim(-1, 2)
        assert torch.equal(temporal_shift(x, 4, causal, dim=2), expected)


def frame_numbers(B, T, Q, C):
    """(B, T, Q, C) whose every channel of frame t holds t + 1: a shifted channel's value names its frame."""
    return (torch.arange(T, dtype=torch.float) + 1).view(1, T, 1, 1).expand(B, T, Q, C).clone()


def test_reach_splits_each_ways_channels_among_the_offsets():
    T, C = 9, 16
    y = temporal_shift(frame_numbers(1, T, 2, C), 2, reach=3)[0, :, 0]  # 4 channels each way: groups of 2, 1, 1
    came_from = [1, 1, 2, 3] + [None] * 8 + [-1, -1, -2, -3]  # channel c holds frame t - came_from[c]
    for t in range(T):
        for c, offset in enumerate(came_from):
            source = t if offset is None else t - offset
            assert y[t, c] == (source + 1 if 0 <= source < T else 0), (t, c)


def test_causal_reach_takes_every_shifted_channel_from_the_past():
    T = 6
    y = temporal_shift(frame_numbers(1, T, 1, 16), 4, causal=True, reach=3)[0, :, 0]  # 4 channels: groups 2, 1, 1
    for t in range(T):
        expected = [t - 1, t - 1, t - 2, t - 3] + [t] * 12
        assert y[t].tolist() == [s + 1 if s >= 0 else 0 for s in expected], t


@pytest.mark.parametrize("dim", [-1, 2])
@pytest.mark.parametrize("causal", [False, True])
def test_eq1s_slices_are_the_shift_with_reach_one_to_the_bit(dim, causal):
    """temporal_shift's TSM slices and shift_with_reach's concatenations, two codes of Eq. 1: the same values and
    gradients, bit for bit, in the same (contiguous) layout."""
    x = torch.randn(2, 5, 16, 3, 4, requires_grad=True).movedim(2, dim)  # channels at dim, 16 of them
    weights = torch.randn(x.shape)
    grads = []
    for shift in (temporal_shift(x, 4, causal, dim), shift_with_reach(x, 4, causal, dim, reach=1)):
        grads.append(torch.autograd.grad((shift * weights).sum(), x)[0])
        assert shift.is_contiguous()
    assert torch.equal(temporal_shift(x, 4, causal, dim), shift_with_reach(x, 4, causal, dim, reach=1))
    assert torch.equal(*grads)


def test_reach_moves_no_more_channels():
    x = torch.randn(2, 5, 3, 64)
    for causal in (False, True):
        changed = [(temporal_shift(x, 8, causal, reach=r) != x).any(0).any(0).any(0).sum().item() for r in (1, 2, 4)]
        assert changed == [8, 8, 8]  # the same 1/8 of the 64 channels, whatever the reach


@pytest.mark.parametrize("reach,causal,message", [
    (3, False, r"reach 3: 1/8 of the 32 query channels shifts 2 each way"),
    (5, True, r"reach 5: 1/8 of the 32 query channels shifts 4 from the past"),
    (0, False, r"reach 0: "), (1.5, False, r"reach 1.5: ")])
def test_reach_that_leaves_an_offset_without_a_channel_is_refused(reach, causal, message):
    with pytest.raises(ValueError, match=message):
        temporal_shift(torch.randn(1, 4, 2, 32), 8, causal, reach=reach)


@pytest.mark.parametrize("reach", [1, 2, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_frame_t_reads_exactly_the_frames_within_reach(reach, causal):
    T, t = 9, 4
    x = torch.randn(1, T, 2, 24, requires_grad=True)
    temporal_shift(x, 4, causal, reach=reach)[:, t].sum().backward()  # 6 channels: 3 each way or 6 from the past
    touched = x.grad[0].abs().flatten(1).sum(1) > 0  # (T,)
    assert touched.tolist() == [t - reach <= s <= (t if causal else t + reach) for s in range(T)]


def test_shift_passes_gradients_to_the_neighbours():
    x = torch.randn(1, 3, 2, 8, requires_grad=True)
    temporal_shift(x, 4)[:, 1].sum().backward()  # frame 1 reads channel 0 of frame 0 and channel 7 of frame 2
    g = x.grad[0, :, 0]
    assert g[0, 0] == 1 and g[0, 1:].abs().sum() == 0
    assert g[2, 7] == 1 and g[2, :7].abs().sum() == 0
    assert torch.all(g[1, 1:7] == 1) and g[1, 0] == 0 and g[1, 7] == 0


# -----------------------------------------------------------------------------
# match_queries (Eq. 2)


def test_matching_recovers_a_known_permutation_of_noisy_copies():
    torch.manual_seed(0)
    B, T, Q, C = 2, 8, 100, 64
    base = torch.randn(B, 1, Q, C)
    truth = torch.stack([torch.stack([torch.randperm(Q) if t else torch.arange(Q) for t in range(T)])
                         for _ in range(B)])
    q = torch.empty(B, T, Q, C)
    for b, t in itertools.product(range(B), range(T)):  # frame t stores segment i at slot truth[b, t, i]
        q[b, t, truth[b, t]] = base[b, 0] + 0.1 * torch.randn(Q, C)
    perm = match_queries(q)
    assert perm.dtype == torch.long and perm.shape == (B, T, Q)
    assert torch.equal(perm, truth)


def test_matching_is_optimal_against_brute_force():
    torch.manual_seed(1)
    q = torch.randn(1, 4, 5, 6)
    perm = match_queries(q)
    qn = torch.nn.functional.normalize(q, dim=-1)[0]
    for t in range(1, 4):
        sim = qn[t] @ qn[t - 1].T  # (Q, Q)
        best = max(sum(sim[i, s[i]] for i in range(5)) for s in itertools.permutations(range(5)))
        # queries perm[t, i] of frame t and perm[t-1, i] of frame t-1 are matched
        found = sum(sim[perm[0, t, i], perm[0, t - 1, i]] for i in range(5))
        assert torch.isclose(found, best, atol=1e-6)


def test_matching_of_one_frame_is_the_identity():
    assert torch.equal(match_queries(torch.randn(3, 1, 7, 4)), torch.arange(7).expand(3, 1, 7))


def test_matching_batched_equals_clip_by_clip():
    torch.manual_seed(2)
    q = torch.randn(3, 5, 20, 16)
    assert torch.equal(match_queries(q), torch.cat([match_queries(q[b:b + 1]) for b in range(3)]))


def test_shift_queries_shifts_matched_queries_and_restores_the_order():
    # frame 1 holds frame 0's queries in reverse order: after matching, each query receives its partner's channels
    C = 8
    q0 = torch.randn(4, C)
    q = torch.stack([q0, q0.flip(0)])[None]  # (1, 2, 4, C)
    y = shift_queries(q, 4, match=True)
    assert torch.equal(y[0, 1, :, 0], q0.flip(0)[:, 0])  # channel 0 of frame 1 comes from the same segment in frame 0
    assert torch.equal(y[0, 0, :, 7], q0[:, 7])  # and channel 7 of frame 0 from the same segment in frame 1
    unmatched = shift_queries(q, 4, match=False)
    assert torch.equal(unmatched[0, 1, :, 0], q0[:, 0])  # without matching: slot i gets slot i, another segment
    assert shift_queries(q, 0) is q


def test_shift_queries_can_match_by_other_features():
    # the queries themselves are unrelated across frames; match_on says frame 1's slots are frame 0's, reversed
    q = torch.randn(1, 2, 4, 8)
    masks = torch.randn(4, 30)
    y = shift_queries(q, 4, match_on=torch.stack([masks, masks.flip(0)])[None])
    assert torch.equal(y[0, 1, :, 0], q[0, 0].flip(0)[:, 0])
    assert torch.equal(y[0, 0, :, 7], q[0, 1].flip(0)[:, 7])


# -----------------------------------------------------------------------------
# QShiftSegmenter against the plain HF models, for every placement and both families

FAMILIES = ["maskformer", "mask2former"]
PLACEMENTS = [("queries",), ("pixels",), ("backbone",), ("queries", "pixels"), ("backbone", "queries"),
              ("backbone", "pixels"), ("backbone", "queries", "pixels")]


def tiny_model(shift_div=16, match=True, causal=False, num_labels=5, seed=0, family="maskformer", **settings):
    torch.manual_seed(seed)
    return build_model(tiny_config(num_labels, family=family), shift_div=shift_div, match=match, causal=causal,
                       **settings).eval()


def video(T=7, seed=0):
    """(T, 3, 64, 96) frames that change little from one to the next, as a video's do."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, 64, 96, generator=gen) + 0.1 * torch.randn(T, 3, 64, 96, generator=gen)


def targets(T, H=64, W=96):
    masks = [torch.zeros(2, H, W) for _ in range(T)]
    for t, m in enumerate(masks):
        m[0, :, :W // 2 + t], m[1, :, W // 2 + t:] = 1, 1
    return masks, [torch.tensor([1, 3]), torch.tensor([0, 2])] * (T // 2) + [torch.tensor([4, 2])] * (T % 2)


def test_queries_differ_in_eval_mode():
    model = tiny_model()
    with torch.no_grad():
        q, _, _ = model.decode(model.backbone(torch.randn(2, 3, 64, 96)))
    distance = torch.cdist(q[0], q[0])  # (Q, Q)
    assert distance[~torch.eye(q.shape[1], dtype=torch.bool)].min() > 0.1


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("match", [True, False])
def test_without_shift_it_is_the_hf_model_frame_by_frame(family, match):
    model = tiny_model(shift_div=0, match=match, family=family)
    model.model.config.use_auxiliary_loss = True  # the loss then covers every decoder layer's prediction
    x = torch.randn(2, 3, 3, 64, 96)
    masks, classes = targets(6)
    with torch.no_grad():
        torch.manual_seed(0)  # Mask2Former's loss samples points at random
        ours = model(x, masks, classes)
        torch.manual_seed(0)
        theirs = model.model(x.flatten(0, 1), mask_labels=masks, class_labels=classes,  # the plain HF model
                             output_hidden_states=True)  # HF's MaskFormer needs it for its auxiliary loss
    assert isinstance(ours, MaskFormerForInstanceSegmentationOutput)
    torch.testing.assert_close(ours.class_queries_logits, theirs.class_queries_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.masks_queries_logits, theirs.masks_queries_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shift_at", PLACEMENTS)
def test_every_placement_at_zero_is_the_image_model(family, shift_at):
    x = torch.randn(1, 3, 3, 64, 96)
    with torch.no_grad():
        plain = tiny_model(shift_div=0, family=family).model(x.flatten(0, 1))
        ours = tiny_model(shift_div=0, family=family, shift_at=shift_at)(x)
    torch.testing.assert_close(ours.masks_queries_logits, plain.masks_queries_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shift_at", PLACEMENTS)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("reach", [1, 2])
def test_frame_t_depends_on_frames_t_minus_n_to_t_plus_n(family, shift_at, causal, reach):
    # n = reach times the number of shifts in series: queries and pixels act side by side after the decoders;
    # backbone before
    n = reach * (2 if "backbone" in shift_at and len(shift_at) > 1 else 1)
    model = tiny_model(shift_div=4, causal=causal, family=family, shift_at=shift_at, reach=reach)
    T, t = 2 * n + 3, n + 1
    x = torch.randn(1, T, 3, 64, 96, requires_grad=True)
    model(x).masks_queries_logits[t].sum().backward()
    touched = x.grad[0].abs().flatten(1).sum(1) > 0  # (T,)
    assert touched.tolist() == [t - n <= s <= (t if causal else t + n) for s in range(T)]


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_is_finite_and_reaches_the_backbone(family):
    model = tiny_model(shift_div=16, family=family, shift_at=("queries", "pixels")).train()
    masks, classes = targets(2)
    out = model(torch.randn(1, 2, 3, 64, 96), mask_labels=masks, class_labels=classes)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    backbone = model.model.model.pixel_level_module.encoder
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_auxiliary_outputs_stay_unshifted(family):
    torch.manual_seed(0)
    config = tiny_config(5, family=family)
    config.use_auxiliary_loss = config.output_auxiliary_logits = True
    model = build_model(config, shift_div=4, shift_at=("queries", "pixels")).eval()
    x = torch.randn(1, 3, 3, 64, 96)
    with torch.no_grad():
        ours = model(x)
        plain = model.model(x.flatten(0, 1), output_hidden_states=True)  # HF's MaskFormer needs it for aux outputs
    assert len(ours.auxiliary_logits) == len(plain.auxiliary_logits) > 0
    for a, b in zip(ours.auxiliary_logits, plain.auxiliary_logits):
        torch.testing.assert_close(a["masks_queries_logits"], b["masks_queries_logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(a["class_queries_logits"], b["class_queries_logits"], atol=1e-5, rtol=0)
    assert not torch.allclose(ours.masks_queries_logits, plain.masks_queries_logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_matching_by_masks_pairs_the_unshifted_queries_predicted_masks(family):
    model = tiny_model(shift_div=4, family=family, match_by="masks")
    x = torch.randn(1, 4, 3, 64, 96)
    with torch.no_grad():
        out = model(x)
        q, e, _ = model.decode(model.backbone(x[0]))
        masks = model.heads(q, e)[1].sigmoid().flatten(2)[None]  # (1, T, Q, h*w)
        expected = model.heads(shift_queries(q[None], 4, match_on=masks)[0], e)
        by_queries = QShiftSegmenter(model.model, shift_div=4)(x)
    torch.testing.assert_close(out.masks_queries_logits, expected[1], atol=1e-5, rtol=0)
    assert not torch.allclose(out.masks_queries_logits, by_queries.masks_queries_logits)


def test_settings_keep_what_they_were_given_and_matching_runs_only_on_shifted_queries():
    assert asdict(tiny_model(shift_div=4, shift_at=("pixels", "queries")).settings) == \
        {"shift_div": 4, "match": True, "causal": False, "shift_at": ("pixels", "queries"), "match_by": "queries",
         "reach": 1}
    assert [Settings(**s).matches for s in ({}, {"shift_div": 0}, {"shift_at": ("pixels",)}, {"match": False})] == \
        [True, False, False, False]


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_round_trip(tmp_path, family):
    model = tiny_model(shift_div=8, match=True, causal=True, family=family, shift_at=("queries", "pixels"),
                       match_by="masks", reach=2)
    model.save_pretrained(tmp_path)
    loaded = QShiftSegmenter.from_pretrained(tmp_path).eval()
    assert type(loaded.model) is type(model.model) and loaded.settings == model.settings
    x = video(3)[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).masks_queries_logits, model(x).masks_queries_logits, atol=0, rtol=0)
    assert asdict(QShiftSegmenter.from_pretrained(tmp_path, shift_div=4, shift_at=("pixels",), reach=3).settings) == \
        {"shift_div": 4, "match": True, "causal": True, "shift_at": ("pixels",), "match_by": "masks", "reach": 3}


def test_save_pretrained_keeps_the_settings_in_config_json(tmp_path):
    model = tiny_model(shift_div=8, causal=True, shift_at=("queries", "pixels"))
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["qshift"] == \
        {"shift_div": 8, "match": True, "causal": True, "shift_at": ["queries", "pixels"], "match_by": "queries",
         "reach": 1}


@pytest.mark.parametrize("family", FAMILIES)
def test_load_a_plain_hf_directory_with_new_labels(tmp_path, family):
    torch.manual_seed(0)
    hf = tiny_model(num_labels=7, family=family).model
    hf.save_pretrained(tmp_path)
    names = {i: f"thing{i}" for i in range(3)}
    model = QShiftSegmenter.from_pretrained(tmp_path, num_labels=3, id2label=names).eval()
    assert model.settings == Settings() and asdict(Settings()) == {  # the paper's setting
        "shift_div": 16, "match": True, "causal": False, "shift_at": ("queries",), "match_by": "queries", "reach": 1}
    assert model.family == family and model.model.config.num_labels == 3 and model.model.config.id2label[2] == "thing2"
    assert model.model.class_predictor.out_features == 4
    backbone = next(k for k in hf.state_dict() if k.endswith("patch_embeddings.projection.weight"))
    assert torch.equal(model.model.state_dict()[backbone], hf.state_dict()[backbone])
    with torch.no_grad():
        assert model(torch.randn(1, 2, 3, 64, 96)).class_queries_logits.shape == (2, 20, 4)


@pytest.mark.parametrize("shift_at,message", [
    ("queries", "shift_div 128: 1/128 of the 64 query channels"),  # tiny_config's queries: C = 64
    ("pixels", "shift_div 32: 1/32 of the 32 pixel-embedding channels"),
    ("backbone", "shift_div 16: 1/16 of the 16 backbone feature-map channels")])  # the first of 16..128
def test_shift_a_placement_cannot_take_names_its_channels(shift_at, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        tiny_model(shift_div=int(message.split()[1].rstrip(":")), shift_at=(shift_at,))


def test_bad_settings_are_refused_naming_the_setting_and_carrying_it():
    for settings, message in [({"shift_at": ("decoder",)}, r"shift_at decoder: choose one or more of"),
                              ({"shift_at": ("queries", "queries")}, r"shift_at queries,queries: choose one"),
                              ({"shift_at": "queries"}, r"shift_at queries: must be a tuple of placements"),
                              ({"match_by": "boxes"}, r"match_by boxes: choose queries or masks"),
                              ({"shift_div": -8}, r"shift_div -8: must be a whole number of at least 0"),
                              ({"reach": 0}, r"reach 0: must be a whole number of at least 1")]:
        with pytest.raises(SettingError, match=message) as refused:
            Settings(**settings)
        name = next(iter(settings))
        shown = ",".join(settings[name]) if isinstance(settings[name], tuple) else settings[name]
        assert (refused.value.name, refused.value.value) == (name, shown)
    with pytest.raises(TypeError, match="unexpected keyword argument 'shift'"):
        Settings(shift=8)


# -----------------------------------------------------------------------------
# whole videos streamed in bounded memory, against one whole-clip run


def distinct_masks(model):
    """Give a random model's queries masks that differ, so that matching them is well posed.

    A random model predicts nearly the same mask for every query (cosine similarities within 1e-6 of each other),
    and 1e-7 of float noise between a chunk and the whole clip then flips the assignment. Re-drawing the mask MLP
    without biases separates Mask2Former's masks by 2e-3 or more; MaskFormer's random FPN gives near-uniform pixel
    embeddings, hence the masks case runs on Mask2Former only (the streaming code is the same for both families).
    """
    with torch.no_grad():
        for layer in FAMILY_CLASSES[model.family].mask_mlp(model.model).modules():
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, std=2 / layer.in_features ** 0.5)
                torch.nn.init.zeros_(layer.bias)


def whole_clip(model, frames):
    with torch.no_grad():
        out = model(frames[None])
    return out.class_queries_logits, out.masks_queries_logits


STREAMED = [(family, shift_at, "queries", 1) for family in FAMILIES for shift_at in PLACEMENTS[:5]] + \
    [("mask2former", shift_at, "masks", 1) for shift_at in PLACEMENTS[:5] if "queries" in shift_at] + \
    [("maskformer", shift_at, "queries", 2) for shift_at in PLACEMENTS[:5]] + \
    [("mask2former", ("queries",), "masks", 2)]  # masks: see distinct_masks


@pytest.mark.parametrize("family,shift_at,match_by,reach", STREAMED)
@pytest.mark.parametrize("causal", [False, True])
def test_streaming_equals_the_whole_clip(family, shift_at, match_by, reach, causal):
    model = tiny_model(shift_div=4, causal=causal, family=family, shift_at=shift_at, match_by=match_by, reach=reach)
    if match_by == "masks":
        distinct_masks(model)
    frames = video(7 if reach == 1 else 11)  # 11: the halos of two shifts in series, 2 frames each, and more
    ref_class, ref_mask = whole_clip(model, frames)
    for chunk in (1, 3):  # 1: online, one frame at a time; 3: chunks of 3, 3, 1 frames
        out = list(stream_logits(model, iter(frames), chunk))
        torch.testing.assert_close(torch.cat([c for c, _ in out]), ref_class, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.cat([m for _, m in out]), ref_mask, atol=1e-5, rtol=0)
    ref_maps = semantic_segmentation(ref_class, ref_mask, (64, 96))
    assert torch.equal(torch.stack(list(predict_video(model, iter(frames), chunk=3))), ref_maps)


def test_streaming_the_frame_by_frame_model_equals_the_whole_clip():
    model = tiny_model(shift_div=0)
    frames = video(5)
    ref_class, _ = whole_clip(model, frames)
    torch.testing.assert_close(torch.cat([c for c, _ in stream_logits(model, iter(frames), 2)]), ref_class,
                               atol=1e-5, rtol=0)


def test_clip_len_runs_independent_clips_with_zeros_at_their_ends():
    model = tiny_model(shift_div=8)
    frames = torch.randn(7, 3, 64, 96)
    ref = torch.cat([semantic_segmentation(*whole_clip(model, frames[i:i + 3]), (64, 96)) for i in (0, 3, 6)])
    got = torch.stack(list(predict_video(model, iter(frames), chunk=2, clip_len=3)))
    assert torch.equal(got, ref)
    assert not torch.equal(got, torch.stack(list(predict_video(model, iter(frames)))))  # the clip ends do matter


# -----------------------------------------------------------------------------
# semantic_segmentation against HF's post-processing


def random_logits(seed, frames):
    """Class logits (frames, 10, 6) and mask logits (frames, 10, 16, 24), and HF's output that holds them."""
    torch.manual_seed(seed)
    class_logits, mask_logits = torch.randn(frames, 10, 6), 3 * torch.randn(frames, 10, 16, 24)
    return class_logits, mask_logits, MaskFormerForInstanceSegmentationOutput(class_queries_logits=class_logits,
                                                                              masks_queries_logits=mask_logits)


def test_semantic_maps_equal_hf_post_processing():
    class_logits, mask_logits, output = random_logits(3, 3)
    processor = MaskFormerImageProcessor()
    theirs = processor.post_process_semantic_segmentation(output, target_sizes=[(64, 96)] * 3)
    ours = semantic_segmentation(class_logits, mask_logits, (64, 96))
    assert ours.dtype == torch.int64 and ours.shape == (3, 64, 96)
    assert torch.equal(ours, torch.stack(theirs))
    unresized = processor.post_process_semantic_segmentation(output)
    assert torch.equal(semantic_segmentation(class_logits, mask_logits), torch.stack(unresized))
    assert np.unique(ours.numpy()).size > 1


def test_semantic_maps_against_hf_mask2former_post_processing():
    # HF's Mask2Former post-processing first resizes the mask logits to 384x384; with that step added ours is theirs
    class_logits, mask_logits, output = random_logits(4, 2)
    theirs = torch.stack(Mask2FormerImageProcessor().post_process_semantic_segmentation(output, [(64, 96)] * 2))
    at_384 = torch.nn.functional.interpolate(mask_logits, size=(384, 384), mode="bilinear", align_corners=False)
    assert torch.equal(semantic_segmentation(class_logits, at_384, (64, 96)), theirs)
    differ = (semantic_segmentation(class_logits, mask_logits, (64, 96)) != theirs).float().mean()
    assert differ > 0  # without it the maps differ near class borders: 7.9% of these pixels (see docs/details.md)


def test_semantic_maps_stay_float32_under_autocast():
    torch.manual_seed(5)
    class_logits, mask_logits = torch.randn(2, 10, 6), 3 * torch.randn(2, 10, 16, 24)
    expected = semantic_segmentation(class_logits, mask_logits, (64, 96))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(semantic_segmentation(class_logits, mask_logits, (64, 96)), expected)


# -----------------------------------------------------------------------------
# the input: uint8 frames -> pixel_values


def test_frames_to_pixel_values_normalises_as_hfs_image_processor_from_numpy_tensors_and_pil():
    from PIL import Image
    frames = np.random.default_rng(0).integers(0, 256, (3, 10, 14, 3), dtype=np.uint8)  # (T, H, W, 3)
    ours = frames_to_pixel_values(frames)
    assert ours.shape == (3, 3, 10, 14) and ours.dtype == torch.float32
    theirs = MaskFormerImageProcessor(do_resize=False)(list(frames), return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert torch.equal(frames_to_pixel_values(torch.from_numpy(frames)), ours)
    assert torch.equal(frames_to_pixel_values([Image.fromarray(f) for f in frames]), ours)
    grey = [Image.fromarray(f[..., 0]) for f in frames]  # any PIL mode is taken as RGB
    assert torch.equal(frames_to_pixel_values(grey), frames_to_pixel_values(np.repeat(frames[..., :1], 3, -1)))
    with pytest.raises(ValueError, match=r"uint8 RGB of shape \(T, H, W, 3\), not torch.float32"):
        frames_to_pixel_values(frames.astype(np.float32))
    with pytest.raises(ValueError, match=r"not torch.uint8 \(3, 3, 10, 14\)"):
        frames_to_pixel_values(frames.transpose(0, 3, 1, 2))  # channels first
