# SPDX-License-Identifier: MIT
# Copyright (c) 2026 the qshift authors. MIT licence (LICENSE): copies keep these two lines.
"""
Shift and matching queries for video semantic segmentation (Mizuno and Tamaki), in one file.

A query-based image segmenter (MaskFormer or Mask2Former) decodes Q mask queries per frame, each standing for one
segment, which feed the class and mask heads (Sec. 3.1). To make the image model see time, a few query channels are
shifted to the neighbouring frames, as TSM does for CNN features (Sec. 3.2, Eq. 1); as query i of frame t need not be
the segment of query i of frame t-1, each frame's queries are first matched to the previous frame's by cosine
similarity and the Hungarian algorithm (Sec. 3.3, Eq. 2). The pretrained weights are reused as they are: with the
shift off, QShiftSegmenter is exactly the image model run frame by frame. Copy this file into your project (it needs
torch, scipy and transformers). `shift_at` picks where a shift acts; the last three lines are its use in short:

    pixel_values (B, T, 3, H, W) -> backbone per frame -> feature maps          <- "backbone": every feature map
        -> pixel decoder, transformer decoder -> queries (B*T, Q, C)           <- "queries": match, shift (the paper)
                                              -> pixel embeddings (B*T, C', H/4, W/4)  <- "pixels"
        -> class and mask heads -> class logits (B*T, Q, L+1), mask logits (B*T, Q, H/4, W/4)

    model = QShiftSegmenter.from_pretrained("RUN/best" or a hub id).eval()   # settings from config.json's "qshift"
    out = model(frames_to_pixel_values(frames)[None])     # uint8 (T, H, W, 3) -> HF's output for the T frames
    maps = semantic_segmentation(out.class_queries_logits, out.masks_queries_logits, (H, W))  # (T, H, W) class ids

Whole videos of any length, in memory bounded by a few frames and exactly as one clip: streaming.py, beside this file.
"""
import logging
from collections import namedtuple
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from transformers import AutoConfig, Mask2FormerForUniversalSegmentation, MaskFormerForInstanceSegmentation
from transformers.models.maskformer.modeling_maskformer import MaskFormerForInstanceSegmentationOutput

# MaskFormer saves its Swin backbone as type "maskformer-swin", then warns on loading it that this type is unsupported:
# harmless, and silenced here, this one message only.
logging.getLogger("transformers.models.maskformer.configuration_maskformer").addFilter(
    lambda record: not record.getMessage().startswith("Backbone maskformer-swin is not a supported model"))

# -----------------------------------------------------------------------------
# The input: frames normalised as MaskFormer's image processor does, as in training (data.py uses these)

MEAN = (0.485, 0.456, 0.406)  # ImageNet's, per RGB channel, of pixel values in [0, 1]
STD = (0.229, 0.224, 0.225)


def frames_to_pixel_values(frames):
    """uint8 RGB frames (T, H, W, 3), numpy, a tensor on any device or T PIL images -> pixel_values float32
    (T, 3, H, W) on their device, normalised as in training: (x / 255 - MEAN) / STD. No resizing: any size works."""
    if isinstance(frames, (list, tuple)):
        frames = np.stack([np.asarray(f.convert("RGB") if hasattr(f, "convert") else f) for f in frames])
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 RGB of shape (T, H, W, 3), not {frames.dtype} {tuple(frames.shape)}")
    mean255, std255 = (torch.tensor(v, device=frames.device).view(3, 1, 1) * 255 for v in (MEAN, STD))
    return frames.permute(0, 3, 1, 2).float().sub_(mean255).div_(std255)  # (T, 3, H, W)


def to_device(x, device):
    """Copy tensor x to device without making the host wait: a dense CPU tensor bound for a GPU goes through
    page-locked (pinned) memory, whose copy runs in the background; only those can be pinned, and any other tensor
    moves as it is (to the CPU blocking, since the host reads it next)."""
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu" and x.layout == torch.strided:
        x = x.pin_memory()  # no copy if it is pinned already (a DataLoader's pin_memory, evaluate's reader)
    return x.to(device, non_blocking=device.type != "cpu")

