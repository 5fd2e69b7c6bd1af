"""
Evaluate a trained qshift model: mIoU, pixel accuracy, VSPW's video consistency (mVC8, mVC16), per-class IoU,
saved predictions, pictures like the paper's Figures 2-3, and the paper's Tables 1-2 from several runs.

    python evaluate.py --checkpoint RUN/best [--data vspw --root ROOT] [--split val] [--clip-len T] [--world KNOBS]
        [--save-predictions DIR] [--visualize DIR --num-vis N --vis-frames A B] [--max-videos N] [--amp]
        [--device cuda]
        -> RUN/eval-<data>-<split>.json and .md (own clips: eval-clips-<folder>-<split>.*; a synthetic world's
           knobs after the data set, eval-synthetic-hide_run3-val.*; -clip<T> added with --clip-len T, -first<N>
           with --max-videos N)
    python evaluate.py --table RUN [RUN ...] [--data D] [--root ROOT] [--split S] [--clip-len T] [--out FILE]

--data, --root and --world default to those the run was trained on (RUN/config.json); --split to val (own clips
without a ROOT/val.txt: all, every video). Each evaluation's file names say what was scored, so none replaces another
of other data, another world, split or clip length, and a quick look (--max-videos) never replaces a whole evaluation.
--table finds each run's evaluation of the data set and split that every run has (or those given).

Whole videos run in memory bounded by a few frames (qshift.predict_video); the maps equal those of the whole video
run as one clip.

Under torch.distributed (train.py's validation with torchrun), evaluate() scores only this rank's share of the videos
and adds up the ranks' sums, so that every rank returns the scores of all the videos, equal to one process's.
"""
import json
import math
import re
from pathlib import Path

from cli import check_at_least, check_checkpoint, count, fail, first_line, make_parser, parse_world, world_name

DATA_SETS = ("vspw", "cityscapes-vps", "clips", "synthetic")


def scored(data, root, split, world=None):
    """What an evaluation scored, in its file names: the data set (own clips: and their folder's name; synthetic: the
    world's knobs that differ from the default, cli.world_name) and split."""
    if data == "clips" and root:
        return f"{data}-{Path(root).resolve().name}-{split}"
    return f"{data}{world_name(world or {})}-{split}"


def eval_name(data, split, clip_len=None, max_videos=None, root=None, world=None):
    """File name (no suffix) of an evaluation in its run folder: it names what was scored, the clip length and the
    number of videos, so that no evaluation replaces another of something else."""
    return (f"eval-{scored(data, root, split, world)}" + (f"-clip{clip_len}" if clip_len else "")
            + (f"-first{max_videos}" if max_videos else ""))


