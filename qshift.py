# SPDX-License-Identifier: MIT
# Copyright (c) 2026 the qshift authors. MIT licence (LICENSE): copies keep these two lines.
"""
Shift and matching queries for video semantic segmentation (Mizuno and Tamaki), in one file.

A query-based image segmenter (MaskFormer, or Mask2Former) decodes Q mask queries per frame; each decoded query stands
for one segment and feeds the class and mask heads (Sec. 3.1). To make the image model see time, we shift a few query
channels to the neighbouring frames, as TSM does for CNN features (Sec. 3.2, Eq. 1). Query i of frame t need not
describe the same segment as query i of frame t-1, so before shifting we match each frame's queries to the previous
frame's by cosine similarity and the Hungarian algorithm (Sec. 3.3, Eq. 2). The pretrained weights are reused as
they are: with the shift off, QShiftSegmenter is exactly the image model run frame by frame.

Sec. 3.2 names other places a shift can act. `shift_at` picks any of three, each shifting 1/shift_div of its channels
(from frames t-1 and t+1; with `reach` r, split among the frames t-r..t-1 and t+1..t+r):

    pixel_values (B, T, 3, H, W) -> backbone per frame -> feature maps          <- "backbone": every feature map
        -> pixel decoder, transformer decoder -> queries (B*T, Q, C)           <- "queries": match, shift (the paper)
                                              -> pixel embeddings (B*T, C', H/4, W/4)  <- "pixels"
        -> class and mask heads -> class logits (B*T, Q, L+1), mask logits (B*T, Q, H/4, W/4)

Whole videos run in bounded memory with `stream_logits` / `predict_video`, exactly as one whole-clip run.
Copy this file into your project; it needs torch, scipy and transformers. In short:

    model = QShiftSegmenter.from_pretrained("RUN/best" or a hub id).eval()   # settings from config.json's "qshift"
    pixel_values = frames_to_pixel_values(frames)          # uint8 (T, H, W, 3) -> normalised float (T, 3, H, W)
    maps = list(predict_video(model, pixel_values))        # T class maps (H, W); names: model.model.config.id2label
"""
import itertools
import json
import logging
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import HfApi
from huggingface_hub import constants as hf_constants
from scipy.optimize import linear_sum_assignment
from transformers import (AutoConfig, DetrConfig, Mask2FormerConfig, Mask2FormerForUniversalSegmentation,
                          MaskFormerConfig, MaskFormerForInstanceSegmentation, SwinConfig)
from transformers.models.maskformer.modeling_maskformer import MaskFormerForInstanceSegmentationOutput

# MaskFormer saves its Swin backbone's config as its own type "maskformer-swin", then warns on loading it back that this
# type is not among the backbones it supports ("resnet", "swin"; the message, copied from Mask2Former, names that
# model): harmless, and silenced here, this one message only.
logging.getLogger("transformers.models.maskformer.configuration_maskformer").addFilter(
    lambda record: not record.getMessage().startswith("Backbone maskformer-swin is not a supported model"))

# -----------------------------------------------------------------------------
# The input: frames normalised as MaskFormer's image processor does, as in training (data.py uses these)

MEAN = (0.485, 0.456, 0.406)  # ImageNet's, per RGB channel, of pixel values in [0, 1]
STD = (0.229, 0.224, 0.225)


def frames_to_pixel_values(frames):
    """uint8 RGB frames -> the model's pixel_values, normalised as in training: (x / 255 - MEAN) / STD.

    frames: (T, H, W, 3) uint8, a numpy array or a tensor (on any device), or a list of T PIL images of one size.
    Returns float32 (T, 3, H, W) on the frames' device (the CPU for numpy and PIL): predict_video takes it as it is,
    model(pixel_values[None]) runs it as one clip. No resizing: the model takes any size (its masks come at H/4).
    """
    if isinstance(frames, (list, tuple)):
        frames = np.stack([np.asarray(f.convert("RGB") if hasattr(f, "convert") else f) for f in frames])
    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 RGB of shape (T, H, W, 3), not {frames.dtype} {tuple(frames.shape)}")
    mean255 = torch.tensor(MEAN, device=frames.device).view(3, 1, 1) * 255
    std255 = torch.tensor(STD, device=frames.device).view(3, 1, 1) * 255
    return frames.permute(0, 3, 1, 2).float().sub_(mean255).div_(std255)  # (T, 3, H, W)