# -----------------------------------------------------------------------------
# Sec. 3.2: feature shift


def check_shift_div(channels, shift_div, causal=False, what="query", reach=1):
    """Raise SettingError unless 1/shift_div of `channels` is a valid shift (Eq. 1) of the given reach (0: none)."""
    if shift_div == 0:
        return
    if shift_div < 0 or channels % shift_div or channels // shift_div < 2:
        raise SettingError("shift_div", shift_div, f"1/{shift_div} of the {channels} {what} channels must be a "
                           f"whole number of at least 2 channels")
    n = channels // shift_div
    if not causal and n % 2:
        raise SettingError("shift_div", shift_div, f"1/{shift_div} of the {channels} {what} channels is {n}, an odd "
                           f"number that cannot be split evenly between the previous and the next frame")
    per_way = n if causal else n // 2
    if type(reach) is not int or not 1 <= reach <= per_way:
        raise SettingError("reach", reach, f"1/{shift_div} of the {channels} {what} channels shifts {per_way} "
                           f"{'from the past' if causal else 'each way'}, which cannot give each of {reach} frame "
                           f"offsets a channel (reach must be 1..{per_way})")


def temporal_shift(x, shift_div, causal=False, dim=-1, reach=1):
    """Shift 1/shift_div of the channels of x along time (Eq. 1), as TSM does.

    x: (B, T, ...), time at dim 1, channels at `dim` (last: queries (B, T, Q, C); 2: maps (B, T, C, h, w)). With
    n = C // shift_div, frame t takes channels [0, n/2) from frame t-1 and [C - n/2, C) from frame t+1, zeros outside
    the clip; causal (online): all n from frame t-1. shift_div is the total fraction, as in the paper (TSM's
    fold_div 8 is shift_div 4); 0 returns x. reach > 1 goes beyond the paper (shift_with_reach). Returns a new
    tensor of x's shape; differentiable.
    """
    if shift_div == 0:
        return x
    check_shift_div(x.shape[dim], shift_div, causal, reach=reach)
    if reach > 1:
        return shift_with_reach(x, shift_div, causal, dim, reach)
    C = x.shape[dim]
    n = C // shift_div if causal else C // shift_div // 2  # channels from each neighbour
    out = x.new_zeros(x.shape)  # zeros where a neighbour is outside the clip
    o, i = out.movedim(dim, 2), x.movedim(dim, 2)  # views with the channels at dim 2, where TSM has them
    o[:, 1:, :n] = i[:, :-1, :n]  # from frame t-1
    if causal:
        o[:, :, n:] = i[:, :, n:]
    else:
        o[:, :-1, C - n:] = i[:, 1:, C - n:]  # from frame t+1
        o[:, :, n:C - n] = i[:, :, n:C - n]  # not shifted
    return out


def _from_neighbour(x, step):
    """x (B, T, ...) -> frame t holds x's frame t - step (step < 0: from the future), zeros outside the clip."""
    T, k = x.shape[1], min(abs(step), x.shape[1])
    zeros = x.new_zeros(x[:, :k].shape)
    return torch.cat([zeros, x[:, :T - k]], 1) if step > 0 else torch.cat([x[:, k:], zeros], 1)


def shift_with_reach(x, shift_div, causal=False, dim=-1, reach=1):
    """Beyond the paper: temporal_shift's channels from `reach` frames each way instead of one.

    Each way's channels are split into reach groups (the first ones a channel larger), group j from frame t-j or t+j,
    so that a cue missing for up to 2r - 1 frames in a row (r when causal) still reaches every frame of the gap. At
    reach 1 it is temporal_shift, to the bit. x, shift_div, causal, dim: as temporal_shift's.
    """
    C = x.shape[dim]
    n = C // shift_div if causal else C // shift_div // 2  # channels from each side

    def from_offsets(channels, sign):  # group j of these channels from frame t - sign * j
        return [_from_neighbour(g, sign * j) for j, g in enumerate(channels.tensor_split(reach, dim), 1)]

    past = from_offsets(x.narrow(dim, 0, n), 1)
    if causal:
        return torch.cat(past + [x.narrow(dim, n, C - n)], dim)
    return torch.cat(past + [x.narrow(dim, n, C - 2 * n)] + from_offsets(x.narrow(dim, C - n, n), -1), dim)


