"""
Whole videos through a QShiftSegmenter in bounded memory, exactly as one whole-clip run (stream_logits,
predict_video), and the loop that evaluate.py and predict.py share over them: a thread reads frames ahead, and each
frame comes back with its class map as soon as it is known, so that memory holds a few frames whatever the video's
length. Needs qshift.py beside it.

    maps = list(predict_video(model, pixel_values))        # T class maps (H, W), any length, in bounded memory
"""
import collections
import itertools

import torch

from qshift import semantic_segmentation, to_device


def _sliding(batches, shift, causal, reach=1):
    """Apply a shift whose frame t reads frames t-r..t+r (t-r..t when causal), r = reach, to a stream of frame batches.

    batches: iterable of lists of tensors (n, ...) for the next n frames; shift: a function of such a list with a
    leading clip dimension [(1, w, ...)]. Yields lists (m, ...) equal to the shift of the whole stream: the last r
    emitted frames stay as left context (the halo) and r frames are held back for the right (none when causal).
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
def stream_logits(model, frames, chunk=8, amp=None):
    """The model's logits for one clip of any length, streamed in memory bounded by a few chunks of frames.

    frames: iterable of pixel_values (3, H, W). Yields (class_logits (n, Q, L+1), mask_logits (n, Q, H/4, W/4)) in
    float32 for the next n frames, equal to the model's output on the whole clip. The backbone runs `chunk` frames
    at a time; each shift in series keeps `reach` frames of context each side (the past only when causal), so frame
    t waits for frame t+r (t+2r with backbone and a later placement). amp: an autocast dtype (torch.bfloat16,
    torch.float16) or None; every step runs under it. frames may be on any device: CPU ones are uploaded pinned.
    """
    device, frames = next(model.parameters()).device, iter(frames)
    # a decorator: autocast is on during each step's call, never across a yield (it would leak into the caller)
    autocast = torch.autocast(device.type, dtype=amp, enabled=amp is not None)

    def features():  # backbone maps of `chunk` frames at a time
        while batch := list(itertools.islice(frames, chunk)):
            yield autocast(model.backbone)(to_device(torch.stack(batch), device))

    s = model.settings
    stage = features()
    if "backbone" in s.shift_at and s.shift_div:
        stage = _sliding(stage, autocast(model.shift_backbone), s.causal, s.reach)
    stage = (list(autocast(model.decode)(maps)[:2]) for maps in stage)  # [queries, pixel embeddings]
    if {"queries", "pixels"} & set(s.shift_at) and s.shift_div:  # matching by masks runs the heads: autocast too
        stage = _sliding(stage, autocast(lambda window: list(model.shift_decoded(*window))), s.causal, s.reach)
    for queries, pixel_embeddings in stage:
        class_logits, mask_logits = autocast(model.heads)(queries, pixel_embeddings)
        yield class_logits.float(), mask_logits.float()


@torch.no_grad()
def predict_video(model, frames, chunk=8, amp=None, clip_len=None, size=None):
    """Per-frame class maps of one video, streamed: pixel_values (3, H, W) in, class maps (H, W) int64 out on the
    model's device, those of the whole video run as one clip (stream_logits). clip_len=T runs independent clips of T
    frames instead, with zeros shifted in at their ends as in training. A causal model with chunk=1 runs online.
    size: the maps' (H, W) where it is not the frames' (frames scaled down, scored at their labels' size): the class
    scores are resized to it before the argmax (semantic_segmentation)."""
    frames = iter(frames)
    for first in frames:
        clip = itertools.chain([first], frames if clip_len is None else itertools.islice(frames, clip_len - 1))
        for class_logits, mask_logits in stream_logits(model, clip, chunk, amp):
            yield from semantic_segmentation(class_logits, mask_logits, size or first.shape[-2:])


# -----------------------------------------------------------------------------
# the scripts' loop: frames read ahead, each back with its map


def read_ahead(items, pool, ahead):
    """The items of an iterator, each taken by pool (one thread) `ahead` items before it is needed, so that reading
    overlaps the model; an error in the thread is raised here, in the caller's."""
    pending = collections.deque(pool.submit(next, items, None) for _ in range(ahead))
    while (item := pending.popleft().result()) is not None:
        pending.append(pool.submit(next, items, None))
        yield item


def segment(model, frames, chunk=8, amp=None, clip_len=None, online=False, size=None):
    """(frame, class map (H, W) on the model's device) for frames, dicts that hold the frame's "pixel_values"
    (3, H, W), in order, through predict_video: each pair as soon as its map is known; the frames waiting for
    their maps are a few, whatever the video's length. online: a causal model runs one frame at a time, so that each
    map comes as soon as its frame is read (predict.py; evaluation keeps its chunks, which are faster). size: the
    maps' (H, W) where it is not the frames' (see predict_video)."""
    waiting, chunk = collections.deque(), 1 if online and model.settings.causal else chunk

    def pixel_values():
        for frame in frames:
            waiting.append(frame)
            yield frame["pixel_values"]

    for pred in predict_video(model, pixel_values(), chunk, amp, clip_len, size):
        yield waiting.popleft(), pred