# -----------------------------------------------------------------------------
# Sec. 3.2: feature shift


def check_shift_div(channels, shift_div, causal=False, what="query", reach=1):
    """Raise ValueError unless 1/shift_div of `channels` is a valid shift (Eq. 1) of the given reach; shift_div 0
    means no shift."""
    if shift_div == 0:
        return
    if shift_div < 0 or channels % shift_div or channels // shift_div < 2:
        raise ValueError(f"shift_div {shift_div}: 1/{shift_div} of the {channels} {what} channels must be a whole "
                         f"number of at least 2 channels")
    n = channels // shift_div
    if not causal and n % 2:
        raise ValueError(f"shift_div {shift_div}: 1/{shift_div} of the {channels} {what} channels is {n}, an odd "
                         f"number that cannot be split evenly between the previous and the next frame")
    per_way = n if causal else n // 2
    if not isinstance(reach, int) or reach < 1 or reach > per_way:
        way = "from the past" if causal else "each way"
        raise ValueError(f"reach {reach}: 1/{shift_div} of the {channels} {what} channels shifts {per_way} {way}, "
                         f"which cannot give each of {reach} frame offsets a channel (reach must be 1..{per_way})")


def _from_neighbour(x, step):
    """x (B, T, ...) -> frame t holds x's frame t - step (step > 0: from the past, < 0: from the future), zeros
    outside the clip."""
    T, k = x.shape[1], min(abs(step), x.shape[1])
    zeros = x.new_zeros(x[:, :k].shape)
    return torch.cat([zeros, x[:, :T - k]], 1) if step > 0 else torch.cat([x[:, k:], zeros], 1)


def temporal_shift(x, shift_div, causal=False, dim=-1, reach=1):
    """Shift 1/shift_div of the channels of x along time (Eq. 1, TSM), reaching `reach` frames each way.

    x: (B, T, ...), time at dim 1, channels at `dim` (last by default: queries (B, T, Q, C); 2 for feature maps
    (B, T, C, h, w)). With n = C // shift_div, frame t takes channels [0, n/2) from frame t-1 and [C - n/2, C) from
    frame t+1; the rest stay; neighbours outside the clip give zeros. causal=True (online, no look-ahead): all n
    shifted channels come from frame t-1. shift_div=0 returns x. Returns a new tensor of x's shape; differentiable.
    shift_div is the total fraction, as in the paper: TSM's fold_div = 8 (1/8 each way) is shift_div = 4.

    reach r > 1 moves the same n channels, farther: each way's channels are split into r groups as evenly as
    possible (the first groups one channel larger), and group j comes from frame t-j (of [0, n/2)) or t+j (of
    [C - n/2, C)); causal: group j of [0, n) from t-j. So frame t reads frames t-r..t+r (t-r..t when causal): a cue
    missing for up to 2r - 1 frames in a row (r when causal) can still reach every frame of the gap in one shift.
    reach=1 is the shift above.
    """
    if shift_div == 0:
        return x
    dim = dim % x.dim()
    C = x.shape[dim]
    check_shift_div(C, shift_div, causal, reach=reach)
    n = C // shift_div
    h = n if causal else n // 2  # channels from each side

    def from_offsets(channels, sign):  # group j of these channels from frame t - sign * j
        return [_from_neighbour(g, sign * j) for j, g in enumerate(channels.tensor_split(reach, dim), 1)]

    past = from_offsets(x.narrow(dim, 0, h), 1)
    if causal:
        return torch.cat(past + [x.narrow(dim, h, C - h)], dim)
    return torch.cat(past + [x.narrow(dim, h, C - 2 * h)] + from_offsets(x.narrow(dim, C - h, h), -1), dim)


# -----------------------------------------------------------------------------
# Sec. 3.3: query matching