# -----------------------------------------------------------------------------
# Sec. 3.3: query matching


@torch.no_grad()
def match_queries(q):
    """Find, for every frame, the order of its queries that lines them up with frame 0's (Eq. 2).

    Each pair (t-1, t) is matched by the permutation that maximises the summed cosine similarity (Hungarian
    algorithm); chained, they put every frame into frame 0's order: q[b, t, perm[b, t, i]] and q[b, t-1,
    perm[b, t-1, i]] are matched. q: (B, T, Q, D) per-query features (the decoded queries for Eq. 2) -> perm
    (B, T, Q) int64 on q's device. All similarities go to the CPU in one transfer, as in DETR's matcher.
    """
    B, T, Q, _ = q.shape
    with torch.autocast(q.device.type, enabled=False):  # float32 similarities, also under bf16 autocast
        qn = F.normalize(q.float(), dim=-1)
        sim = (qn[:, 1:] @ qn[:, :-1].transpose(-1, -2)).cpu().numpy()  # (B, T-1, Q, Q)
    perm = np.empty((B, T, Q), dtype=np.int64)
    perm[:, 0] = np.arange(Q)
    for b in range(B):
        for t in range(1, T):
            rows, cols = linear_sum_assignment(sim[b, t - 1], maximize=True)  # query rows[i] of t ~ cols[i] of t-1
            partner = np.empty(Q, dtype=np.int64)
            partner[cols] = rows  # partner[j]: the query of frame t matched to query j of frame t-1
            perm[b, t] = partner[perm[b, t - 1]]
    return to_device(torch.from_numpy(perm), q.device)


def shift_queries(q, shift_div, match=True, causal=False, match_on=None, reach=1):
    """Shift 1/shift_div of the decoded query channels in time, after matching the queries across frames.

    q: (B, T, Q, C) decoded queries. match_on: (B, T, Q, D) features to match by (default q itself, Eq. 2; the
    predicted masks pair the queries that cover the same pixels). Returns (B, T, Q, C), every frame's queries back in
    their own order for the heads. Frame t's result depends on frames t-r..t+r only (un-permuting cancels the chain).
    """
    if shift_div == 0:
        return q
    if not match:
        return temporal_shift(q, shift_div, causal, reach=reach)
    perm = match_queries(q if match_on is None else match_on)[..., None].expand_as(q)  # (B, T, Q, C)
    unperm = perm.argsort(dim=2)  # the inverse permutation, to put the queries back
    aligned = q.gather(2, perm)  # (B, T, Q, C), query i of every frame stands for the same segment
    return temporal_shift(aligned, shift_div, causal, reach=reach).gather(2, unperm)


# -----------------------------------------------------------------------------
# Sec. 4.2: the settings, each declared once: its default (the paper's) and its meaning

PLACEMENTS = ("backbone", "queries", "pixels")  # in the order the model reaches them


class SettingError(ValueError):
    """A refused setting. It carries the setting's name, value and why, so that a script can name its own flag."""

    def __init__(self, name, value, why):
        super().__init__(f"{name} {value}: {why}")
        self.name, self.value, self.why = name, value, why


def _setting(default, meaning):
    return field(default=default, metadata={"meaning": meaning})


