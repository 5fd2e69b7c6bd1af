"""
The scores of an evaluation: VSPW's official mIoU and pixel accuracy (a confusion matrix), its video consistency
(mVC8, mVC16), and on the synthetic set the accuracy on pixels whose class cue is hidden. Fed one frame at a time, on
any device, holding sums only, so that the ranks of a distributed evaluation add theirs up exactly.
"""
import math

import torch
import torch.distributed as dist

from data import IGNORE_INDEX
from qshift import to_device

TITLES = {"miou": "mIoU", "pixel_acc": "pix. acc.", "mvc8": "mVC8", "mvc16": "mVC16",
          "hidden_miou": "hidden-cue mIoU", "hidden_acc": "hidden-cue acc.",
          "hidden_d1_acc": "hidden d1", "hidden_d2_acc": "hidden d2", "hidden_d3_acc": "hidden d≥3",
          "visible_miou": "visible-object mIoU", "visible_acc": "visible-object acc."}  # in reports, tables and logs
CUE_DISTANCES = (1, 2, 3)  # hidden-cue accuracy by the frames to the nearest frame showing the cue; the last: 3 or more


def percent(x):
    """A score in percent for reports and tables: '51.20', or '–' where there is none (None or NaN)."""
    return "–" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def json_safe(x):
    """NaN -> None (null), recursively through dicts: strict JSON for reports."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    return None if isinstance(x, float) and math.isnan(x) else x


def summary(results, keys=("miou", "pixel_acc", "mvc8", "hidden_miou", "visible_miou")):
    """Scores of results in one line, in percent: 'mIoU 51.20, pix. acc. 93.10, ...' (those of keys it has)."""
    return ", ".join(f"{TITLES[key]} {100 * results[key]:.2f}" for key in keys if key in results)


class SegMetrics:
    """Confusion matrix over the pixels whose ground truth is not ignore (VSPW's official mIoU and pixel accuracy).

    update(pred, label): int tensors of one shape, on any device; counted on `device`, with no wait for a GPU.
    compute() -> {"miou", "pixel_acc", "iou"}: iou is a list of per-class IoUs, NaN for classes absent from the
    ground truth; miou is their mean over the classes present.
    """

    def __init__(self, num_classes, ignore_index=IGNORE_INDEX, device="cpu"):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        # counts of label * K + pred: labels >= K (the ignore index) land past the K x K bins of the confusion matrix,
        # with no boolean indexing (4-5x slower) and no torch.where
        K = num_classes
        self.counts = torch.zeros(max(ignore_index + 1, K) * K, dtype=torch.int64, device=device)
        self.confusion = self.counts[:K * K].view(K, K)  # [ground truth, prediction]

    def update(self, pred, label):
        K, device = self.num_classes, self.counts.device
        # int32 indices: half the memory traffic of int64
        index = label.to(device, torch.int32).reshape(-1) * K + pred.to(device, torch.int32).reshape(-1)
        if index.is_cuda:  # bincount waits for the GPU to size its output; adding into fixed bins does not
            self.counts.index_add_(0, index, torch.ones((), dtype=torch.int64, device=device).expand(len(index)))
        else:  # on the CPU bincount is faster (0.43 against 0.57 ms per 480p frame, 124 classes, one core)
            self.counts += torch.bincount(index, minlength=len(self.counts))

    def compute(self):
        conf = self.confusion.double().cpu()
        tp, gt, pred = conf.diag(), conf.sum(1), conf.sum(0)
        iou = torch.where(gt > 0, tp / (gt + pred - tp), torch.nan)  # (K,)
        present = gt > 0
        miou = iou[present].mean().item() if present.any() else math.nan
        pixel_acc = (tp.sum() / gt.sum()).item() if gt.sum() > 0 else math.nan
        return {"miou": miou, "pixel_acc": pixel_acc, "iou": iou.tolist()}


class VideoConsistency:
    """VSPW's video consistency VC_k (official VC_perclip.py) of one video, fed one frame at a time.

    Window i holds frames i..i+k-1, for i in range(n - k) (so videos of n <= k frames have none, and the last
    possible window is left out, as the official script does). G = pixels whose ground truth is the same in all k
    frames (ignore counts as a label there, as in the official script), P = pixels whose prediction is the same;
    acc_i = |P and G| / |G|, NaN when G is empty (the official nanmean then skips it).
    Equality is transitive, so "same over the window" = "same as the previous frame for the window's last k-1
    frames": per-pixel counts of unchanged frames replace storing k frames.
    """

    def __init__(self, k):
        self.k, self.frames, self.prev, self.accs = k, 0, None, []

    def update(self, pred, label):
        """pred, label: (H, W) int tensors of the next frame."""
        label = label.to(pred.device)
        if self.prev is None:
            self.still_pred = torch.zeros(pred.shape, dtype=torch.int32, device=pred.device)
            self.still_label = torch.zeros_like(self.still_pred)
        else:
            self.still_pred = torch.where(pred == self.prev[0], self.still_pred + 1, 0)
            self.still_label = torch.where(label == self.prev[1], self.still_label + 1, 0)
        self.prev, self.frames = (pred, label), self.frames + 1
        if self.frames >= self.k:  # the window of the last k frames is complete
            g = self.still_label >= self.k - 1
            self.accs.append((g & (self.still_pred >= self.k - 1)).sum() / g.sum())  # 0-d, NaN if G is empty

    def result(self):
        """(sum of acc_i, number of windows) over the windows with a non-empty G."""
        if len(self.accs) < 2:
            return 0.0, 0
        accs = torch.stack(self.accs[:-1]).cpu()  # the official range(n - k) stops one window early
        valid = ~accs.isnan()
        return accs[valid].sum().item(), int(valid.sum())


VC_WINDOWS = (8, 16)  # mVC8, mVC16


class Scores:
    """Every score of an evaluation, fed one frame at a time, as DETR's evaluator objects: update(pred, label,
    cue_distance) for each frame of a video, end_video(v) after video v, then results(class_names).

    It holds sums only, so that the ranks of a distributed evaluation can add theirs up (all_reduce) and each gets
    exactly the scores of one process: confusion matrices (of all pixels, and on the synthetic set of the hidden-cue
    pixels, of those at each cue distance, and of the visible-object pixels), each video's VC_k sums in a row of its
    own (filled by the one rank that scores the video, so that every rank adds up the same numbers in the same
    order), and counts of frames and videos.
    """

    def __init__(self, num_classes, num_videos, background_class=None, device="cpu"):
        names = ["all", "hidden", *(f"hidden_d{d}" for d in CUE_DISTANCES), "visible"]
        self.metrics = {name: SegMetrics(num_classes, device=device) for name in names}
        self.background_class = background_class
        self.vc_sums = torch.zeros(num_videos, 2 * len(VC_WINDOWS), dtype=torch.float64)  # per k: sum of acc_i, windows
        self.counts = {"frames": 0, "labelled": 0, "cued": 0, "videos": 0}  # cued: frames with cue distances
        self.vcs = {k: VideoConsistency(k) for k in VC_WINDOWS}  # of the video being scored

    def update(self, pred, label=None, cue_distance=None):
        """pred, label (H, W) int tensors and cue_distance (H, W) uint8 (the synthetic set's: 0 where the class cue
        shows, else the frames to the nearest frame that shows it) of the video's next frame (None where absent)."""
        self.counts["frames"] += 1
        if label is None:
            return
        label = to_device(label, pred.device)
        self.counts["labelled"] += 1
        self.metrics["all"].update(pred, label)
        for vc in self.vcs.values():
            vc.update(pred, label)
        if cue_distance is not None:
            self.counts["cued"] += 1
            distance = to_device(cue_distance, pred.device)
            hidden = distance > 0
            objects = (label != self.background_class) & (label != IGNORE_INDEX)
            last = CUE_DISTANCES[-1]
            subsets = [("hidden", hidden), ("visible", objects & ~hidden)] + \
                [(f"hidden_d{d}", distance >= d if d == last else distance == d) for d in CUE_DISTANCES]
            for name, where in subsets:
                self.metrics[name].update(pred, torch.where(where, label, IGNORE_INDEX))

    def end_video(self, v):
        """The frames since the last end_video were video v (its index in the data set): store its VC_k sums."""
        for i, k in enumerate(VC_WINDOWS):
            self.vc_sums[v, 2 * i:2 * i + 2] = torch.tensor(self.vcs[k].result(), dtype=torch.float64)
        self.vcs = {k: VideoConsistency(k) for k in VC_WINDOWS}
        self.counts["videos"] += 1

    def all_reduce(self):
        """Add up the sums of every rank (torch.distributed): then each rank holds those of all the videos. Exact:
        integers, and video rows that only one rank fills."""
        device = self.metrics["all"].counts.device  # NCCL reduces CUDA tensors only
        counts = torch.tensor(list(self.counts.values()), device=device)
        vc_sums = self.vc_sums.to(device)
        for sums in [metrics.counts for metrics in self.metrics.values()] + [counts, vc_sums]:
            dist.all_reduce(sums)
        self.counts = dict(zip(self.counts, counts.tolist()))
        self.vc_sums = vc_sums.cpu()

    def results(self, class_names):
        """{"num_videos", "num_frames"} and, with labels: "miou", "pixel_acc", "mvc8", "mvc16" (fractions, NaN where
        undefined) and "iou" {class name: IoU}; with cue distances (the synthetic set) also "hidden_miou",
        "hidden_acc" (pixels of objects whose class cue is hidden in that frame), "hidden_d1_acc", "hidden_d2_acc",
        "hidden_d3_acc" (the hidden pixels 1, 2, and 3 or more frames from a frame that shows the cue; NaN where there
        are none) and "visible_miou", "visible_acc" (the other object pixels)."""
        results = {"num_videos": self.counts["videos"], "num_frames": self.counts["frames"]}
        if self.counts["labelled"]:
            scores = self.metrics["all"].compute()
            results.update(miou=scores["miou"], pixel_acc=scores["pixel_acc"])
            sums = self.vc_sums.sum(0).tolist()  # mVC_k: sum over all windows / number of windows (official nanmean)
            for i, k in enumerate(VC_WINDOWS):
                results[f"mvc{k}"] = sums[2 * i] / sums[2 * i + 1] if sums[2 * i + 1] else math.nan
            results["iou"] = dict(zip(class_names, scores["iou"]))
        if self.counts["cued"]:
            for name in ("hidden", "visible"):
                scores = self.metrics[name].compute()
                results[f"{name}_miou"], results[f"{name}_acc"] = scores["miou"], scores["pixel_acc"]
            for d in CUE_DISTANCES:
                results[f"hidden_d{d}_acc"] = self.metrics[f"hidden_d{d}"].compute()["pixel_acc"]
        return results