@torch.no_grad()
def match_queries(q):
    """Find, for every frame, the order of its queries that lines them up with frame 0's (Eq. 2).

    Each adjacent pair (t-1, t) is matched by the permutation that maximises the summed cosine similarity of
    matched queries (Hungarian algorithm); chaining the pairs puts every frame into frame 0's order, so that
    q[b, t, perm[b, t, i]] and q[b, t-1, perm[b, t-1, i]] are matched for every i.

    q: (B, T, Q, D), any per-query features (the decoded queries for Eq. 2). Returns perm: LongTensor (B, T, Q) on
    q's device, perm[:, 0] = arange(Q). All (B, T-1) similarity matrices are computed at once on q's device, then
    moved to the CPU in one transfer: sim[b, t-1, i, j] is the cosine of query i of frame t and query j of frame t-1.
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
    return torch.from_numpy(perm).to(q.device)


def shift_queries(q, shift_div, match=True, causal=False, match_on=None, reach=1):
    """Shift 1/shift_div of the decoded query channels in time, after matching the queries across frames.

    q: (B, T, Q, C) decoded queries of B clips of T frames. match_on: (B, T, Q, D) features to match by (default q
    itself, Eq. 2; e.g. the queries' predicted mask maps pair the queries that cover the same pixels). Returns
    (B, T, Q, C), every frame's queries in their original order, so the heads see the usual layout. shift_div=0
    returns q: the frame-by-frame model. Frame t's result depends on frames t-r..t+r only (t-r..t when causal) for
    reach r (see temporal_shift): matching is chained, but un-permuting cancels the chain, leaving only the pairs
    between t-r and t+r.
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
# The two model families: all that differs between MaskFormer and Mask2Former (after the backbone)


def decode_maskformer(model, features, aux=False):
    """MaskFormer's pixel decoder (FPN) and DETR decoder on backbone features (list of (N, C_i, h_i, w_i)).

    Returns queries (N, Q, C), pixel embeddings (N, C', H/4, W/4), and with aux the earlier decoder layers'
    queries (list of (N, Q, C)), which HF's auxiliary loss sends through the same heads.
    """
    pixel_embeddings = model.model.pixel_level_module.decoder(features).last_hidden_state
    decoded = model.model.transformer_module(features[-1], output_hidden_states=aux)
    return decoded.last_hidden_state, pixel_embeddings, list(decoded.hidden_states[:-1]) if aux else []


def decode_mask2former(model, features, aux=False):
    """Mask2Former's pixel decoder (deformable attention) and masked-attention decoder; returns as decode_maskformer.

    The final queries are the decoder's last state after its final layernorm (HF's transformer_decoder_last_hidden_state
    is the state before it). Layer l's masked attention uses layer l-1's mask, so shifting the final queries leaves
    every earlier layer, and the auxiliary predictions, as the image model computes them.
    """
    pixels = model.model.pixel_level_module.decoder(features)
    decoded = model.model.transformer_module(pixels.multi_scale_features, pixels.mask_features,
                                             output_hidden_states=True)
    states = [s.transpose(0, 1) for s in decoded.intermediate_hidden_states]  # sequence-first (Q, N, C) -> (N, Q, C)
    return states[-1], pixels.mask_features, states[:-1] if aux else []


class Family(NamedTuple):
    hf_class: type  # the HF model with heads
    decode: Callable  # (model, features, aux) -> queries, pixel embeddings, earlier layers' queries
    mask_mlp: Callable  # model -> the MLP that turns a query into its mask embedding
    image_processor: str  # the HF image processor's type, in preprocessor_config.json


FAMILIES = {  # config.model_type -> Family
    "maskformer": Family(MaskFormerForInstanceSegmentation, decode_maskformer, lambda model: model.mask_embedder,
                         "MaskFormerImageProcessor"),
    "mask2former": Family(Mask2FormerForUniversalSegmentation, decode_mask2former,
                          lambda model: model.model.transformer_module.decoder.mask_predictor.mask_embedder,
                          "Mask2FormerImageProcessor"),
}

# -----------------------------------------------------------------------------
# Sec. 3.1 and 4.2: the image segmenter with shifts at the chosen places

PLACEMENTS = ("backbone", "queries", "pixels")  # in the order the model reaches them


class QShiftSegmenter(nn.Module):
    """A Hugging Face MaskFormer or Mask2Former run on every frame of a clip, with features shifted in time.

    The image model is kept whole as `.model`. shift_at: where 1/shift_div of the channels are shifted (see the module
    docstring); the paper's setting is ("queries",) with match=True: the final decoded queries, matched by Eq. 2
    (match_by="queries") or by the cosine similarity of their predicted masks (match_by="masks"). Matching concerns
    the queries only: with "queries" not in shift_at, no matching runs and settings() records match=False.
    shift_div=0 is the frame-by-frame image model. The auxiliary predictions of the earlier decoder layers (HF's
    auxiliary loss) stay as the image model computes them, unshifted. reach: how many frames each shift reaches
    each way (see temporal_shift); 1 is the paper's.

    Its output holds class_logits (B*T, Q, L+1) and mask logits at a quarter of the frames' size, (B*T, Q, H/4, W/4):
    semantic_segmentation(..., size=(H, W)) turns them into class maps at the frames' size. The L class names are
    model.model.config.id2label (the last of the L+1 class logits is the null class, "no object").
    """

    def __init__(self, model, shift_div=16, match=True, causal=False, shift_at=("queries",), match_by="queries",
                 reach=1):
        super().__init__()
        if model.config.model_type not in FAMILIES:
            raise ValueError(f"{type(model).__name__}: not a MaskFormer or Mask2Former (model_type "
                             f"{model.config.model_type!r})")
        shift_at = (shift_at,) if isinstance(shift_at, str) else tuple(shift_at)
        if not shift_at or any(p not in PLACEMENTS for p in shift_at) or len(set(shift_at)) < len(shift_at):
            raise ValueError(f"shift_at {','.join(shift_at)}: choose one or more of {', '.join(PLACEMENTS)}")
        if match_by not in ("queries", "masks"):
            raise ValueError(f"match_by {match_by}: choose queries or masks")
        self.model, self.family = model, model.config.model_type
        self.shift_div, self.causal, self.match_by, self.reach = shift_div, causal, match_by, reach
        self.shift_at = tuple(p for p in PLACEMENTS if p in shift_at)
        self.match = bool(match) and shift_div > 0 and "queries" in self.shift_at  # what runs, not what was asked
        names = {"queries": "query", "pixels": "pixel-embedding", "backbone": "backbone feature-map"}
        for placement in self.shift_at:
            for channels in self.channels(placement):
                check_shift_div(channels, shift_div, causal, names[placement], reach)

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
        if "backbone" not in self.shift_at:
            return features
        return [temporal_shift(f, self.shift_div, self.causal, dim=2, reach=self.reach) for f in features]

    def decode(self, features, aux=False):
        """Pixel and transformer decoders: features [(N, C_i, h_i, w_i)] -> queries (N, Q, C), pixel embeddings
        (N, C', H/4, W/4), earlier layers' queries [(N, Q, C)] (with aux)."""
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
        if "queries" in self.shift_at:
            match_on = None
            if self.match and self.match_by == "masks":
                masks = self.heads(queries.flatten(0, 1), pixel_embeddings.flatten(0, 1))[1]  # (B*T, Q, h, w)
                match_on = masks.sigmoid().flatten(2).unflatten(0, queries.shape[:2])  # (B, T, Q, h*w)
            queries = shift_queries(queries, self.shift_div, self.match, self.causal, match_on, self.reach)
        if "pixels" in self.shift_at:
            pixel_embeddings = temporal_shift(pixel_embeddings, self.shift_div, self.causal, dim=2, reach=self.reach)
        return queries, pixel_embeddings

    def forward(self, pixel_values, mask_labels=None, class_labels=None):
        """pixel_values (B, T, 3, H, W); mask_labels, class_labels: HF's lists of B*T target tensors (optional).

        Returns a MaskFormerForInstanceSegmentationOutput (both families) for the B*T frames, with the image model's
        own loss when labels are given.
        """
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

    def settings(self):
        """What makes this model more than the image model: the keyword arguments of __init__ that rebuild it."""
        return {"shift_div": self.shift_div, "match": self.match, "causal": self.causal,
                "shift_at": list(self.shift_at), "match_by": self.match_by, "reach": self.reach}

    def save_pretrained(self, directory):
        """Write the HF model to `directory`: config.json, which carries settings() as its "qshift" entry (so that
        any copy of the config, on the Hub too, rebuilds this model), the weights (model.safetensors), and the image
        processor of training's normalisation (preprocessor_config.json, for AutoImageProcessor.from_pretrained)."""
        self.model.config.qshift = self.settings()
        self.model.save_pretrained(directory)
        # written as JSON, not through an image processor class: transformers 5 names its classes by backend
        # (torchvision or PIL) and warns without torchvision; the file reads the same in either backend
        processor = {"image_processor_type": FAMILIES[self.family].image_processor, "do_resize": False,
                     "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(MEAN),
                     "image_std": list(STD), "do_reduce_labels": False, "ignore_index": 255}
        (Path(directory) / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")

    def push_to_hub(self, repo_id, data=None, scores=None, private=None, token=None, commit_message="Upload model"):
        """Upload save_pretrained's files and a model card (README.md, see model_card) to the Hub repo repo_id,
        created if it does not exist. data: the data set it was trained on; scores: {name: value}, for the card.
        Returns huggingface_hub's CommitInfo."""
        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            (Path(folder) / "README.md").write_text(model_card(self, repo_id, data, scores))
            api.create_repo(repo_id, private=private, exist_ok=True)
            return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)

    @classmethod
    def from_pretrained(cls, name_or_path, num_labels=None, id2label=None, shift_div=None, match=None, causal=None,
                        shift_at=None, match_by=None, reach=None, **kwargs):
        """Load a MaskFormer or Mask2Former (HF hub id or local directory) or a directory written by save_pretrained.

        The family follows the checkpoint's config (model_type). num_labels different from the checkpoint's replaces
        the class head (e.g. ADE20K's 150 -> VSPW's 124). Settings given here win over saved ones (config.json's
        "qshift" entry, or the qshift.json beside the config of a checkpoint from an earlier version); the rest take
        __init__'s defaults, the paper's setting, so an image checkpoint is fine-tuned with the shift on (Sec. 4.2.1).
        kwargs go to the HF model's from_pretrained (cache_dir, revision, local_files_only and token also to its
        config's).
        """
        hub_kwargs = {k: v for k, v in kwargs.items() if k in ("cache_dir", "revision", "local_files_only", "token")}
        try:
            config = AutoConfig.from_pretrained(name_or_path, **hub_kwargs)
        except OSError as e:
            offline = "" if hf_constants.HF_HUB_OFFLINE else "; offline, HF_HUB_OFFLINE=1 answers at once, not in 30 s"
            raise OSError(f"cannot load '{name_or_path}': it is not a local model directory and not in the Hugging "
                          f"Face cache; download it on a connected machine (`hf download {name_or_path}`) and copy "
                          f"the cache, or pass a local directory{offline} ({str(e).splitlines()[0]})") from None
        if config.model_type not in FAMILIES:
            raise ValueError(f"'{name_or_path}' is a {config.model_type} model, not a MaskFormer or Mask2Former")
        given = dict(shift_div=shift_div, match=match, causal=causal, shift_at=shift_at, match_by=match_by,
                     reach=reach)
        settings = {**saved_settings(config, name_or_path), **{k: v for k, v in given.items() if v is not None}}
        if num_labels is not None and num_labels != config.num_labels:
            config.num_labels = num_labels
            config.id2label = id2label or {i: f"class_{i}" for i in range(num_labels)}
            kwargs["ignore_mismatched_sizes"] = True  # a new class head for the new labels
        elif id2label is not None:
            config.id2label = id2label
        config.label2id = {name: i for i, name in config.id2label.items()}
        model = FAMILIES[config.model_type].hf_class.from_pretrained(name_or_path, config=config, **kwargs)
        return cls(model, **settings)


QShiftMaskFormer = QShiftSegmenter  # the name of earlier versions; it also wraps Mask2Former


def saved_settings(config, name_or_path):
    """The settings saved with a checkpoint, {setting: value}: its HF config's "qshift" entry, or the qshift.json
    beside the config in the folder of an earlier version; {} for an image model."""
    settings = getattr(config, "qshift", None)
    if settings is None:
        old = Path(name_or_path) / "qshift.json"
        settings = json.loads(old.read_text()) if old.is_file() else {}
    if not isinstance(settings, dict):
        raise ValueError(f"'{name_or_path}': its qshift settings are not a JSON object of setting: value")
    return settings


# -----------------------------------------------------------------------------
# Whole videos in bounded memory (inference), exactly as one whole-clip run


def _sliding(batches, shift, causal, reach=1):
    """Apply a shift whose frame t reads frames t-r..t+r (t-r..t when causal), r = reach, to a stream of frame batches.

    batches: iterable of lists of tensors, each (n, ...) for the next n frames. shift: a function of such a list
    with a leading clip dimension [(1, w, ...)], returning a list of the same shapes. Yields lists (m, ...) for the
    frames in order, equal to the shift of the whole stream: the last r emitted frames are kept as left context (the
    halo), and r frames are held back for the right (none when causal); beyond the stream's ends the shift sees
    zeros, as at a clip's ends.
    """
    lag = 0 if causal else reach
    window, halo = None, 0  # window: [halo frames (up to r, once there are any)] + pending frames, per tensor
    for batch in itertools.chain(batches, [None]):  # None marks the end
        if batch is not None:
            window = batch if window is None else [torch.cat([w, b]) for w, b in zip(window, batch)]
        if window is None:
            return
        emit = window[0].shape[0] - halo - (lag if batch is not None else 0)
        if emit <= 0:
            continue
        shifted = shift([w[None] for w in window])
        yield [s[0, halo:halo + emit] for s in shifted]
        keep = min(reach, halo + emit)  # the last r emitted frames are the new halo
        window = [w[halo + emit - keep:] for w in window]
        halo = keep


@torch.no_grad()
def stream_logits(model, frames, chunk=8, amp=False):
    """The model's logits for one clip of any length, streamed in memory bounded by a few chunks of frames.

    frames: iterable of pixel_values (3, H, W); frames beyond its ends count as zeros for the shift. Yields
    (class_logits (n, Q, L+1), mask_logits (n, Q, H/4, W/4)) in float32 for the next n frames, in order, equal to
    the model's output on the whole clip. The backbone runs `chunk` frames at a time; each shift in series (the
    backbone's, then the decoded queries' and pixels') keeps r = model.reach frames of context on each side (the past
    only when causal), so frame t waits for frame t+r, or t+2r with backbone and a later placement. amp: bf16
    autocast.
    """
    device = next(model.parameters()).device
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    def features():  # backbone maps of `chunk` frames at a time; never yield inside autocast: it would leak out
        frame_iter = iter(frames)
        while batch := list(itertools.islice(frame_iter, chunk)):
            with autocast:
                maps = model.backbone(torch.stack(batch).to(device))
            yield maps

    def decoded(batches):
        for maps in batches:
            with autocast:
                queries, pixel_embeddings, _ = model.decode(maps)
            yield [queries, pixel_embeddings]

    stage = features()
    if "backbone" in model.shift_at and model.shift_div:
        stage = _sliding(stage, model.shift_backbone, model.causal, model.reach)
    stage = decoded(stage)
    if {"queries", "pixels"} & set(model.shift_at) and model.shift_div:
        stage = _sliding(stage, lambda window: list(model.shift_decoded(*window)), model.causal, model.reach)
    for queries, pixel_embeddings in stage:
        with autocast:
            class_logits, mask_logits = model.heads(queries, pixel_embeddings)
        yield class_logits.float(), mask_logits.float()


@torch.no_grad()
def predict_video(model, frames, chunk=8, amp=False, clip_len=None):
    """Per-frame class maps of one video, streamed: yields (H, W) int64 tensors on the model's device, at the
    frames' size, of class ids named by model.model.config.id2label.

    frames: iterable of pixel_values (3, H, W) of one video (e.g. frames_to_pixel_values' (T, 3, H, W)). Without
    clip_len the maps are those of the whole video run as one clip (see stream_logits); clip_len=T runs independent
    clips of T frames instead (the last one shorter), with zeros shifted in at every clip's ends, as in training. A
    causal model runs online with chunk=1: the map of frame t comes before frame t+1 is read.
    """
    frames = iter(frames)
    for first in frames:
        size = first.shape[-2:]
        clip = itertools.chain([first], frames if clip_len is None else itertools.islice(frames, clip_len - 1))
        for class_logits, mask_logits in stream_logits(model, clip, chunk, amp):
            yield from semantic_segmentation(class_logits, mask_logits, size)


# -----------------------------------------------------------------------------
# Semantic maps (MaskFormer's semantic inference) and small models for tests and the synthetic demo


def semantic_segmentation(class_logits, mask_logits, size=None):
    """Per-pixel classes from mask classification (MaskFormer's semantic inference), always in float32.

    class_logits (N, Q, L+1), mask_logits (N, Q, h, w) -> (N, H, W) int64 for size=(H, W) (None keeps (h, w)):
    sum over queries of p(class) without the null class times sigmoid(mask), bilinear to size, argmax. The model's
    mask logits come at a quarter of the frames' size, h, w = H/4, W/4: pass the frames' (H, W) for maps at their
    size. The values are class ids 0..L-1, named by model.model.config.id2label.
    HF's Mask2Former post-processing first resizes the mask logits to 384x384; this does not (see docs/details.md).
    """
    with torch.autocast(class_logits.device.type, enabled=False):  # bf16 scores would flip close argmaxes
        probs = class_logits.float().softmax(-1)[..., :-1]  # (N, Q, L)
        scores = torch.einsum("nql,nqhw->nlhw", probs, mask_logits.float().sigmoid())  # (N, L, h, w)
        if size is not None and tuple(size) != tuple(scores.shape[-2:]):
            scores = F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)
        return scores.argmax(1)