@dataclass(frozen=True)
class Settings:
    """What makes a QShiftSegmenter more than the image model, saved as config.json's "qshift" entry; each field's
    metadata["meaning"] is a sentence for help texts and model cards. A bad value raises SettingError."""
    shift_div: int = _setting(16, "1/shift_div of the channels are shifted in time, half from frame t-1 and half "
                              "from frame t+1 (Eq. 1); 0 is the image model run frame by frame")
    match: bool = _setting(True, "each frame's queries are matched to the previous frame's (Hungarian algorithm, "
                           "Eq. 2) before the shift")
    causal: bool = _setting(False, "online: every shifted channel comes from the past")
    shift_at: tuple = _setting(("queries",), "where the channels are shifted: the decoded queries (the paper's "
                               "place), the pixel embeddings, the backbone's feature maps, or several")
    match_by: str = _setting("queries", "what matching compares: the queries' cosine similarity (Eq. 2) or their "
                             "predicted masks'")
    reach: int = _setting(1, "how many frames each way the shifted channels come from, split evenly among them; 1 "
                          "is the paper's")

    def __post_init__(self):
        places = self.shift_at
        if type(places) is not tuple:
            raise SettingError("shift_at", places, "must be a tuple of placements, e.g. ('queries', 'pixels')")
        if not places or any(p not in PLACEMENTS for p in places) or len(set(places)) < len(places):
            raise SettingError("shift_at", ",".join(places), f"choose one or more of {', '.join(PLACEMENTS)}")
        for name, low in (("shift_div", 0), ("reach", 1)):
            if type(getattr(self, name)) is not int or getattr(self, name) < low:
                raise SettingError(name, getattr(self, name), f"must be a whole number of at least {low}")
        if self.match_by not in ("queries", "masks"):
            raise SettingError("match_by", self.match_by, "choose queries or masks")

    @property
    def matches(self):
        """Whether matching runs: it orders the queries for their shift, so only where the queries are shifted."""
        return self.match and self.shift_div > 0 and "queries" in self.shift_at


# -----------------------------------------------------------------------------
# The two model families: all that differs between MaskFormer and Mask2Former (after the backbone)


def decode_maskformer(model, features, aux=False):
    """MaskFormer's pixel decoder (FPN) and DETR decoder: backbone features [(N, C_i, h_i, w_i)] -> queries
    (N, Q, C), pixel embeddings (N, C', H/4, W/4), with aux the earlier layers' queries [(N, Q, C)] (HF's aux loss)."""
    pixel_embeddings = model.model.pixel_level_module.decoder(features).last_hidden_state
    decoded = model.model.transformer_module(features[-1], output_hidden_states=aux)
    return decoded.last_hidden_state, pixel_embeddings, list(decoded.hidden_states[:-1]) if aux else []


def decode_mask2former(model, features, aux=False):
    """Mask2Former's pixel decoder (deformable attention) and masked-attention decoder; returns as decode_maskformer.
    The final queries are the last state after the final layernorm; layer l's masked attention uses layer l-1's mask,
    so shifting the final queries leaves every earlier layer as the image model computes it."""
    pixels = model.model.pixel_level_module.decoder(features)
    decoded = model.model.transformer_module(pixels.multi_scale_features, pixels.mask_features,
                                             output_hidden_states=True)
    states = [s.transpose(0, 1) for s in decoded.intermediate_hidden_states]  # sequence-first (Q, N, C) -> (N, Q, C)
    return states[-1], pixels.mask_features, states[:-1] if aux else []


Family = namedtuple("Family", ["hf_class", "decode", "mask_mlp"])  # HF model, decode_*, model -> its mask MLP
FAMILIES = {  # config.model_type -> Family
    "maskformer": Family(MaskFormerForInstanceSegmentation, decode_maskformer, lambda model: model.mask_embedder),
    "mask2former": Family(Mask2FormerForUniversalSegmentation, decode_mask2former,
                          lambda model: model.model.transformer_module.decoder.mask_predictor.mask_embedder),
}

# -----------------------------------------------------------------------------
# Sec. 3.1 and 4.2: the image segmenter with shifts at the chosen places, and its semantic maps