def parse_args(argv=None):
    """evaluate.py's flags, checked, with --data, --root and --split filled in (see above); a bad one exits with one
    line. It needs no torch: see cli.py."""
    parser = make_parser(__doc__)
    parser.add_argument("--checkpoint", help="a folder written by train.py (RUN/best); results go to RUN/")
    parser.add_argument("--table", nargs="+", metavar="RUN", help="make the results table of these runs instead")
    parser.add_argument("--data", choices=DATA_SETS, help="the data set (default: the run's, from RUN/config.json)")
    parser.add_argument("--root", help="the data set's folder (default: the run's, for its data set; with --table: "
                        "tabulate the evaluations of this folder)")
    parser.add_argument("--split", help="default: val; own clips: val when ROOT/val.txt lists videos, else all")
    parser.add_argument("--world", type=parse_world, metavar="KNOBS", help="synthetic data: the world's knobs, e.g. "
                        "hide_run=3,speed=8 (default: the run's; with --table: tabulate evaluations of that world)")
    parser.add_argument("--clip-len", type=int, help="independent clips of T frames instead of whole videos "
                        "(with --table: tabulate those evaluations)")
    parser.add_argument("--save-predictions", metavar="DIR", help="DIR/<video>/<frame>.png in the raw label ids")
    parser.add_argument("--visualize", metavar="DIR", help="DIR/<video>.png: image, ground truth, prediction")
    parser.add_argument("--num-vis", type=int, default=4, help="videos to draw with --visualize (4)")
    parser.add_argument("--vis-frames", type=int, nargs=2, metavar=("A", "B"), help="draw frames A..B of each video "
                        "(default: 6 frames spread over the video)")
    parser.add_argument("--max-videos", type=int, help="evaluate the first N videos only (a quick look)")
    parser.add_argument("--chunk", type=int, default=8, help="frames the image model runs on at once (8)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    parser.add_argument("--out", help="with --table: also write the table to this file")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.table is None):
        fail("give either --checkpoint (evaluate a model) or --table (tabulate runs)")
    check_at_least(args, {"--clip-len": 1, "--num-vis": 0, "--chunk": 1, "--max-videos": 1})
    if args.vis_frames and not 0 <= args.vis_frames[0] <= args.vis_frames[1]:
        fail(f"--vis-frames {args.vis_frames[0]} {args.vis_frames[1]}: give frames A <= B, counted from 0")
    if args.table:
        if args.out and not Path(args.out).parent.is_dir():
            fail(f"--out {args.out}: no such folder {Path(args.out).parent}")
        return args
    checkpoint = Path(args.checkpoint)
    check_checkpoint("--checkpoint", checkpoint)
    config = checkpoint.parent / "config.json"  # what train.py ran
    trained = {}
    if config.is_file():
        try:
            trained = json.loads(config.read_text())
        except (OSError, ValueError) as e:
            fail(f"--checkpoint {checkpoint}: cannot read {config} ({first_line(e)})")
    if args.data is None and trained.get("data") not in DATA_SETS:
        fail(f"--checkpoint {checkpoint} needs --data: no {config} tells the data set it was trained on")
    args.data = args.data or trained["data"]
    if args.root is None and args.data == trained.get("data"):
        args.root = trained.get("root")
    if args.world is None:  # the world the run was trained in, if it was trained on the synthetic set
        args.world = (trained.get("world") or {}) if args.data == trained.get("data") == "synthetic" else {}
    elif args.world and args.data != "synthetic":
        fail(f"--world: only the synthetic data set has knobs, not --data {args.data}")
    if args.split is None:  # own clips: the videos listed in ROOT/val.txt, or else all of them
        no_val = args.data == "clips" and args.root is not None and not (Path(args.root) / "val.txt").is_file()
        args.split = "all" if no_val else "val"
    if args.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        fail(f"--device {args.device}: use cpu, cuda or cuda:N")
    return args


# Flags are read before the imports below (2-4 s, torch and transformers), so that --help and mistakes answer at once;
# the same pattern in train.py and bench.py.
if __name__ == "__main__":
    args = parse_args()

import collections  # noqa: E402
import itertools  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import transformers  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402
from tqdm import tqdm  # noqa: E402

import data  # noqa: E402
import qshift  # noqa: E402

# -----------------------------------------------------------------------------
# metrics

TITLES = {"miou": "mIoU", "pixel_acc": "pix. acc.", "mvc8": "mVC8", "mvc16": "mVC16",
          "hidden_miou": "hidden-cue mIoU", "hidden_acc": "hidden-cue acc.",
          "hidden_d1_acc": "hidden d1", "hidden_d2_acc": "hidden d2", "hidden_d3_acc": "hidden d≥3",
          "visible_miou": "visible-object mIoU", "visible_acc": "visible-object acc."}  # in reports, tables and logs
CUE_DISTANCES = (1, 2, 3)  # hidden-cue accuracy by the frames to the nearest frame showing the cue; the last: 3 or more


def summary(results, keys=("miou", "pixel_acc", "mvc8", "hidden_miou", "visible_miou")):
    """Scores of results in one line, in percent: 'mIoU 51.20, pix. acc. 93.10, ...' (those of keys it has)."""
    return ", ".join(f"{TITLES[key]} {100 * results[key]:.2f}" for key in keys if key in results)


class SegMetrics:
    """Confusion matrix over the pixels whose ground truth is not ignore (VSPW's official mIoU and pixel accuracy).

    update(pred, label): int tensors of one shape, on any device; counted on `device`, with no wait for a GPU.
    compute() -> {"miou", "pixel_acc", "iou"}: iou is a list of per-class IoUs, NaN for classes absent from the
    ground truth; miou is their mean over the classes present.
    """

    def __init__(self, num_classes, ignore_index=data.IGNORE_INDEX, device="cpu"):
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


def video_consistency(preds, labels, k):
    """VC_k terms of one video: preds, labels (n, H, W) int tensors -> (sum of acc_i, number of windows).

    mVC_k of a dataset = sum over videos of the sums / sum of the numbers of windows (the official nanmean).
    """
    vc = VideoConsistency(k)
    for pred, label in zip(preds, labels):
        vc.update(pred, label)
    return vc.result()


VC_WINDOWS = (8, 16)  # mVC8, mVC16


class Scores:
    """Every score of an evaluation, fed one frame at a time, as DETR's evaluator objects: update(pred, label,
    cue_distance) for each frame of a video, end_video(v) after video v, then results(class_names).

    It holds sums only, so that the ranks of a distributed evaluation can add theirs up (all_reduce) and each gets
    exactly the scores of one process: confusion matrices (of all pixels, and on the synthetic set of the hidden-cue
    pixels, of those at each cue distance, and of the visible-object pixels), each video's VC_k sums in a row of its
    own (filled by the one rank that scores
    the video, so that every rank adds up the same numbers in the same order), and counts of frames and videos.
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
        label = label.to(pred.device, non_blocking=True)  # no wait from pinned memory (evaluate pins on CUDA)
        self.counts["labelled"] += 1
        self.metrics["all"].update(pred, label)
        for vc in self.vcs.values():
            vc.update(pred, label)
        if cue_distance is not None:
            self.counts["cued"] += 1
            distance = cue_distance.to(pred.device, non_blocking=True)
            hidden = distance > 0
            objects = (label != self.background_class) & (label != data.IGNORE_INDEX)
            last = CUE_DISTANCES[-1]
            subsets = [("hidden", hidden), ("visible", objects & ~hidden)] + \
                [(f"hidden_d{d}", distance >= d if d == last else distance == d) for d in CUE_DISTANCES]
            for name, where in subsets:
                self.metrics[name].update(pred, torch.where(where, label, data.IGNORE_INDEX))

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


# -----------------------------------------------------------------------------
# pictures and saved predictions

VIS_FRAMES = 6  # rows of a video's picture: frames spread evenly over the video
VIS_WIDTH = 480  # wider frames are scaled down in pictures


def _voc_palette():
    """(256, 3) uint8: the PASCAL VOC colour map (bits of the id spread over R, G, B), 256 distinct colours."""
    ids = np.arange(256)
    palette = np.zeros((256, 3), np.uint8)
    for j in range(3):
        for c in range(3):  # bit 3j + c of the id -> bit 7 - j of channel c
            palette[:, c] |= (((ids >> (3 * j + c)) & 1) << (7 - j)).astype(np.uint8)
    return palette


VOC_PALETTE = _voc_palette()


def class_colours(palette=None):
    """(256, 3) uint8, the colour of each class id: palette's where given ((K, 3) colours of classes 0..K-1: a data
    set's own, e.g. synthetic's objects' colours or Cityscapes' official ones, or those a checkpoint keeps in its
    config), else the PASCAL VOC colour map by VSPW's raw id (class + 1); ignore is black."""
    colours = VOC_PALETTE[(np.arange(256) + 1) % 256]
    if palette is not None:
        colours[:len(palette)] = palette
    colours[data.IGNORE_INDEX] = 0
    return colours


