"""
Shift and matching queries for video semantic segmentation (Mizuno and Tamaki), in one file.

A query-based image segmenter (MaskFormer) decodes Q mask queries per frame; each decoded query stands for one
segment and feeds the class and mask heads (Sec. 3.1). To make the image model see time, we shift a few query
channels to the neighbouring frames, as TSM does for CNN features (Sec. 3.2, Eq. 1). Query i of frame t need not
describe the same segment as query i of frame t-1, so before shifting we match each frame's queries to the previous
frame's by cosine similarity and the Hungarian algorithm (Sec. 3.3, Eq. 2). The pretrained weights are reused as
they are: with the shift off, QShiftMaskFormer is exactly the image model run frame by frame.

    pixel_values (B, T, 3, H, W) -> MaskFormer per frame -> queries (B*T, Q, C)
        -> shift_queries: match_queries, temporal_shift, un-permute -> class and mask heads -> (B*T, Q, ...) logits

Copy this file into your project; it needs torch, scipy and transformers.
"""
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from transformers import DetrConfig, MaskFormerConfig, MaskFormerForInstanceSegmentation, SwinConfig
from transformers.models.maskformer.modeling_maskformer import MaskFormerForInstanceSegmentationOutput

# MaskFormer saves its Swin backbone's config as its own type "maskformer-swin", then warns on loading it back that this
# type is not among the backbones it supports ("resnet", "swin"; the message, copied from Mask2Former, names that
# model): harmless, and silenced here, this one message only.
logging.getLogger("transformers.models.maskformer.configuration_maskformer").addFilter(
    lambda record: not record.getMessage().startswith("Backbone maskformer-swin is not a supported model"))

# -----------------------------------------------------------------------------
# Sec. 3.2: feature shift