class QShiftSegmenter(nn.Module):
    """A Hugging Face MaskFormer or Mask2Former run on every frame of a clip, with features shifted in time.

    The image model is kept whole as `.model`; `.settings` (Settings, from the keywords) say where and how
    much is shifted. The auxiliary predictions of earlier decoder layers (HF's auxiliary loss) stay unshifted. Its
    output holds class_logits (B*T, Q, L+1) and mask logits (B*T, Q, H/4, W/4), which semantic_segmentation turns
    into class maps; the L class names are model.model.config.id2label (the last logit is "no object").
    """

    def __init__(self, model, **settings):
        super().__init__()
        if model.config.model_type not in FAMILIES:
            raise ValueError(f"{type(model).__name__} is not a MaskFormer or Mask2Former")
        self.model, self.family = model, model.config.model_type
        s = self.settings = Settings(**settings)
        names = {"queries": "query", "pixels": "pixel-embedding", "backbone": "backbone feature-map"}
        for placement in s.shift_at:
            for channels in self.channels(placement):
                check_shift_div(channels, s.shift_div, s.causal, names[placement], s.reach)

    def channels(self, placement):
        """The channel counts of a placement's tensors: [C] for queries, [C'] for pixels, one per backbone map."""
        if placement == "queries":
            return [self.model.class_predictor.in_features]
        if placement == "pixels":
            return [self.model.config.mask_feature_size]
        return list(self.model.model.pixel_level_module.encoder.channels)

    def backbone(self, pixel_values):
        """The image model's backbone: pixel_values (N, 3, H, W) -> feature maps [(N, C_i, H/s_i, W/s_i)]."""
        return list(self.model.model.pixel_level_module.encoder(pixel_values).feature_maps)

    def shift_backbone(self, features):
        """"backbone" placement: features [(B, T, C_i, h_i, w_i)] -> the same, shifted in time (Eq. 1)."""
        s = self.settings
        shift = "backbone" in s.shift_at
        return [temporal_shift(f, s.shift_div, s.causal, dim=2, reach=s.reach) if shift else f for f in features]

    def decode(self, features, aux=False):
        """The family's pixel and transformer decoders (decode_maskformer, decode_mask2former)."""
        return FAMILIES[self.family].decode(self.model, features, aux)

    def heads(self, queries, pixel_embeddings):
        """The heads (Sec. 3.1): queries (N, Q, C), pixel embeddings (N, C', h, w) -> class_logits (N, Q, L+1),
        mask_logits (N, Q, h, w), the dot product of each query's mask embedding with every pixel embedding."""
        class_logits = self.model.class_predictor(queries)
        mask_embeddings = FAMILIES[self.family].mask_mlp(self.model)(queries)  # (N, Q, C')
        return class_logits, torch.einsum("nqc,nchw->nqhw", mask_embeddings, pixel_embeddings)

    def shift_decoded(self, queries, pixel_embeddings):
        """"queries" (Eq. 2, then Eq. 1) and "pixels" placements: queries (B, T, Q, C), pixel embeddings
        (B, T, C', h, w) -> both, shifted where shift_at says. Matching by masks uses the unshifted queries' masks."""
        s = self.settings
        if "queries" in s.shift_at:
            match_on = None
            if s.matches and s.match_by == "masks":
                masks = self.heads(queries.flatten(0, 1), pixel_embeddings.flatten(0, 1))[1]  # (B*T, Q, h, w)
                match_on = masks.sigmoid().flatten(2).unflatten(0, queries.shape[:2])  # (B, T, Q, h*w)
            queries = shift_queries(queries, s.shift_div, s.matches, s.causal, match_on, s.reach)
        if "pixels" in s.shift_at:
            pixel_embeddings = temporal_shift(pixel_embeddings, s.shift_div, s.causal, dim=2, reach=s.reach)
        return queries, pixel_embeddings

    def forward(self, pixel_values, mask_labels=None, class_labels=None):
        """pixel_values (B, T, 3, H, W); mask_labels, class_labels: HF's lists of B*T target tensors (optional) ->
        HF's MaskFormerForInstanceSegmentationOutput (both families) for the B*T frames, with HF's loss given labels."""
        B, T = pixel_values.shape[:2]
        aux = self.model.config.use_auxiliary_loss
        features = [f.unflatten(0, (B, T)) for f in self.backbone(pixel_values.flatten(0, 1))]
        features = [f.flatten(0, 1) for f in self.shift_backbone(features)]
        queries, pixel_embeddings, earlier = self.decode(features, aux)  # (B*T, Q, C), (B*T, C', h, w)
        shifted, shifted_pixels = self.shift_decoded(queries.unflatten(0, (B, T)),
                                                     pixel_embeddings.unflatten(0, (B, T)))
        class_logits, mask_logits = self.heads(shifted.flatten(0, 1), shifted_pixels.flatten(0, 1))
        auxiliary_logits = [dict(zip(("class_queries_logits", "masks_queries_logits"), self.heads(q, pixel_embeddings)))
                            for q in earlier]
        loss = None
        if mask_labels is not None and class_labels is not None:
            loss_dict = self.model.get_loss_dict(mask_logits, class_logits, mask_labels, class_labels, auxiliary_logits)
            loss = self.model.get_loss(loss_dict)
        return MaskFormerForInstanceSegmentationOutput(
            loss=loss, class_queries_logits=class_logits, masks_queries_logits=mask_logits,
            auxiliary_logits=auxiliary_logits if self.model.config.output_auxiliary_logits else None,
            encoder_last_hidden_state=features[-1], pixel_decoder_last_hidden_state=shifted_pixels.flatten(0, 1),
            transformer_decoder_last_hidden_state=shifted.flatten(0, 1))

    def save_pretrained(self, directory):
        """Write the HF model's config.json, with the settings as its "qshift" entry (so that any copy of the config,
        on the Hub too, rebuilds this model), and its weights."""
        self.model.config.qshift = asdict(self.settings)
        self.model.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, name_or_path, num_labels=None, id2label=None, **kwargs):
        """Load a MaskFormer or Mask2Former (HF hub id or local directory) or a directory written by save_pretrained.

        num_labels other than the checkpoint's replaces the class head (ADE20K's 150 -> VSPW's 124). Settings given
        here (e.g. shift_div=8) win over the saved ones; the rest take the paper's defaults, so an image checkpoint
        is fine-tuned with the shift on (Sec. 4.2.1). Other kwargs go to HF's from_pretrained.
        """
        given = {f.name: kwargs.pop(f.name) for f in fields(Settings) if kwargs.get(f.name) is not None}
        hub_kwargs = {k: v for k, v in kwargs.items() if k in ("cache_dir", "revision", "local_files_only", "token")}
        config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
        if config.model_type not in FAMILIES:
            raise ValueError(f"'{name_or_path}' is a {config.model_type} model, not a MaskFormer or Mask2Former")
        saved = saved_settings(config)
        new_head = num_labels is not None and num_labels != config.num_labels
        if new_head:
            config.num_labels, kwargs["ignore_mismatched_sizes"] = num_labels, True  # a new class head for the labels
        if id2label or new_head:
            config.id2label = id2label or {i: f"class_{i}" for i in range(num_labels)}
        config.label2id = {name: i for i, name in config.id2label.items()}
        model = FAMILIES[config.model_type].hf_class.from_pretrained(name_or_path, config=config, **kwargs)
        return cls(model, **{**saved, **given})