def colorize(labels, colours):
    """Class map (H, W) -> uint8 RGB (H, W, 3) in colours (class_colours)."""
    return colours[np.asarray(labels, dtype=np.int64)]


def to_rgb(pixel_values):
    """Normalised pixel_values (3, H, W) -> uint8 RGB (H, W, 3)."""
    mean, std = torch.tensor(qshift.MEAN).view(3, 1, 1), torch.tensor(qshift.STD).view(3, 1, 1)
    rgb = (pixel_values.float().cpu() * std + mean).clamp(0, 1).mul(255).round().byte()
    return rgb.permute(1, 2, 0).numpy()


LEGEND_LINE, LEGEND_SWATCH = 16, 12  # pixels: a legend's line height, the side of a class's colour square


def legend_layout(classes, class_names, width, font):
    """Where a legend of classes goes in a picture `width` pixels wide: [(class, "id name", x, y)], the entries in the
    order given, wrapped into lines LEGEND_LINE apart (y from 0)."""
    entries, x, y = [], 4, 0
    for c in classes:
        text = f"{c} {class_names[c]}"
        size = LEGEND_SWATCH + 4 + font.getbbox(text)[2]
        if x + size > width and x > 4:
            x, y = 4, y + LEGEND_LINE
        entries.append((c, text, x, y))
        x += size + 12
    return entries