def tiny_config(num_labels, hidden_size=64, num_queries=20, embed_dim=16, decoder_layers=2, mask_feature_size=32,
                image_size=64, id2label=None, family="maskformer"):
    """A small MaskFormer or Mask2Former config (Swin backbone) that builds offline in well under a second.

    hidden_size is the query dimension C (the shift's channels); the paper's models have C = 256.
    """
    id2label = id2label or {i: f"class_{i}" for i in range(num_labels)}
    labels = dict(num_labels=num_labels, id2label=id2label, label2id={name: i for i, name in id2label.items()})
    backbone = SwinConfig(image_size=image_size, patch_size=4, embed_dim=embed_dim, depths=[1, 1, 1, 1],
                          num_heads=[1, 2, 2, 4], window_size=4, drop_path_rate=0.0,
                          out_features=["stage1", "stage2", "stage3", "stage4"])
    if family == "mask2former":  # HF builds decoder_layers - 1 masked-attention layers, reading levels 0, 1 (of 3)
        return Mask2FormerConfig(backbone_config=backbone, hidden_dim=hidden_size, num_queries=num_queries,
                                 decoder_layers=max(decoder_layers, 3), encoder_layers=1, num_attention_heads=4,
                                 dim_feedforward=2 * hidden_size, feature_size=mask_feature_size,
                                 mask_feature_size=mask_feature_size, encoder_feedforward_dim=2 * mask_feature_size,
                                 train_num_points=1024, **labels)
    if family != "maskformer":
        raise ValueError(f"family {family}: choose maskformer or mask2former")
    decoder = DetrConfig(d_model=hidden_size, decoder_layers=decoder_layers, decoder_attention_heads=4,
                         decoder_ffn_dim=2 * hidden_size, encoder_layers=1, encoder_attention_heads=4,
                         encoder_ffn_dim=2 * hidden_size, num_queries=num_queries, dropout=0.0)
    return MaskFormerConfig(backbone_config=backbone, decoder_config=decoder, fpn_feature_size=mask_feature_size,
                            mask_feature_size=mask_feature_size, **labels)


