"""
The memory of one training step: known before a run starts (train.py --estimate-memory), and cut by recomputing
activations in backward instead of keeping them (train.py --gradient-checkpointing). See docs/memory.md.

    checkpoint_activations(model)        # a QShiftSegmenter whose blocks recompute their activations in backward
    figures = estimate(swin_config, clip_len=16, crop=(480, 480), amp=torch.bfloat16)
    print(table(figures))                # parameters, gradients, AdamW, activations by part, the peak

The estimate is one training step traced on fake tensors (torch's FakeTensorMode): every operation runs on shapes and
dtypes alone, nothing is computed or allocated, so the paper's 16-frame clip takes seconds on any machine, with the
device's own dtypes under autocast (CPU and CUDA autocast cast slightly different operations). Every storage made in
the step is followed from the operation that makes it to the one after which it is freed: the peak is the largest sum
of live storages, and a storage saved for backward counts as an activation of the part that saved it.

    python memory.py                     # docs/memory.md's table: what fits on which card
"""
import contextlib
import functools
import itertools
import json
import math
import weakref
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch
from huggingface_hub import try_to_load_from_cache
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig

import cli
import data
import matcher
import qshift
from cli import fail
from tiny import build_model, tiny_config

GIB = 2**30
TARGETS_PER_FRAME = 10  # target masks (classes) per frame the estimate assumes: about VSPW's
PARTS = ("backbone", "pixel decoder", "transformer decoder", "heads and loss")

# -----------------------------------------------------------------------------
# activation checkpointing


def recomputed_blocks(model):
    """What checkpointing recomputes in a QShiftSegmenter, as (module, name of the method) pairs: every Swin block of
    the backbone, the layers of the pixel decoder (MaskFormer's FPN; Mask2Former's deformable-attention layers and
    its 1/4-scale FPN level), every transformer decoder layer and, for MaskFormer, the loss's mask terms, which
    upsample every matched mask to the frame's size (Mask2Former's sample 12544 points of each: checkpointed, they
    would keep their input, the mask logits, which is more). What stays saved is each one's input."""
    hf = model.model.model
    blocks = [block for stage in hf.pixel_level_module.encoder.modules() if hasattr(stage, "blocks")
              for block in stage.blocks]
    decoder = hf.pixel_level_module.decoder
    if model.family == "maskformer":
        blocks += [decoder.fpn.stem, *decoder.fpn.layers]
    else:
        blocks += [*decoder.encoder.layers, decoder.adapter_1, decoder.layer_1]
    blocks = [(block, "forward") for block in blocks + list(hf.transformer_module.decoder.layers)]
    return blocks + [(model.model.criterion, "loss_masks")] if model.family == "maskformer" else blocks


def checkpoint_activations(model):
    """Make model's recomputed_blocks keep only their inputs for backward, recomputing the rest there (the same
    losses and gradients: torch.utils.checkpoint replays each block's dropout and drop path with the random state
    of the forward). Only in training with gradients on; evaluation runs as before. Returns model.

    HF's own switch (activation_checkpointing_enable, formerly gradient_checkpointing_enable) refuses both
    MaskFormerForInstanceSegmentation and Mask2FormerForUniversalSegmentation in transformers 5.25, covers no pixel
    decoder, and nests Swin's stages and blocks in Mask2Former's backbone (three forwards); so the blocks are
    wrapped here, one way for both families."""
    for block, method in recomputed_blocks(model):
        setattr(block, method, functools.partial(_recomputed, block, method))  # a deep copy gets its own
    return model


def _recomputed(block, method, *args, **kwargs):
    compute = getattr(type(block), method).__get__(block)  # the class's, which this instance's attribute hides
    if not (block.training and torch.is_grad_enabled()):
        return compute(*args, **kwargs)
    return checkpoint(compute, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)


# -----------------------------------------------------------------------------
# the trace: every storage made in one training step, with its bytes, lifetime and part


def parts(model):
    """The modules of a QShiftSegmenter's parts, by name; what runs outside them (heads, shift, loss) is the last."""
    hf = model.model.model
    return dict(zip(PARTS, (hf.pixel_level_module.encoder, hf.pixel_level_module.decoder, hf.transformer_module)))


@dataclass
class Storage:
    """One storage that the step makes: a block of memory on the device."""
    nbytes: int
    made: int  # the operation that made it (they are counted from 1); it is live from this one
    freed: float = math.inf  # the last operation it was live in
    part: str = None  # the part that saved it for backward, if one did
    what: str = ""  # the operation and the shape, for the table


