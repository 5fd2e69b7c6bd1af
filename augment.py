"""A training clip's augmentation: one random scale, crop and flip for all its frames, and for each map of its pixels
(labels, cue distances, object ids), so that they stay aligned (data.py's ClipDataset draws it and warps the clip)."""
import torch.nn.functional as F

SCALES = (0.5, 2.0)  # range of the random training scale


def random_geometry(H, W, crop, rng):
    """One random scale, crop and flip for a clip of H x W frames -> (region, size, flip): the frames' region
    (y, x, h, w) is resized to size (at most crop, which is (h, w)), then mirrored if flip. crop=None: flip only."""
    flip = bool(rng.random() < 0.5)
    if crop is None:
        return (0, 0, H, W), (H, W), flip
    scale = rng.uniform(*SCALES)
    h, w = min(crop[0], max(1, round(H * scale))), min(crop[1], max(1, round(W * scale)))
    h0, w0 = min(H, max(1, round(h / scale))), min(W, max(1, round(w / scale)))  # the region in the frame
    return (int(rng.integers(H - h0 + 1)), int(rng.integers(W - w0 + 1)), h0, w0), (h, w), flip


def warp(frames, region, size, flip, out, mode, pad):
    """uint8 (T, C, H, W) -> (T, C, *out): region (y, x, h, w) resized to size, mirrored if flip, padded with pad."""
    y, x, h, w = region
    frames = frames[:, :, y:y + h, x:x + w]
    if (h, w) != tuple(size):  # torch's uint8 kernels: much faster than PIL or float per frame
        frames = F.interpolate(frames, size=size, mode=mode, antialias=mode == "bilinear")
    if flip:
        frames = frames.flip(-1)
    if tuple(out) != tuple(size):
        frames = F.pad(frames, (0, out[1] - size[1], 0, out[0] - size[0]), value=pad)
    return frames.contiguous()