def build_model(config, *args, **settings):
    """A randomly initialised QShiftSegmenter from an HF MaskFormerConfig or Mask2FormerConfig; the other arguments
    are QShiftSegmenter's (shift_div, match, causal, shift_at, match_by, reach), with its defaults.

    The learned query embeddings are drawn from N(0, 1), as in DETR: with HF's default std of 0.02 the queries of a
    model trained from scratch stay nearly identical and every pixel ends up with one class.
    """
    model = FAMILIES[config.model_type].hf_class(config)
    for name in ("queries_embedder", "queries_features"):  # Mask2Former learns both the queries and their positions
        if hasattr(model.model.transformer_module, name):
            nn.init.normal_(getattr(model.model.transformer_module, name).weight, std=1.0)
    return QShiftSegmenter(model, *args, **settings)


# -----------------------------------------------------------------------------
# Sharing on the Hugging Face Hub

SETTING_MEANINGS = {  # settings() in words, for model cards
    "shift_div": "1/shift_div of the channels are shifted in time, half from frame t-1 and half from frame t+1 "
                 "(Eq. 1); 0 is the image model run frame by frame",
    "shift_at": "where the channels are shifted: the decoded queries (the paper's place), the pixel embeddings or "
                "the backbone's feature maps",
    "match": "each frame's queries are matched to the previous frame's (Hungarian algorithm, Eq. 2) before the shift",
    "match_by": "what the matching compares: the queries' cosine similarity (Eq. 2) or their predicted masks'",
    "causal": "online: every shifted channel comes from frame t-1, none from a later frame",
    "reach": "how many frames each way the shifted channels come from, split among frames t-1 .. t-reach (and t+1 .. "
             "t+reach); 1 is the paper's",
}


