"""
A video through the model while its frames are read and its maps written (evaluate.py, predict.py): a thread reads
frames ahead, and each frame comes back with its class map as soon as qshift.predict_video has it, so that memory
holds a few frames whatever the video's length.
"""
import collections

import qshift


def read_ahead(items, pool, ahead):
    """The items of an iterator, each taken by pool (one thread) `ahead` items before it is needed, so that reading
    overlaps the model; an error in the thread is raised here, in the caller's."""
    pending = collections.deque(pool.submit(next, items, None) for _ in range(ahead))
    while (item := pending.popleft().result()) is not None:
        pending.append(pool.submit(next, items, None))
        yield item


def segment(model, frames, chunk=8, amp=None, clip_len=None, online=False, size=None):
    """(frame, class map (H, W) on the model's device) for frames, dicts that hold the frame's "pixel_values"
    (3, H, W), in order, through qshift.predict_video: each pair as soon as its map is known; the frames waiting for
    their maps are a few, whatever the video's length. online: a causal model runs one frame at a time, so that each
    map comes as soon as its frame is read (predict.py; evaluation keeps its chunks, which are faster). size: the
    maps' (H, W) where it is not the frames' (see predict_video)."""
    waiting, chunk = collections.deque(), 1 if online and model.settings.causal else chunk

    def pixel_values():
        for frame in frames:
            waiting.append(frame)
            yield frame["pixel_values"]

    for pred in qshift.predict_video(model, pixel_values(), chunk, amp, clip_len, size):
        yield waiting.popleft(), pred