class Trace(TorchDispatchMode):
    """Under a FakeTensorMode: follows every storage that operations make (not those of `known` tensors, the
    parameters), from the operation that makes it to the last one before Python frees it, and (`saving`) which ones
    autograd saves for backward, by part. round_to: the allocator's granularity in bytes (CUDA's caching allocator
    rounds every block up to 512 bytes)."""

    def __init__(self, known, round_to=1):
        super().__init__()
        self.known = {t.untyped_storage()._cdata for t in known}
        self.round_to, self.ops, self.storages, self.live = round_to, 0, [], {}  # live: storage key -> index
        self.part = [PARTS[-1]]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].dtype == torch.bool:
            return True  # fake tensors have no values: HF's check, in training, that activations are finite, holds
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._made(t, f"{func.__name__} {tuple(t.shape)} {str(t.dtype)[6:]}")
        return out

    def _made(self, t, what):
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self.live or key in self.known:  # a view or an in-place result
            return
        self.live[key] = len(self.storages)
        self.storages.append(Storage(-(-storage.nbytes() // self.round_to) * self.round_to, self.ops, what=what))
        weakref.finalize(storage, self._freed, key)

    def _freed(self, key):
        self.storages[self.live.pop(key)].freed = self.ops

    def index(self, t):
        """The index in .storages of tensor t's storage, or None if it is not followed (a parameter's)."""
        return self.live.get(t.untyped_storage()._cdata)

    @contextlib.contextmanager
    def saving(self, model):
        """Marks the storages saved for backward meanwhile with the part running then (module hooks keep .part up to
        date). Tensors saved inside a checkpointed block are the checkpoint's, not kept: only its inputs are saved
        here."""
        def pack(t):
            i = self.index(t)
            if i is not None and self.storages[i].part is None:
                self.storages[i].part = self.part[-1]
            return t

        def leave(*_):  # returns None: a forward hook's result would replace the module's output
            self.part.pop()

        hooks = [h for name, module in parts(model).items() for h in (
            module.register_forward_pre_hook(lambda *_, name=name: self.part.append(name)),
            module.register_forward_hook(leave))]
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                yield
        finally:
            for hook in hooks:
                hook.remove()

    def peak(self):
        """(operation, bytes): where the live storages add up to the most."""
        change = {}
        for s in self.storages:
            change[s.made] = change.get(s.made, 0) + s.nbytes
            if s.freed < math.inf:
                change[s.freed + 1] = change.get(s.freed + 1, 0) - s.nbytes
        now, best = 0, (0, 0)
        for op in sorted(change):
            now += change[op]
            best = max(best, (now, op))
        return best[1], best[0]


def _same_order(q):
    """Stands in for qshift.match_queries in the trace: the Hungarian algorithm needs values, which fake tensors
    lack; matching saves nothing for backward, and its permutation (B, T, Q) has that size whichever it is."""
    B, T, Q, _ = q.shape
    return torch.arange(Q, device=q.device).repeat(B, T, 1)


def _diagonal_pairs(self, masks_queries_logits, class_queries_logits, mask_labels, class_labels):
    """Stands in for the loss's matcher in the trace: query i to target i, as many pairs as Hungarian matching
    gives (min(Q, K_i) per frame), so the loss supervises tensors of the same sizes. Its cost matrices, skipped,
    are a frame's (Q, h*w) temporaries under no_grad, a few MiB."""
    Q = masks_queries_logits.shape[1]
    return [(torch.arange(min(Q, len(c)), device=c.device),) * 2 for c in class_labels]


# -----------------------------------------------------------------------------
# the estimate


def estimate(config, settings=None, batch_size=1, clip_len=16, crop=(480, 480), amp=None, checkpointing=False,
             device="cpu", targets=TARGETS_PER_FRAME):
    """The memory of one training step of a QShiftSegmenter built from `config` (an HF MaskFormerConfig or
    Mask2FormerConfig, random weights; settings: qshift.Settings' keywords) on batch_size clips of clip_len frames
    of crop (H, W), each frame with `targets` target masks; amp: an autocast dtype or None; checkpointing:
    checkpoint_activations. Traced on fake tensors of `device` (see the module's docstring); a steady step: AdamW's
    states are there from the first step on. Returns a dict of GiB figures: params, grads, optimizer (AdamW's two
    states), batch (frames and target masks), activations (saved for backward) and activations_by_part, peak (all
    at the worst moment of the step) with peak_phase (forward or backward) and peak_temporaries (live at the peak,
    neither saved nor gradients), largest_temporaries [(operation and shape, GiB)]; and the setting traced."""
    device = torch.device(device)
    fake = FakeTensorMode(allow_non_fake_inputs=True)  # takes the meta parameters below
    # built on the meta device: nothing initialised (HF's init reads values, e.g. Swin's drop path rates, which a
    # fake tensor lacks), then given fake storage on the device
    with torch.device("meta"):
        model = build_model(config, **(settings or {}))
    with fake:
        model.to_empty(device=device)
    matcher.install(model.model)  # as train.py
    if checkpointing:
        checkpoint_activations(model)
    model.train()
    params = list(model.parameters())
    trace = Trace(params + list(model.buffers()), round_to=512 if device.type == "cuda" else 1)
    frames = batch_size * clip_len
    with (fake, trace, mock.patch.object(qshift, "match_queries", _same_order),
          mock.patch.object(matcher.HungarianMatcher, "forward", _diagonal_pairs)):
        pixel_values = torch.empty(batch_size, clip_len, 3, *crop, device=device)
        mask_labels = [torch.empty(targets, *crop, device=device) for _ in range(frames)]
        class_labels = [torch.arange(targets, device=device) % config.num_labels for _ in range(frames)]
        batch = len(trace.storages)
        with trace.saving(model), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = model(pixel_values, mask_labels, class_labels).loss
        forward_ops = trace.ops
        loss.backward()
    grads = {trace.index(p.grad) for p in params if p.grad is not None}
    param_bytes = sum(-(-p.untyped_storage().nbytes() // trace.round_to) * trace.round_to for p in params)
    grad_bytes = sum(trace.storages[i].nbytes for i in grads)
    optimizer_bytes = 2 * grad_bytes  # AdamW's exp_avg and exp_avg_sq, float32 as the parameters with gradients
    op, traced_peak = trace.peak()
    kept = [i for i, s in enumerate(trace.storages) if s.part is not None and i >= batch]
    temporaries = sorted((s for i, s in enumerate(trace.storages) if s.made <= op <= s.freed and i >= batch
                          and s.part is None and i not in grads), key=lambda s: -s.nbytes)
    return dict(
        params_gib=param_bytes / GIB, grads_gib=grad_bytes / GIB, optimizer_gib=optimizer_bytes / GIB,
        batch_gib=sum(s.nbytes for s in trace.storages[:batch]) / GIB,
        activations_gib=sum(trace.storages[i].nbytes for i in kept) / GIB,
        activations_by_part={part: sum(trace.storages[i].nbytes for i in kept if trace.storages[i].part == part) / GIB
                             for part in PARTS},
        peak_gib=(param_bytes + optimizer_bytes + traced_peak) / GIB,
        peak_phase="forward" if op <= forward_ops else "backward",
        peak_temporaries_gib=sum(s.nbytes for s in temporaries) / GIB,
        largest_temporaries=[(s.what, s.nbytes / GIB) for s in temporaries[:3]],
        model=config.model_type, device=device.type, batch_size=batch_size, clip_len=clip_len, crop=list(crop),
        precision={None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp],
        gradient_checkpointing=checkpointing, targets_per_frame=targets)


def table(figures):
    """The figures of `estimate` as a readable table."""
    f = figures
    lines = [f"memory of one training step ({f['model']}, {f['batch_size']} x {f['clip_len']} frames of "
             f"{f['crop'][0]}x{f['crop'][1]}, {f['precision']}, gradient checkpointing "
             f"{'on' if f['gradient_checkpointing'] else 'off'}, {f['targets_per_frame']} target masks per frame "
             f"assumed), traced on {f['device']}, in GiB:",
             f"  {'parameters':34}{f['params_gib']:8.3f}",
             f"  {'gradients':34}{f['grads_gib']:8.3f}",
             f"  {'AdamW states':34}{f['optimizer_gib']:8.3f}",
             f"  {'batch (frames, target masks)':34}{f['batch_gib']:8.3f}",
             f"  {'activations saved for backward':34}{f['activations_gib']:8.3f}"]
    lines += [f"    {part:32}{gib:8.3f}" for part, gib in f["activations_by_part"].items()]
    lines += [f"  {'temporaries at the peak':34}{f['peak_temporaries_gib']:8.3f}   largest: " +
              ", ".join(f"{what} {gib:.3f}" for what, gib in f["largest_temporaries"]),
              f"  {'peak, in ' + f['peak_phase']:34}{f['peak_gib']:8.3f}   (parameters, AdamW states and what is "
              f"live then)"]
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# train.py --estimate-memory, and docs/memory.md's table


def model_config(name):
    """The HF config of --model `name`, a MaskFormer or Mask2Former: a local folder, or a hub id in the Hugging Face
    cache, read without its weights and without the network; one line and exit status 2 if neither."""
    cli.check_model_path("--model", name)
    try:
        path = Path(name).expanduser() if cli.is_local(name) else try_to_load_from_cache(str(name), "config.json")
    except ValueError:  # not a hub id at all
        path = None
    if path is None or not isinstance(path, (str, Path)):
        fail(f"--model {name}: not in the Hugging Face cache; download it on a connected machine (`hf download {name} "
             f"config.json` is enough for the estimate) or pass a local folder")
    try:
        config = AutoConfig.from_pretrained(Path(path).parent if Path(path).is_file() else path)
    except Exception as e:  # a broken config fails in many ways
        fail(f"--model {name}: cannot read its config ({cli.first_line(e)})")
    if config.model_type not in qshift.FAMILIES:
        fail(f"--model {name}: a {config.model_type} model, not a MaskFormer or Mask2Former")
    return config


def report(config, settings, model, tiny, flags):
    """train.py --estimate-memory: print the estimate of one training step of train.py's `config` (its dict; the
    shift's settings in `settings`) as a table, then as one line of JSON; returns 0. model: --model, or the run's
    OUT/last with --resume; tiny: train.py's names of the tiny models and their families; flags: its flags for the
    settings, which a refused one names. Reads no weights, and no data but own clips' (their classes and one clip's
    size): VSPW's and Cityscapes' classes are known."""
    classes = {"vspw": data.VSPW_NUM_CLASSES, "cityscapes-vps": len(data.CITYSCAPES_CLASSES)}.get(config["data"])
    crop = config["crop"] and tuple(config["crop"])
    if classes is None:  # the synthetic set or own clips: as training builds them, for their classes and frame size
        try:
            dataset = data.build_dataset(config["data"], config["root"], "train", config["clip_len"], crop=crop,
                                         min_frames=config["min_frames"], **config["world"])
            classes, crop = dataset.num_classes, dataset.crop or tuple(dataset[0]["pixel_values"].shape[-2:])
        except data.DataError as e:
            fail(str(e))
    if str(model) in tiny:
        hf_config = tiny_config(classes, hidden_size=256, family=tiny[str(model)])  # as train.py builds it
    else:
        hf_config = model_config(model)
        settings = {**qshift.saved_settings(hf_config), **settings}  # as QShiftSegmenter.from_pretrained
        hf_config.num_labels = classes  # a class head for the data set's classes, as training gives it
    device = cli.device(config["device"])
    try:
        figures = estimate(hf_config, settings, config["batch_size"], config["clip_len"], crop,
                           cli.amp_dtype(config["amp"], device), config["gradient_checkpointing"], device)
    except qshift.SettingError as e:  # a setting that does not fit the model
        fail(cli.refusal(e, flags))
    print(table(figures))
    print(json.dumps(figures))
    return 0


CARDS_GB = (16, 24, 40, 80)
FITS = 0.9  # a card fits a peak up to this fraction of its memory: the rest for the CUDA context and the allocator


def fits_table():
    """docs/memory.md's table (Markdown): the paper's two settings, MaskFormer and Mask2Former with Swin-T (the
    architectures of facebook/maskformer-swin-tiny-ade and facebook/mask2former-swin-tiny-ade-semantic, built
    offline), float32 and bf16, with and without checkpointing, against cards of CARDS_GB."""
    from bench import swin_tiny_config

    settings = {"VSPW": (16, (480, 480), 124, dict(shift_div=16)),
                "Cityscapes-VPS": (6, (512, 1024), 19, dict(shift_div=32))}
    rows = ["| setting | model | precision | checkpointing | activations (GiB) | peak (GiB) | " +
            " | ".join(f"{gb} GB" for gb in CARDS_GB) + " |", "|" + "---|" * (6 + len(CARDS_GB))]
    for name, (clip_len, crop, classes, shift) in settings.items():
        for family in ("maskformer", "mask2former"):
            config = swin_tiny_config(family)
            config.num_labels = classes
            for amp, checkpointing in itertools.product((None, torch.bfloat16), (False, True)):
                f = estimate(config, shift, 1, clip_len, crop, amp, checkpointing)
                fits = ["yes" if f["peak_gib"] <= FITS * gb else "tight" if f["peak_gib"] <= gb else "no"
                        for gb in CARDS_GB]
                rows.append(f"| {name}, {clip_len} x {crop[0]}x{crop[1]} | {family} | {f['precision']} | "
                            f"{'on' if checkpointing else 'off'} | {f['activations_gib']:.1f} | {f['peak_gib']:.1f} | "
                            + " | ".join(fits) + " |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(fits_table())