def check_shift_div(channels, shift_div, causal=False):
    """Raise ValueError unless 1/shift_div of `channels` is a valid shift (Eq. 1); shift_div 0 means no shift."""
    if shift_div == 0:
        return
    if shift_div < 0 or channels % shift_div or channels // shift_div < 2:
        raise ValueError(f"--shift {shift_div}: 1/{shift_div} of {channels} query channels must be a whole number "
                         f"of at least 2 channels (shift_div must be 0 or a divisor of {channels} up to {channels // 2})")
    if not causal and (channels // shift_div) % 2:
        raise ValueError(f"--shift {shift_div}: shifts {channels // shift_div} of {channels} channels, an odd number "
                         f"that cannot be split evenly between the previous and the next frame")


def temporal_shift(x, shift_div, causal=False):
    """Shift 1/shift_div of the channels of x along time (Eq. 1, TSM).

    x: (B, T, ..., C), time at dim 1, channels last. With n = C // shift_div, frame t takes channels [0, n/2) from
    frame t-1 and channels [C - n/2, C) from frame t+1; the rest stay; neighbours outside the clip give zeros.
    causal=True (online, no look-ahead): all n shifted channels come from frame t-1. shift_div=0 returns x.
    Returns a new tensor of x's shape; differentiable.
    """
    if shift_div == 0:
        return x
    C = x.shape[-1]
    check_shift_div(C, shift_div, causal)
    n = C // shift_div
    if causal:
        from_prev = F.pad(x[:, :-1, ..., :n], [0, 0] * (x.dim() - 2) + [1, 0])  # zeros for frame 0
        return torch.cat([from_prev, x[..., n:]], dim=-1)
    h = n // 2
    pad = [0, 0] * (x.dim() - 2)  # F.pad pads the last dims first; only dim 1 (time) gets padding
    from_prev = F.pad(x[:, :-1, ..., :h], pad + [1, 0])  # (B, T, ..., h), frame t <- t-1
    from_next = F.pad(x[:, 1:, ..., C - h:], pad + [0, 1])  # (B, T, ..., h), frame t <- t+1
    return torch.cat([from_prev, x[..., h:C - h], from_next], dim=-1)


# -----------------------------------------------------------------------------
# Sec. 3.3: query matching


@torch.no_grad()
def match_queries(q):
    """Find, for every frame, the order of its queries that lines them up with frame 0's (Eq. 2).

    Each adjacent pair (t-1, t) is matched by the permutation that maximises the summed cosine similarity of
    matched queries (Hungarian algorithm); chaining the pairs puts every frame into frame 0's order, so that
    q[b, t, perm[b, t, i]] and q[b, t-1, perm[b, t-1, i]] are matched for every i.

    q: (B, T, Q, C). Returns perm: LongTensor (B, T, Q) on q's device, perm[:, 0] = arange(Q).
    All (B, T-1) similarity matrices are computed at once on q's device, then moved to the CPU in one transfer.
    """
    B, T, Q, _ = q.shape
    qn = F.normalize(q.float(), dim=-1)
    sim = (qn[:, 1:] @ qn[:, :-1].transpose(-1, -2)).cpu().numpy()  # (B, T-1, Q, Q): [t-1, i, j] = cos(q_t,i, q_t-1,j)
    perm = np.empty((B, T, Q), dtype=np.int64)
    perm[:, 0] = np.arange(Q)
    for b in range(B):
        for t in range(1, T):
            rows, cols = linear_sum_assignment(sim[b, t - 1], maximize=True)  # query rows[i] of t ~ cols[i] of t-1
            partner = np.empty(Q, dtype=np.int64)
            partner[cols] = rows  # partner[j]: the query of frame t matched to query j of frame t-1
            perm[b, t] = partner[perm[b, t - 1]]
    return torch.from_numpy(perm).to(q.device)


def shift_queries(q, shift_div, match=True, causal=False):
    """Shift 1/shift_div of the decoded query channels in time, after matching the queries across frames.

    q: (B, T, Q, C) decoded queries of B clips of T frames. Returns (B, T, Q, C), every frame's queries in their
    original order, so the heads see the usual layout. shift_div=0 returns q: the frame-by-frame model.
    Frame t's result depends on frames t-1, t, t+1 only (t-1, t when causal).
    """
    if shift_div == 0:
        return q
    if not match:
        return temporal_shift(q, shift_div, causal)
    perm = match_queries(q)[..., None].expand_as(q)  # (B, T, Q, C)
    unperm = perm.argsort(dim=2)  # the inverse permutation, to put the queries back
    aligned = q.gather(2, perm)  # (B, T, Q, C), query i of every frame stands for the same segment
    return temporal_shift(aligned, shift_div, causal).gather(2, unperm)


# -----------------------------------------------------------------------------
# Sec. 3.1 and 4.2: MaskFormer with shifted queries


class QShiftMaskFormer(nn.Module):
    """A Hugging Face MaskFormerForInstanceSegmentation run on every frame of a clip, with shifted decoded queries.

    The image model is kept whole as `.model`; only its decoded queries are shifted (and matched) before its own
    class_predictor and mask_embedder. shift_div=0 is the frame-by-frame image model. With the config's
    use_auxiliary_loss, the auxiliary outputs of the earlier decoder layers stay unshifted, as in the paper,
    which shifts only the final decoded queries.
    """

    def __init__(self, model, shift_div=16, match=True, causal=False):
        super().__init__()
        check_shift_div(model.config.decoder_config.d_model, shift_div, causal)
        self.model = model
        self.shift_div, self.match, self.causal = shift_div, match, causal

    def decode_frames(self, pixel_values):
        """Image model up to the heads. pixel_values (N, 3, H, W) -> queries (N, Q, C), pixel_embeddings (N, C', H/4, W/4)."""
        out = self.model.model(pixel_values, return_dict=True)
        return out.transformer_decoder_last_hidden_state, out.pixel_decoder_last_hidden_state

    def heads(self, queries, pixel_embeddings):
        """MaskFormer's heads (Sec. 3.1). queries (N, Q, C) -> class_logits (N, Q, L+1), mask_logits (N, Q, H/4, W/4)."""
        class_logits = self.model.class_predictor(queries)
        mask_embeddings = self.model.mask_embedder(queries)  # (N, Q, C')
        return class_logits, torch.einsum("nqc,nchw->nqhw", mask_embeddings, pixel_embeddings)

    def forward(self, pixel_values, mask_labels=None, class_labels=None):
        """pixel_values (B, T, 3, H, W); mask_labels, class_labels: HF's lists of B*T target tensors (optional).

        Returns HF's MaskFormerForInstanceSegmentationOutput for the B*T frames, with the model's own loss when
        labels are given.
        """
        B, T = pixel_values.shape[:2]
        aux = self.model.config.use_auxiliary_loss
        out = self.model.model(pixel_values.flatten(0, 1), output_hidden_states=aux, return_dict=True)
        queries = out.transformer_decoder_last_hidden_state.unflatten(0, (B, T))  # (B, T, Q, C)
        queries = shift_queries(queries, self.shift_div, self.match, self.causal).flatten(0, 1)  # (B*T, Q, C)
        class_logits, mask_logits = self.heads(queries, out.pixel_decoder_last_hidden_state)
        auxiliary_logits = []
        if aux:  # the earlier decoder layers, unshifted (HF's own get_logits uses all but the last hidden state)
            for hidden in out.transformer_decoder_hidden_states[:-1]:
                c, m = self.heads(hidden, out.pixel_decoder_last_hidden_state)
                auxiliary_logits.append({"class_queries_logits": c, "masks_queries_logits": m})
        loss = None
        if mask_labels is not None and class_labels is not None:
            loss_dict = self.model.get_loss_dict(mask_logits, class_logits, mask_labels, class_labels, auxiliary_logits)
            loss = self.model.get_loss(loss_dict)
        return MaskFormerForInstanceSegmentationOutput(
            loss=loss, class_queries_logits=class_logits, masks_queries_logits=mask_logits,
            auxiliary_logits=auxiliary_logits if self.model.config.output_auxiliary_logits else None,
            encoder_last_hidden_state=out.encoder_last_hidden_state,
            pixel_decoder_last_hidden_state=out.pixel_decoder_last_hidden_state,
            transformer_decoder_last_hidden_state=queries)

    def settings(self):
        return {"shift_div": self.shift_div, "match": self.match, "causal": self.causal}

    def save_pretrained(self, directory):
        """Write the HF model (config + safetensors) and the qshift settings (qshift.json) to `directory`."""
        self.model.save_pretrained(directory)
        (Path(directory) / "qshift.json").write_text(json.dumps(self.settings(), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, name_or_path, num_labels=None, id2label=None, shift_div=None, match=None, causal=None,
                        **kwargs):
        """Load an HF MaskFormer (hub id or local directory) or a directory written by save_pretrained.

        num_labels different from the checkpoint's replaces the class head (e.g. ADE20K's 150 -> VSPW's 124).
        Settings given here win over saved ones; unset ones default to shift_div=16, match=True, causal=False,
        so an image checkpoint is fine-tuned with the shift on, as in the paper (Sec. 4.2.1).
        """
        saved = {"shift_div": 16, "match": True, "causal": False}
        settings_file = Path(name_or_path) / "qshift.json"
        if settings_file.is_file():
            saved.update(json.loads(settings_file.read_text()))
        hub_kwargs = {k: v for k, v in kwargs.items() if k in ("cache_dir", "revision", "local_files_only", "token")}
        try:
            config = MaskFormerConfig.from_pretrained(name_or_path, **hub_kwargs)
            if num_labels is not None and num_labels != config.num_labels:
                config.num_labels = num_labels
                config.id2label = id2label or {i: f"class_{i}" for i in range(num_labels)}
                kwargs["ignore_mismatched_sizes"] = True  # a new class head for the new labels
            elif id2label is not None:
                config.id2label = id2label
            if id2label is not None or "ignore_mismatched_sizes" in kwargs:
                config.label2id = {name: i for i, name in config.id2label.items()}
            model = MaskFormerForInstanceSegmentation.from_pretrained(name_or_path, config=config, **kwargs)
        except OSError as e:
            raise OSError(f"cannot load MaskFormer '{name_or_path}': it is not a local model directory and not in "
                          f"the Hugging Face cache; download it on a connected machine (`hf download {name_or_path}`) "
                          f"and copy the cache, or pass a local directory ({str(e).splitlines()[0]})") from None
        pick = lambda given, key: saved[key] if given is None else given  # noqa: E731
        return cls(model, pick(shift_div, "shift_div"), pick(match, "match"), pick(causal, "causal"))


# -----------------------------------------------------------------------------
# Semantic maps (MaskFormer's semantic inference) and small models for tests and the synthetic demo


def semantic_segmentation(class_logits, mask_logits, size=None):
    """Per-pixel classes from mask classification (MaskFormer's semantic inference).

    class_logits (N, Q, L+1), mask_logits (N, Q, h, w) -> (N, H, W) int64 for size=(H, W) (None keeps (h, w)):
    sum over queries of p(class) without the null class times sigmoid(mask), bilinear to size, argmax.
    """
    probs = class_logits.softmax(-1)[..., :-1]  # (N, Q, L)
    scores = torch.einsum("nql,nqhw->nlhw", probs, mask_logits.sigmoid())  # (N, L, h, w)
    if size is not None and tuple(size) != tuple(scores.shape[-2:]):
        scores = F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)
    return scores.argmax(1)


def tiny_config(num_labels, hidden_size=64, num_queries=20, embed_dim=16, decoder_layers=2, mask_feature_size=32,
                image_size=64, id2label=None):
    """A small MaskFormer config (Swin backbone, DETR decoder) that builds offline in well under a second.

    hidden_size is the query dimension C (the shift's channels); the paper's models have C = 256.
    """
    id2label = id2label or {i: f"class_{i}" for i in range(num_labels)}
    backbone = SwinConfig(image_size=image_size, patch_size=4, embed_dim=embed_dim, depths=[1, 1, 1, 1],
                          num_heads=[1, 2, 2, 4], window_size=4, drop_path_rate=0.0,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    decoder = DetrConfig(d_model=hidden_size, decoder_layers=decoder_layers, decoder_attention_heads=4,
                         decoder_ffn_dim=2 * hidden_size, encoder_layers=1, encoder_attention_heads=4,
                         encoder_ffn_dim=2 * hidden_size, num_queries=num_queries, dropout=0.0)
    return MaskFormerConfig(backbone_config=backbone, decoder_config=decoder, fpn_feature_size=mask_feature_size,
                            mask_feature_size=mask_feature_size, num_labels=num_labels,
                            id2label=id2label, label2id={name: i for i, name in id2label.items()})


def build_model(config, shift_div=16, match=True, causal=False):
    """A randomly initialised QShiftMaskFormer from an HF MaskFormerConfig.

    The learned query embeddings are drawn from N(0, 1), as in DETR: with HF's default std of 0.02 the queries of a
    model trained from scratch stay nearly identical and every pixel ends up with one class.
    """
    model = MaskFormerForInstanceSegmentation(config)
    nn.init.normal_(model.model.transformer_module.queries_embedder.weight, std=1.0)
    return QShiftMaskFormer(model, shift_div, match, causal)
