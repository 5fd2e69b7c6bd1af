"""qshift.py against hand-computed cases, brute force and Hugging Face's own MaskFormer."""
import itertools

import numpy as np
import pytest
import torch
from transformers import MaskFormerForInstanceSegmentation, MaskFormerImageProcessor
from transformers.models.maskformer.modeling_maskformer import MaskFormerForInstanceSegmentationOutput

from qshift import (QShiftMaskFormer, build_model, match_queries, semantic_segmentation, shift_queries,
                    temporal_shift, tiny_config)

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


@pytest.mark.parametrize("shift_div,causal", [(-1, False), (3, False), (256, False), (256, True), (24, False), (32, False)])
def test_shift_rejects_invalid_fractions(shift_div, causal):
    channels = 96 if shift_div == 32 else 256  # 96 / 32 = 3 channels: odd, cannot be split between t-1 and t+1
    with pytest.raises(ValueError, match=f"--shift {shift_div}"):
        temporal_shift(torch.randn(1, 2, 3, channels), shift_div, causal)


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
    truth = torch.stack([torch.stack([torch.randperm(Q) if t else torch.arange(Q) for t in range(T)]) for _ in range(B)])
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


# -----------------------------------------------------------------------------
# QShiftMaskFormer against the plain HF model


def tiny_model(shift_div=16, match=True, causal=False, num_labels=5, seed=0):
    torch.manual_seed(seed)
    return build_model(tiny_config(num_labels), shift_div, match, causal).eval()


def test_queries_differ_in_eval_mode():
    model = tiny_model()
    with torch.no_grad():
        q, _ = model.decode_frames(torch.randn(2, 3, 64, 96))
    distance = torch.cdist(q[0], q[0])  # (Q, Q)
    assert distance[~torch.eye(q.shape[1], dtype=torch.bool)].min() > 0.1


@pytest.mark.parametrize("match", [True, False])
def test_without_shift_it_is_the_hf_model_frame_by_frame(match):
    model = tiny_model(shift_div=0, match=match)
    x = torch.randn(2, 3, 3, 64, 96)
    with torch.no_grad():
        ours = model(x)
        theirs = model.model(x.flatten(0, 1))  # the plain HF MaskFormerForInstanceSegmentation
    assert isinstance(ours, MaskFormerForInstanceSegmentationOutput)
    torch.testing.assert_close(ours.class_queries_logits, theirs.class_queries_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.masks_queries_logits, theirs.masks_queries_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_frame_t_depends_on_its_neighbours_only(causal):
    model = tiny_model(shift_div=8, causal=causal)
    T = 5
    x = torch.randn(1, T, 3, 64, 96, requires_grad=True)
    out = model(x)
    out.masks_queries_logits[2].sum().backward()  # frame 2 of the clip
    touched = x.grad[0].abs().flatten(1).sum(1) > 0  # (T,)
    expected = [False, True, True, not causal, False]
    assert touched.tolist() == expected


def test_loss_is_finite_and_reaches_the_backbone():
    model = tiny_model(shift_div=16).train()
    x = torch.randn(1, 2, 3, 64, 96)
    masks = [torch.zeros(2, 64, 96) for _ in range(2)]
    for m in masks:
        m[0, :32], m[1, 32:] = 1, 1
    classes = [torch.tensor([1, 3]), torch.tensor([0, 2])]
    out = model(x, mask_labels=masks, class_labels=classes)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    backbone = model.model.model.pixel_level_module.encoder
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())


def test_auxiliary_outputs_stay_unshifted():
    torch.manual_seed(0)
    config = tiny_config(5)
    config.use_auxiliary_loss = config.output_auxiliary_logits = True
    model = build_model(config, shift_div=4).eval()
    x = torch.randn(1, 3, 3, 64, 96)
    with torch.no_grad():
        ours = model(x)
        plain = QShiftMaskFormer(model.model, shift_div=0)(x)
    assert len(ours.auxiliary_logits) == len(plain.auxiliary_logits) > 0
    for a, b in zip(ours.auxiliary_logits, plain.auxiliary_logits):
        torch.testing.assert_close(a["masks_queries_logits"], b["masks_queries_logits"])
    assert not torch.allclose(ours.masks_queries_logits, plain.masks_queries_logits)


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model(shift_div=8, match=False, causal=True)
    model.save_pretrained(tmp_path)
    loaded = QShiftMaskFormer.from_pretrained(tmp_path).eval()
    assert (loaded.shift_div, loaded.match, loaded.causal) == (8, False, True)
    x = torch.randn(1, 3, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).masks_queries_logits, model(x).masks_queries_logits, atol=0, rtol=0)
    assert QShiftMaskFormer.from_pretrained(tmp_path, shift_div=4, match=True).settings() == \
        {"shift_div": 4, "match": True, "causal": True}  # arguments win, the rest comes from the save


def test_load_a_plain_hf_directory_with_new_labels(tmp_path):
    torch.manual_seed(0)
    hf = MaskFormerForInstanceSegmentation(tiny_config(7))
    hf.save_pretrained(tmp_path)
    names = {i: f"thing{i}" for i in range(3)}
    model = QShiftMaskFormer.from_pretrained(tmp_path, num_labels=3, id2label=names).eval()
    assert model.settings() == {"shift_div": 16, "match": True, "causal": False}
    assert model.model.config.num_labels == 3 and model.model.config.id2label[2] == "thing2"
    assert model.model.class_predictor.out_features == 4
    backbone_weight = "model.pixel_level_module.encoder.model.embeddings.patch_embeddings.projection.weight"
    assert torch.equal(model.model.state_dict()[backbone_weight], hf.state_dict()[backbone_weight])
    with torch.no_grad():
        assert model(torch.randn(1, 2, 3, 64, 96)).class_queries_logits.shape == (2, 20, 4)


def test_missing_checkpoint_says_how_to_get_it(tmp_path):
    with pytest.raises(OSError, match="download it on a connected machine") as e:
        QShiftMaskFormer.from_pretrained("facebook/no-such-maskformer-here")
    assert "\n" not in str(e.value)
    with pytest.raises(OSError, match="pass a local directory"):
        QShiftMaskFormer.from_pretrained(tmp_path / "missing")


def test_shift_the_model_cannot_take_is_refused():
    with pytest.raises(ValueError, match="--shift 128"):
        tiny_model(shift_div=128)  # 64 query channels: 1/128 is no whole channel


# -----------------------------------------------------------------------------
# semantic_segmentation against HF's post-processing


def test_semantic_maps_equal_hf_post_processing():
    torch.manual_seed(3)
    class_logits = torch.randn(3, 10, 6)
    mask_logits = 3 * torch.randn(3, 10, 16, 24)
    output = MaskFormerForInstanceSegmentationOutput(class_queries_logits=class_logits, masks_queries_logits=mask_logits)
    processor = MaskFormerImageProcessor()
    theirs = processor.post_process_semantic_segmentation(output, target_sizes=[(64, 96)] * 3)
    ours = semantic_segmentation(class_logits, mask_logits, (64, 96))
    assert ours.dtype == torch.int64 and ours.shape == (3, 64, 96)
    assert torch.equal(ours, torch.stack(theirs))
    unresized = processor.post_process_semantic_segmentation(output)
    assert torch.equal(semantic_segmentation(class_logits, mask_logits), torch.stack(unresized))
    assert np.unique(ours.numpy()).size > 1