def model_card(model, repo_id, data=None, scores=None):
    """A short model card (a Hub repo's README.md) for a QShiftSegmenter: its settings and what they mean, how to
    load it with qshift and with plain transformers, its classes, and the data set and scores where given."""
    hf_class = FAMILIES[model.family].hf_class.__name__
    rows = [f"| {key} | {json.dumps(value)} | {SETTING_MEANINGS.get(key, 'see qshift.py')} |"
            for key, value in model.settings().items()]
    trained = f"Trained on {data}." if data else "The data set it was trained on was not given."
    scored = "No scores were given."
    if scores:
        scored = "\n".join(["| " + " | ".join(scores) + " |", "|" + "---:|" * len(scores),
                            "| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v)
                                              for v in scores.values()) + " |"])
    classes = ", ".join(f"{i} {name}" for i, name in model.model.config.id2label.items())
    return f"""---
library_name: transformers
pipeline_tag: image-segmentation
tags: [video-semantic-segmentation, qshift, {model.family}]
---

# {repo_id}

A {hf_class} that segments videos with shifted and matched queries (Mizuno and Tamaki, "Shift and matching queries
for video semantic segmentation"): the image model runs on every frame, and a fraction of its decoded query channels
comes from the neighbouring frames. {trained}

{scored}

## Settings

They are config.json's `qshift` entry.

| setting | value | meaning |
|---|---|---|
{chr(10).join(rows)}

## Use

With qshift.py (one file; it needs torch, scipy and transformers):

```python
import qshift
model = qshift.QShiftSegmenter.from_pretrained("{repo_id}").eval()
pixel_values = qshift.frames_to_pixel_values(frames)  # uint8 (T, H, W, 3) -> (T, 3, H, W)
maps = list(qshift.predict_video(model, pixel_values))  # T class maps (H, W)
names = model.model.config.id2label
```

With transformers alone: the image model, frame by frame (the shift needs qshift.py):

```python
from transformers import AutoImageProcessor, {hf_class}
model = {hf_class}.from_pretrained("{repo_id}")
processor = AutoImageProcessor.from_pretrained("{repo_id}")
```

## Classes

{classes}
"""