def saved_settings(config):
    """The settings an HF config holds in its "qshift" entry (save_pretrained), as Settings' keywords; {} if none."""
    saved = getattr(config, "qshift", {})
    if not isinstance(saved, dict) or set(saved) - {f.name for f in fields(Settings)}:
        raise ValueError("its config.json's qshift entry is not a JSON object of qshift.Settings")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}  # JSON has no tuples


def semantic_segmentation(class_logits, mask_logits, size=None):
    """Per-pixel classes from mask classification (MaskFormer's semantic inference), always in float32.

    class_logits (N, Q, L+1), mask_logits (N, Q, h, w) -> (N, H, W) int64 class ids for size=(H, W) (None keeps
    (h, w)): the sum over queries of p(class) (no null class) times sigmoid(mask), bilinear to size, argmax. (HF's
    Mask2Former post-processing first resizes the masks to 384x384; this does not, see docs/details.md.)
    """
    with torch.autocast(class_logits.device.type, enabled=False):  # bf16 scores would flip close argmaxes
        probs = class_logits.float().softmax(-1)[..., :-1]  # (N, Q, L)
        scores = torch.einsum("nql,nqhw->nlhw", probs, mask_logits.float().sigmoid())  # (N, L, h, w)
        if size is not None and tuple(size) != tuple(scores.shape[-2:]):
            scores = F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)
        return scores.argmax(1)