def draw_legend(draw, entries, colours, top, font):
    """Draw legend_layout's entries with ImageDraw draw, their first line at `top`: a square of each class's colour
    (class_colours), then its id and name."""
    for c, text, x, y in entries:
        draw.rectangle([x, top + y + 2, x + LEGEND_SWATCH - 1, top + y + LEGEND_SWATCH + 1],
                       fill=tuple(colours[c].tolist()))
        draw.text((x + LEGEND_SWATCH + 4, top + y), text, fill="black", font=font)


def draw_video(rows, class_names, colours):
    """A picture like the paper's Figures 2-3: one row per frame, columns image, ground truth (if any), prediction.

    rows: [(frame index, pixel_values (3, H, W), labels (H, W) or None, prediction (H, W))] (CPU); colours: see
    class_colours. Frame indices on the left, column titles above, a legend of the classes present below; frames
    wider than VIS_WIDTH are scaled down. Returns a PIL RGB image.
    """
    H, W = rows[0][1].shape[-2:]
    scale = min(1.0, VIS_WIDTH / W)
    h, w = round(H * scale), round(W * scale)
    titles = ["image"] + (["ground truth"] if rows[0][2] is not None else []) + ["prediction"]
    cells = [[Image.fromarray(to_rgb(x)).resize((w, h), Image.BILINEAR)]
             + [Image.fromarray(colorize(m, colours)).resize((w, h), Image.NEAREST) for m in (y, p) if m is not None]
             for _, x, y, p in rows]
    present = sorted({int(c) for _, _, y, p in rows for m in (y, p) if m is not None for c in m.unique()}
                     - {data.IGNORE_INDEX})
    font, line, gap = ImageFont.load_default(), LEGEND_LINE, 2  # gap: white between cells
    left = 8 + max(font.getbbox(text)[2] for text in ["frame"] + [str(t) for t, *_ in rows])  # the frame numbers
    width = left + len(titles) * (w + gap) - gap
    entries = legend_layout(present, class_names, width, font)
    top, bottom = line, line + len(rows) * (h + gap)  # the grid's rows
    picture = Image.new("RGB", (width, bottom + (entries[-1][3] + line + 4 if entries else 0)), "white")
    draw = ImageDraw.Draw(picture)
    for col, title in enumerate(["frame"] + titles):
        draw.text((2 if col == 0 else left + (col - 1) * (w + gap) + 2, 2), title, fill="black", font=font)
    for r, row in enumerate(cells):
        draw.text((2, top + r * (h + gap) + 2), str(rows[r][0]), fill="black", font=font)
        for col, cell in enumerate(row):
            picture.paste(cell, (left + col * (w + gap), top + r * (h + gap)))
    draw_legend(draw, entries, colours, bottom, font)
    return picture


def save_picture(rows, class_names, colours, path):
    """draw_video's picture as a PNG at path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_video(rows, class_names, colours).save(path)


def raw_palette(dataset, colours, num_classes):
    """(256, 3) uint8: colours (class_colours) by the data set's raw label ids, for palette PNGs of to_raw maps."""
    palette = np.zeros((256, 3), np.uint8)
    classes = np.arange(num_classes)
    palette[dataset.raw_lut[classes]] = colours[classes]
    return palette


def save_prediction(raw, path, palette):
    """One class map in the data set's raw ids, uint8 (H, W) (dataset.to_raw), as a palette PNG at path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(raw)
    image.putpalette(palette.tobytes())
    image.save(path)


# -----------------------------------------------------------------------------
# evaluation of a data set


def read_ahead(dataset, videos, pool, ahead, pin=False):
    """Every frame of the videos, in order, as dataset.frame's dicts, each read by pool (a thread) `ahead` frames
    before it is taken, so that reading overlaps the model. pin: labels and cue_distance in pinned memory, from which
    they go to the GPU without a wait."""
    def read(v, t):
        frame = dataset.frame(v, t)
        return {k: x.pin_memory() if pin and k in ("labels", "cue_distance") else x for k, x in frame.items()}

    todo = ((v, t) for v in videos for t in range(len(dataset.videos[v][1])))
    pending = collections.deque(pool.submit(read, v, t) for v, t in itertools.islice(todo, ahead))
    while pending:
        frame = pending.popleft().result()  # a reading error (DataError) is raised here, in the caller's thread
        pending.extend(pool.submit(read, v, t) for v, t in itertools.islice(todo, 1))
        yield frame


def _pixel_values(frames, n, read):
    """The pixel_values of the next n frames, each frame's dict kept in the queue `read` until its prediction comes."""
    for frame in itertools.islice(frames, n):
        read.append(frame)
        yield frame["pixel_values"]


@torch.no_grad()
def evaluate(model, dataset, device=None, clip_len=None, amp=False, progress=True, save_predictions=None,
             visualize=None, num_vis=4, chunk=8, max_videos=None, vis_frames=None):
    """Run `model` on every video of `dataset` (one built with clip_len=None; max_videos: the first ones only) and
    score it: returns Scores.results.

    Whole videos run as one clip each (memory bounded by a few chunks of frames, see qshift.stream_logits), or as
    independent clips of clip_len frames. device: where the model and metrics run (default: the model's device);
    amp: bf16 autocast. save_predictions: a folder for DIR/<video>/<frame>.png in raw ids; visualize: a folder for
    <video>.png pictures of the first num_vis videos (vis_frames (a, b): of its frames a..b, else of 6 spread over
    it). Frames are read and PNGs written by two threads while the
    model runs. The model's train/eval mode is restored afterwards.

    Distributed (torch.distributed initialised, e.g. train.py under torchrun), every rank must call it: each scores
    the videos rank, rank + world, ..., saves and draws those only, and returns the scores of all the videos.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.to(device).eval()
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    videos = range(len(dataset.videos))[:max_videos]
    mine = videos[rank::world]
    class_names = dataset.class_names or list(model.model.config.id2label.values())  # own frames without labels
    colours = class_colours(dataset.palette)
    palette = raw_palette(dataset, colours, len(class_names))
    scores = Scores(dataset.num_classes, len(videos), dataset.background_class, device)
    bar = tqdm(total=sum(len(dataset.videos[v][1]) for v in mine), unit="frame", disable=not progress or rank > 0)
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        frames, writes = read_ahead(dataset, mine, reader, chunk + 2, pin=device.type == "cuda"), []
        for v in mine:
            video, names = dataset.videos[v]
            drawn = visualize and v < num_vis
            spread = np.linspace(0, len(names) - 1, VIS_FRAMES).round().astype(int).tolist()
            shown = set(range(vis_frames[0], vis_frames[1] + 1) if vis_frames else spread) if drawn else set()
            rows, read = [], collections.deque()  # read: frames whose predictions are still to come
            for t, pred in enumerate(qshift.predict_video(model, _pixel_values(frames, len(names), read), chunk, amp,
                                                   clip_len)):
                frame = read.popleft()
                scores.update(pred, frame.get("labels"), frame.get("cue_distance"))
                if save_predictions:
                    path = Path(save_predictions) / video / f"{Path(frame['name']).stem}.png"
                    writes.append(writer.submit(save_prediction, dataset.to_raw(pred.cpu()), path, palette))
                if t in shown:
                    rows.append((t, frame["pixel_values"], frame.get("labels"), pred.cpu()))
                bar.update()
            scores.end_video(v)
            if rows:
                path = Path(visualize) / f"{video}.png"
                writes.append(writer.submit(save_picture, rows, class_names, colours, path))
        for write in writes:
            write.result()  # a failed write raises here
    bar.close()
    model.train(was_training)
    if distributed:
        scores.all_reduce()
    return scores.results(dataset.class_names)


# -----------------------------------------------------------------------------
# reports: one run's Markdown, the paper's table over runs


def _pct(x):
    return "–" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def _setting(run):
    fraction = f"1/{run['shift_div']}" if run["shift_div"] else "0 (frame by frame)"
    return (f"shift {fraction}, {run['channels']} channels, matching {'on' if run['match'] else 'off'}, "
            f"{'causal' if run['causal'] else 'bidirectional'}"
            + (f", reaching {run['reach']} frames" if run.get("reach", 1) > 1 else "") + "; "
            + (f"clips of {run['clip_len']} frames" if run["clip_len"] else "whole videos")
            + "".join(f", {key} {value:g}" for key, value in sorted(run.get("world", {}).items())))


def run_markdown(run):
    """One evaluation (the eval json's dict) as Markdown: the scores, then IoU per class."""
    r = run["results"]
    lines = [f"# {run['checkpoint']} on {run['data']} {run['split']}", "", _setting(run), ""]
    seen = f"{count(r['num_frames'], 'frame')} of {count(r['num_videos'], 'video')}"
    if "miou" not in r:
        return "\n".join(lines + [f"{seen} predicted; no labels.", ""])
    keys = [key for key in TITLES if key in r]
    lines += ["| " + " | ".join(TITLES[k] for k in keys) + " |", "|" + "---:|" * len(keys),
              "| " + " | ".join(_pct(r[k]) for k in keys) + " |", "",
              f"{seen}; percent; mVC_k counts videos of over k frames.",
              "", "## IoU per class (– : absent from the ground truth)", "", "| class | IoU |", "|---|---:|"]
    lines += [f"| {name} | {_pct(iou)} |" for name, iou in r["iou"].items()]
    return "\n".join(lines) + "\n"


def _mean_std(values):
    """'m ± s' in percent over the finite values (sample std), 'm' for one value, '–' for none; and the mean."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–", math.nan
    mean = float(np.mean(values))
    if len(values) == 1:
        return _pct(mean), mean
    return f"{_pct(mean)} ± {100 * float(np.std(values, ddof=1)):.2f}", mean


RUN_KEYS = ("checkpoint", "data", "split", "clip_len", "shift_div", "match", "causal", "channels", "results")
def shifted_channels(model):
    """How many channels each placement shifts, e.g. "64" (queries alone, as in the paper's tables), "pixels 8",
    "backbone 4/8/16/32"; "0" for the frame-by-frame model."""
    if not model.shift_div:
        return "0"
    counts = {p: "/".join(str(c // model.shift_div) for c in model.channels(p)) for p in model.shift_at}
    return counts["queries"] if list(counts) == ["queries"] else ", ".join(f"{p} {n}" for p, n in counts.items())


EVALUATION_KEYS = {"checkpoint", "data", "root", "split", "world", "clip_len", "max_videos", "channels", "results",
                   "train"}
# keys of an eval json (and "train", which --table adds) that describe the evaluation; the others are the model's
# settings (QShiftMaskFormer.settings: shift_div, match, causal, ...)
NOT_SETTINGS = {"seed", "out", "root", "device", "workers", "log_every", "shift", "match", "causal", "shift_at",
                "match_by", "reach"}
# keys of a run's config.json that do not set what is trained: the seed (runs that differ only in it share a row),
# where the run and its data were, how it ran, and the shift's settings (the checkpoint's own stand for them)


def train_settings(run_dir):
    """The settings the run in run_dir was trained with: its config.json less NOT_SETTINGS, {} without one. A model
    that is another run's checkpoint stands for that run's settings (its config.json is enough: the experiment keeps
    the configs and evaluations, not the weights), so that fine-tunes of per-seed models compare."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        fail(f"--table {run_dir}: cannot read {path} ({first_line(e)})")
    if not isinstance(config, dict):
        fail(f"--table {run_dir}: {path} is not a run's config written by train.py")
    settings = {k: v for k, v in config.items() if k not in NOT_SETTINGS}
    model = Path(str(settings.get("model")))
    if (model.parent / "config.json").is_file() and model.parent.resolve() != path.parent.resolve():  # its run's
        settings["model"] = train_settings(model.parent)
    return settings


def _flat(settings, prefix=""):
    """Nested settings on one level: {"model": {"lr": 0.1}} -> {"model.lr": 0.1}."""
    flat = {}
    for key, value in settings.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return flat


def _settings(run):
    """(training settings, model settings) of an evaluation, each a flat dict. Without a shift, the model's other
    settings (matching, causal, ...) change nothing: they are left out."""
    model = {k: v for k, v in run.items() if k not in EVALUATION_KEYS}
    train = {k: v for k, v in _flat(run.get("train", {})).items() if k not in model}
    if not model.get("match"):
        model.pop("match_by", None)  # what would have been matched by, had matching run
    return train, (model if model["shift_div"] else {"shift_div": 0})


def _cell(value):
    """A setting's value in a table cell."""
    if isinstance(value, bool):
        return "✓" if value else ""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return "–" if value is None else str(value)


def results_table(runs):
    """The paper's Tables 1-2 from evaluations (eval json dicts, with "train": train_settings where known), Markdown.

    Runs whose settings differ in nothing but the seed share a row, mean ± std over them; every setting besides the
    shift fraction, matching and causal that differs between rows gets a column. Δ is the difference to the mean of
    the frame-by-frame row (shift_div 0) whose other settings are the row's.
    """
    groups, settings, baselines = collections.defaultdict(list), {}, {}
    for run in runs:
        train, model = _settings(run)
        key = json.dumps([train, model], sort_keys=True)
        groups[key].append(run)
        settings[key] = {**train, **model}
        baselines[key] = json.dumps([train, {"shift_div": 0}], sort_keys=True)  # the same training, no shift
    names = sorted({name for s in settings.values() for name in s} - {"shift_div", "match", "causal"})
    varying = [name for name in names if len({json.dumps(s.get(name)) for s in settings.values()}) > 1]
    causal = any(s.get("causal") for s in settings.values())
    synthetic = any("hidden_miou" in run["results"] for run in runs)

    def mean(key, metric):
        return _mean_std([run["results"].get(metric) for run in groups[key]])[1] if key in groups else math.nan

    def order(key):  # baseline, the paper's placement, other placements; 1/128 .. 1/2; causal and matching last
        s = settings[key]
        values = [(0, s[name]) if isinstance(s.get(name), (int, float)) else (1, json.dumps(s.get(name)))
                  for name in varying]  # numbers by value, before the rest
        where = s.get("shift_at", ["queries"])
        by_masks = s.get("match_by", "queries") != "queries"
        return (s["shift_div"] != 0, where != ["queries"], len(where), where, by_masks, -s["shift_div"],
                bool(s.get("causal")), bool(s.get("match")), values)

    by_distance = [metric for metric in (f"hidden_d{d}_acc" for d in CUE_DISTANCES)  # those measured somewhere
                   if not math.isnan(_mean_std([run["results"].get(metric) for run in runs])[1])]
    metrics = ["mvc8"] + (["hidden_miou", "hidden_acc", *by_distance, "visible_acc"] if synthetic else [])
    header = ["shift fraction", "channels", "matching"] + (["causal"] if causal else []) + varying + \
        [TITLES["miou"], TITLES["pixel_acc"], f"Δ {TITLES['miou']}", f"Δ {TITLES['pixel_acc']}"] + \
        [TITLES[m] for m in metrics] + ["runs"]
    text_columns = 3 + causal + len(varying)  # left-aligned; the numbers are right-aligned
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * text_columns + "---:|" * (len(header) - text_columns)]
    for key in sorted(groups, key=order):
        group, s = groups[key], settings[key]
        cells = [f"1/{s['shift_div']}" if s["shift_div"] else "0", str(group[0]["channels"]),
                 _cell(bool(s.get("match")))] + ([_cell(bool(s.get("causal")))] if causal else [])
        cells += [_cell(s.get(name)) for name in varying]
        cells += [_mean_std([run["results"].get(m) for run in group])[0] for m in ("miou", "pixel_acc")]
        for metric in ("miou", "pixel_acc"):
            diff = mean(key, metric) - mean(baselines[key], metric)
            cells.append("" if s["shift_div"] == 0 else "–" if math.isnan(diff) else f"{100 * diff:+.2f}")
        cells += [_mean_std([run["results"].get(m) for run in group])[0] for m in metrics]
        lines.append("| " + " | ".join(cells + [str(len(group))]) + " |")
    first = runs[0]
    caption = (f"{first['data']} {first['split']}, " + ("whole videos" if not first["clip_len"] else
               f"clips of {first['clip_len']} frames") + "; percent, mean ± std over runs; Δ: difference from the "
               "frame-by-frame baseline (shift fraction 0)")
    return "\n".join([caption, ""] + lines) + "\n"


def find_evaluations(run_dirs, data_set=None, root=None, split=None, clip_len=None, world=None):
    """Each run's evaluation (its eval json's dict, plus "train": train_settings) of all the videos (no --max-videos)
    with clip_len, of the one data set and split (as `scored` names them) that every run has an evaluation of, among
    those of data_set, root, split and synthetic world where given."""
    found = {}  # run -> {scored: [(path, evaluation)]}
    for run_dir in run_dirs:
        found[run_dir] = collections.defaultdict(list)
        for path in sorted(Path(run_dir).glob("eval-*.json")):
            try:
                run = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                fail(f"--table {run_dir}: cannot read {path} ({first_line(e)})")
            if not isinstance(run, dict) or any(key not in run for key in RUN_KEYS):
                fail(f"--table {run_dir}: {path} is not an evaluation written by evaluate.py "
                     f"(keys: {', '.join(RUN_KEYS)})")
            wanted = (data_set in (None, run["data"]) and split in (None, run["split"]) and
                      world in (None, run.get("world", {})) and
                      (root is None or run.get("root") is not None and Path(root).resolve() == Path(run["root"])))
            if run.get("max_videos") is None and run["clip_len"] == clip_len and wanted:
                found[run_dir][scored(run["data"], run.get("root"), run["split"], run.get("world"))].append((path, run))
        if not found[run_dir]:
            what = " ".join(str(x) for x in (data_set, root, split, clip_len and f"clips of {clip_len}") if x)
            fail(f"--table {run_dir}: no evaluation {what + ' ' if what else ''}of all the videos there "
                 f"(run evaluate.py --checkpoint {run_dir}/best first)")
    common = set.intersection(*(set(evaluations) for evaluations in found.values()))
    if len(common) != 1:
        options = sorted({name for evaluations in found.values() for name in evaluations})
        problem = "several data sets or splits" if common else "no data set and split evaluated in every run"
        fail(f"--table: {problem} ({', '.join(options)}): choose one with --data, --root, --split and --world")
    [name] = common
    runs = []
    for run_dir, evaluations in found.items():
        (path, run), *more = evaluations[name]
        if more:
            fail(f"--table {run_dir}: {1 + len(more)} evaluations of {name} "
                 f"({', '.join(path.name for path, _ in evaluations[name])}): keep one")
        runs.append({**run, "train": train_settings(run_dir)})
    return runs


# -----------------------------------------------------------------------------
# command line


def _json_safe(x):
    """NaN -> None (null), recursively: strict JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    return None if isinstance(x, float) and math.isnan(x) else x


def table_main(args):
    table = results_table(find_evaluations(args.table, args.data, args.root, args.split, args.clip_len, args.world))
    print(table, end="")
    if args.out:
        Path(args.out).write_text(table)


def evaluate_main(args):
    transformers.logging.set_verbosity_error()  # its loading messages and bars would make an error more than one line
    transformers.logging.disable_progress_bar()
    checkpoint = Path(args.checkpoint)
    try:
        model = qshift.QShiftMaskFormer.from_pretrained(checkpoint)
    except Exception as e:  # a broken checkpoint fails in many ways: json, safetensors, config, shapes
        fail(f"--checkpoint {checkpoint}: cannot load ({first_line(e)})")
    try:
        dataset = data.build_dataset(args.data, root=args.root, split=args.split, clip_len=None, train=False,
                                     **args.world)
    except data.DataError as e:
        fail(str(e))
    except ValueError as e:  # synthetic knobs that do not fit together
        fail(f"--world: {e}")
    num_labels = model.model.config.num_labels
    if dataset.class_names and dataset.num_classes != num_labels:  # own clips without labels may have no classes
        fail(f"--data {args.data}: {dataset.num_classes} classes, but the checkpoint {checkpoint} has {num_labels}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {args.device}: no CUDA device here")
    if device.type == "cuda":  # as in training
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        results = evaluate(model, dataset, device, args.clip_len, args.amp, save_predictions=args.save_predictions,
                           visualize=args.visualize, num_vis=args.num_vis, chunk=args.chunk, max_videos=args.max_videos,
                           vis_frames=args.vis_frames)
    except data.DataError as e:  # a bad frame file is found only when it is read
        fail(str(e))
    root = str(Path(args.root).resolve()) if args.root else None  # which folder, wherever the table is made
    run = {"checkpoint": str(checkpoint), "data": args.data, "root": root, "split": args.split, "world": args.world,
           "clip_len": args.clip_len, "max_videos": args.max_videos, **model.settings(),
           "channels": shifted_channels(model),
           "results": results}
    name = eval_name(args.data, args.split, args.clip_len, args.max_videos, root, args.world)
    report = run_markdown(run)
    (checkpoint.parent / f"{name}.json").write_text(json.dumps(_json_safe(run), indent=2) + "\n")
    (checkpoint.parent / f"{name}.md").write_text(report)
    print(report, end="")
    print(f"wrote {checkpoint.parent / name}.json and .md")
    if args.save_predictions:
        print(f"wrote the predictions of {count(results['num_frames'], 'frame')} to {args.save_predictions}/<video>/")
    if args.visualize:
        drawn = min(args.num_vis, results["num_videos"])
        print(f"drew {drawn} of {count(results['num_videos'], 'video')} in {args.visualize}/ (--num-vis sets how many)")


def main(args):
    """Run the command line that parse_args read."""
    if args.table:
        table_main(args)
    else:
        evaluate_main(args)


if __name__ == "__main__":
    main(args)
