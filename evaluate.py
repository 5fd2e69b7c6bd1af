"""
Evaluate a trained qshift model: mIoU, pixel accuracy, VSPW's video consistency (mVC8, mVC16), per-class IoU,
saved predictions, pictures like the paper's Figures 2-3, and the paper's Tables 1-2 from several runs.

    python evaluate.py --checkpoint RUN/best --data vspw --root ROOT [--split val] [--clip-len T]
        [--save-predictions DIR] [--visualize DIR --num-vis N] [--amp] [--device cuda]
        -> RUN/eval-<split>.json and RUN/eval-<split>.md (eval-<split>-clip<T>.* with --clip-len,
           eval-<split>-first<N>.* with --max-videos N)
    python evaluate.py --table RUN [RUN ...] [--split val] [--clip-len T] [--out FILE]

Whole videos run in memory bounded by a few frames (qshift.predict_video): its maps equal those of the whole video
run as one clip.
"""
import argparse
import collections
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

import data
import qshift

# -----------------------------------------------------------------------------
# metrics


class SegMetrics:
    """Confusion matrix over the pixels whose ground truth is not ignore (VSPW's official mIoU and pixel accuracy).

    update(pred, label): int tensors of one shape, on any device; the matrix lives on pred's device.
    compute() -> {"miou", "pixel_acc", "iou"}: iou is a list of per-class IoUs, NaN for classes absent from the
    ground truth; miou is their mean over the classes present.
    """

    def __init__(self, num_classes, ignore_index=data.IGNORE_INDEX):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.confusion = None  # (C, C) int64, [ground truth, prediction]

    def update(self, pred, label):
        C = self.num_classes
        # one bincount over label * C + pred; labels >= C (the ignore index) land past the C x C bins that are kept:
        # no boolean indexing (4-5x slower) and no torch.where; int32 halves the memory traffic of int64
        index = label.to(pred.device, torch.int32).reshape(-1) * C + pred.reshape(-1).to(torch.int32)
        counts = torch.bincount(index, minlength=max(self.ignore_index + 1, C) * C)[:C * C].view(C, C).long()
        self.confusion = counts if self.confusion is None else self.confusion.add_(counts)

    def compute(self):
        C = self.num_classes
        conf = torch.zeros(C, C) if self.confusion is None else self.confusion.double().cpu()
        tp, gt, pred = conf.diag(), conf.sum(1), conf.sum(0)
        iou = torch.where(gt > 0, tp / (gt + pred - tp), torch.nan)  # (C,)
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


# -----------------------------------------------------------------------------
# pictures and saved predictions

VIS_FRAMES = 6  # rows of a video's picture: frames spread evenly over the video
VIS_WIDTH = 480  # wider frames are scaled down in pictures


def _palette():
    """(256, 3) uint8: the PASCAL VOC colour map (bits of the id spread over R, G, B), 256 distinct colours."""
    ids = np.arange(256)
    palette = np.zeros((256, 3), np.uint8)
    for j in range(3):
        for c in range(3):  # bit 3j + c of the id -> bit 7 - j of channel c
            palette[:, c] |= (((ids >> (3 * j + c)) & 1) << (7 - j)).astype(np.uint8)
    return palette


PALETTE = _palette()


def colorize(labels):
    """Class map (H, W) -> uint8 RGB (H, W, 3): class c gets PALETTE[c + 1] (VSPW's raw id), ignore is black."""
    return PALETTE[(np.asarray(labels, dtype=np.int64) + 1) % 256]  # IGNORE_INDEX 255 -> 0


def to_rgb(pixel_values):
    """Normalised pixel_values (3, H, W) -> uint8 RGB (H, W, 3)."""
    mean, std = torch.tensor(data.MEAN).view(3, 1, 1), torch.tensor(data.STD).view(3, 1, 1)
    rgb = (pixel_values.float().cpu() * std + mean).clamp(0, 1).mul(255).round().byte()
    return rgb.permute(1, 2, 0).numpy()


def draw_video(rows, class_names):
    """A picture like the paper's Figures 2-3: one row per frame, columns image, ground truth (if any), prediction.

    rows: [(pixel_values (3, H, W), labels (H, W) or None, prediction (H, W))] (CPU). Column titles above, a
    legend of the classes present below; frames wider than VIS_WIDTH are scaled down. Returns a PIL RGB image.
    """
    H, W = rows[0][0].shape[-2:]
    scale = min(1.0, VIS_WIDTH / W)
    h, w = round(H * scale), round(W * scale)
    titles = ["image"] + (["ground truth"] if rows[0][1] is not None else []) + ["prediction"]
    cells = [[Image.fromarray(to_rgb(x)).resize((w, h), Image.BILINEAR)]
             + [Image.fromarray(colorize(m)).resize((w, h), Image.NEAREST) for m in (y, p) if m is not None]
             for x, y, p in rows]
    present = sorted({int(c) for _, y, p in rows for m in (y, p) if m is not None for c in m.unique()}
                     - {data.IGNORE_INDEX})
    font, line, swatch, gap = ImageFont.load_default(), 16, 12, 2  # gap: white between cells
    width = len(titles) * (w + gap) - gap
    entries, x, y = [], 4, 0  # the legend: swatch and "id name", wrapped at the picture's width
    for c in present:
        text = f"{c} {class_names[c]}"
        size = swatch + 4 + font.getbbox(text)[2]
        if x + size > width and x > 4:
            x, y = 4, y + line
        entries.append((c, text, x, y))
        x += size + 12
    top, bottom = line, line + len(rows) * (h + gap)  # the grid's rows
    picture = Image.new("RGB", (width, bottom + (y + line + 4 if present else 0)), "white")
    draw = ImageDraw.Draw(picture)
    for col, title in enumerate(titles):
        draw.text((col * (w + gap) + 2, 2), title, fill="black", font=font)
    for r, row in enumerate(cells):
        for col, cell in enumerate(row):
            picture.paste(cell, (col * (w + gap), top + r * (h + gap)))
    for c, text, x, y in entries:
        colour = tuple(PALETTE[c + 1].tolist())
        draw.rectangle([x, bottom + y + 2, x + swatch - 1, bottom + y + swatch + 1], fill=colour)
        draw.text((x + swatch + 4, bottom + y), text, fill="black", font=font)
    return picture


def save_prediction(pred, path, dataset):
    """One class map (H, W) -> a palette PNG of the dataset's raw ids (VSPW: class + 1) at path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(dataset.to_raw(pred.cpu()))
    image.putpalette(PALETTE.tobytes())
    image.save(path)


# -----------------------------------------------------------------------------
# evaluation of a data set


def _read_frames(dataset, v, read):
    """Yield video v's pixel_values, keeping each frame's dict in the queue `read` until its prediction comes."""
    for t in range(len(dataset.videos[v][1])):
        read.append(dataset.frame(v, t))
        yield read[-1]["pixel_values"]


@torch.no_grad()
def evaluate(model, dataset, device=None, clip_len=None, amp=False, progress=True, save_predictions=None,
             visualize=None, num_vis=4, chunk=8, max_videos=None):
    """Run `model` on every video of `dataset` (one built with clip_len=None; max_videos: the first ones only).

    Whole videos run as one clip each (memory bounded by a few chunks of frames, see qshift.stream_logits), or as
    independent clips of clip_len frames. device: where the model and metrics run (default: the model's device).
    save_predictions: a folder for DIR/<video>/<frame>.png in raw ids; visualize: a folder for <video>.png
    pictures of the first num_vis videos. The model's train/eval mode is restored afterwards.

    Returns {"num_videos", "num_frames"} and, with labels: "miou", "pixel_acc", "mvc8", "mvc16" (fractions, NaN
    where undefined) and "iou" {class name: IoU}; on the synthetic set also "hidden_miou", "hidden_acc"
    (pixels of objects whose class cue is hidden in that frame) and "visible_miou", "visible_acc" (the other
    object pixels).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.to(device).eval()
    C, ignore = dataset.num_classes, data.IGNORE_INDEX
    class_names = dataset.class_names or list(model.model.config.id2label.values())  # own frames without labels
    overall, subsets = SegMetrics(C), {}
    vc_totals = {k: [0.0, 0] for k in (8, 16)}  # sum of acc_i, number of windows
    videos = dataset.videos[:max_videos]
    num_frames = sum(len(frames) for _, frames in videos)
    bar = tqdm(total=num_frames, unit="frame", disable=not progress)
    for v, (video, frames) in enumerate(videos):
        vcs = {k: VideoConsistency(k) for k in vc_totals}
        drawn = visualize and v < num_vis
        shown = set(np.linspace(0, len(frames) - 1, VIS_FRAMES).round().astype(int).tolist()) if drawn else set()
        rows, read = [], collections.deque()  # read: frames whose predictions are still to come (chunk + 1 at most)
        for t, pred in enumerate(qshift.predict_video(model, _read_frames(dataset, v, read), chunk, amp, clip_len)):
            frame = read.popleft()
            label = frame["labels"].to(device) if "labels" in frame else None
            if label is not None:
                overall.update(pred, label)
                for vc in vcs.values():
                    vc.update(pred, label)
            if "cue_hidden" in frame and label is not None:
                hidden = frame["cue_hidden"].to(device)
                objects = (label != dataset.background_class) & (label != ignore)
                for name, where in (("hidden", hidden), ("visible", objects & ~hidden)):
                    subsets.setdefault(name, SegMetrics(C)).update(pred, torch.where(where, label, ignore))
            if save_predictions:
                save_prediction(pred, Path(save_predictions) / video / f"{Path(frame['name']).stem}.png", dataset)
            if t in shown:
                rows.append((frame["pixel_values"], None if label is None else label.cpu(), pred.cpu()))
            bar.update()
        for k, vc in vcs.items():
            s, n = vc.result()
            vc_totals[k][0] += s
            vc_totals[k][1] += n
        if rows:
            Path(visualize).mkdir(parents=True, exist_ok=True)
            draw_video(rows, class_names).save(Path(visualize) / f"{video}.png")
    bar.close()
    model.train(was_training)
    results = {"num_videos": len(videos), "num_frames": num_frames}
    if overall.confusion is not None:
        scores = overall.compute()
        results.update(miou=scores["miou"], pixel_acc=scores["pixel_acc"])
        results.update({f"mvc{k}": s / n if n else math.nan for k, (s, n) in vc_totals.items()})
        results["iou"] = dict(zip(dataset.class_names, scores["iou"]))
    for name, metrics in subsets.items():
        scores = metrics.compute()
        results[f"{name}_miou"], results[f"{name}_acc"] = scores["miou"], scores["pixel_acc"]
    return results


# -----------------------------------------------------------------------------
# reports: one run's Markdown, the paper's table over runs


def _pct(x):
    return "–" if x is None or math.isnan(x) else f"{100 * x:.2f}"


def _setting(run):
    fraction = f"1/{run['shift_div']}" if run["shift_div"] else "0 (frame by frame)"
    return (f"shift {fraction}, {run['channels']} channels, matching {'on' if run['match'] else 'off'}, "
            f"{'causal' if run['causal'] else 'bidirectional'}; "
            + (f"clips of {run['clip_len']} frames" if run["clip_len"] else "whole videos"))


def run_markdown(run):
    """One evaluation (the eval json's dict) as Markdown: the scores, then IoU per class."""
    r = run["results"]
    lines = [f"# {run['checkpoint']} on {run['data']} {run['split']}", "", _setting(run), ""]
    if "miou" not in r:
        return "\n".join(lines + [f"{r['num_frames']} frames of {r['num_videos']} videos predicted; no labels.", ""])
    keys = [("mIoU", "miou"), ("pix. acc.", "pixel_acc"), ("mVC8", "mvc8"), ("mVC16", "mvc16"),
            ("hidden-cue mIoU", "hidden_miou"), ("hidden-cue acc.", "hidden_acc"),
            ("visible-object mIoU", "visible_miou"), ("visible-object acc.", "visible_acc")]
    keys = [(title, key) for title, key in keys if key in r]
    lines += ["| " + " | ".join(t for t, _ in keys) + " |", "|" + "---:|" * len(keys),
              "| " + " | ".join(_pct(r[k]) for _, k in keys) + " |", "",
              f"{r['num_frames']} frames of {r['num_videos']} videos; percent; mVC_k counts videos of over k frames.",
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


def results_table(runs):
    """The paper's Tables 1-2 from evaluations (eval json dicts), as Markdown.

    Runs of one configuration (shift_div, match, causal) are one row, mean ± std over them (e.g. seeds); the
    difference is to the mean of the frame-by-frame runs (shift_div 0) among those given.
    """
    groups = collections.defaultdict(list)
    for run in runs:
        key = (run["shift_div"], run["match"], run["causal"], tuple(run.get("shift_at", ["queries"])),
               run.get("match_by", "queries")) if run["shift_div"] else (0, False, False, (), "")
        groups[key].append(run)
    causal = any(key[2] for key in groups)
    synthetic = any("hidden_miou" in run["results"] for run in runs)
    # the baseline, the paper's placement (1/128 .. 1/2), then the other placements and matchings
    order = sorted(groups, key=lambda key: (key[0] != 0, key[3] != ("queries",), len(key[3]), key[3], key[4],
                                            -key[0], key[2], key[1]))
    baseline = {m: _mean_std([run["results"].get(m) for run in groups[(0, False, False, (), "")]])[1]
                for m in ("miou", "pixel_acc")} if (0, False, False, (), "") in groups else None
    header = ["shift fraction", "channels", "matching"] + (["causal"] if causal else []) + \
        ["mIoU", "pix. acc.", "Δ mIoU", "Δ pix. acc.", "mVC8"] + \
        (["hidden-cue mIoU", "hidden-cue acc."] if synthetic else []) + ["runs"]
    text_columns = 3 + causal  # left-aligned; the numbers are right-aligned
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * text_columns + "---:|" * (len(header) - text_columns)]
    for key in order:
        group = groups[key]
        cells = [f"1/{key[0]}" if key[0] else "0", str(group[0]["channels"]), "✓" if key[1] else ""]
        cells += ["✓" if key[2] else ""] if causal else []
        means = {}
        for metric in ("miou", "pixel_acc"):
            text, means[metric] = _mean_std([run["results"].get(metric) for run in group])
            cells.append(text)
        for metric in ("miou", "pixel_acc"):
            diff = means[metric] - baseline[metric] if baseline and key[0] else math.nan
            cells.append("" if key[0] == 0 else "–" if math.isnan(diff) else f"{100 * diff:+.2f}")
        metrics = ["mvc8"] + (["hidden_miou", "hidden_acc"] if synthetic else [])
        cells += [_mean_std([run["results"].get(m) for run in group])[0] for m in metrics]
        lines.append("| " + " | ".join(cells + [str(len(group))]) + " |")
    first = runs[0]
    caption = (f"{first['data']} {first['split']}, " + ("whole videos" if not first["clip_len"] else
               f"clips of {first['clip_len']} frames") + "; percent, mean ± std over runs; Δ: difference from the "
               "frame-by-frame baseline (shift fraction 0)")
    return "\n".join([caption, ""] + lines) + "\n"


# -----------------------------------------------------------------------------
# command line


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _json_safe(x):
    """NaN -> None (null), recursively: strict JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    return None if isinstance(x, float) and math.isnan(x) else x


def _first_line(e):
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def shifted_channels(model):
    """How many channels each placement shifts, e.g. "64" (queries alone, as in the paper's tables), "pixels 8",
    "backbone 4/8/16/32"; "0" for the frame-by-frame model."""
    if not model.shift_div:
        return "0"
    counts = {p: "/".join(str(c // model.shift_div) for c in model.channels(p)) for p in model.shift_at}
    return counts["queries"] if list(counts) == ["queries"] else ", ".join(f"{p} {n}" for p, n in counts.items())


RUN_KEYS = ("checkpoint", "data", "split", "clip_len", "shift_div", "match", "causal", "channels", "results")


def _eval_name(split, clip_len, max_videos=None):
    """File name (no suffix) of an evaluation in its run folder; a quick look at the first videos never replaces
    a whole evaluation."""
    return f"eval-{split}" + (f"-clip{clip_len}" if clip_len else "") + (f"-first{max_videos}" if max_videos else "")


def _load_run(run_dir, split, clip_len):
    path = Path(run_dir) / f"{_eval_name(split, clip_len)}.json"
    if not path.is_file():
        fail(f"--table {run_dir}: no {path.name} (run evaluate.py --checkpoint {run_dir}/best first)")
    try:
        run = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        fail(f"--table {run_dir}: cannot read {path} ({_first_line(e)})")
    if not isinstance(run, dict) or any(key not in run for key in RUN_KEYS):
        fail(f"--table {run_dir}: {path} is not an evaluation written by evaluate.py (keys: {', '.join(RUN_KEYS)})")
    return run


def table_main(args):
    if args.out and not Path(args.out).parent.is_dir():
        fail(f"--out {args.out}: no such folder {Path(args.out).parent}")
    runs = [_load_run(run_dir, args.split, args.clip_len) for run_dir in args.table]
    evaluated_on = {f"{run['data']} ({run.get('max_videos') or 'all'} videos)" for run in runs}
    if len(evaluated_on) > 1:
        fail(f"--table: the runs were evaluated on different data: {', '.join(sorted(evaluated_on))}")
    table = results_table(runs)
    print(table, end="")
    if args.out:
        Path(args.out).write_text(table)


def evaluate_main(args):
    transformers.logging.set_verbosity_error()  # its loading messages and bars would make an error more than one line
    transformers.logging.disable_progress_bar()
    if args.data is None:
        fail("--checkpoint needs --data")
    for flag, value, low in (("--clip-len", args.clip_len, 1), ("--num-vis", args.num_vis, 0),
                             ("--chunk", args.chunk, 1), ("--max-videos", args.max_videos, 1)):
        if value is not None and value < low:
            fail(f"{flag} {value}: must be at least {low}")
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_dir():
        fail(f"--checkpoint {checkpoint}: no such folder")
    if not (checkpoint / "qshift.json").is_file():
        fail(f"--checkpoint {checkpoint}: not a qshift checkpoint (no qshift.json; train.py writes RUN/best)")
    try:
        model = qshift.QShiftMaskFormer.from_pretrained(checkpoint)
    except Exception as e:  # a broken checkpoint fails in many ways: json, safetensors, config, shapes
        fail(f"--checkpoint {checkpoint}: cannot load ({_first_line(e)})")
    try:
        dataset = data.build_dataset(args.data, root=args.root, split=args.split, clip_len=None, train=False)
    except data.DataError as e:
        fail(str(e))
    num_labels = model.model.config.num_labels
    if dataset.class_names and dataset.num_classes != num_labels:  # own clips without labels may have no classes
        fail(f"--data {args.data}: {dataset.num_classes} classes, but the checkpoint {checkpoint} has {num_labels}")
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as e:
        fail(f"--device {args.device}: {_first_line(e)}")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {args.device}: no CUDA device here")
    try:
        results = evaluate(model, dataset, device, args.clip_len, args.amp, save_predictions=args.save_predictions,
                           visualize=args.visualize, num_vis=args.num_vis, chunk=args.chunk, max_videos=args.max_videos)
    except data.DataError as e:  # a bad frame file is found only when it is read
        fail(str(e))
    run = {"checkpoint": str(checkpoint), "data": args.data, "root": args.root, "split": args.split,
           "clip_len": args.clip_len, "max_videos": args.max_videos, **model.settings(),
           "channels": shifted_channels(model),
           "results": results}
    name = _eval_name(args.split, args.clip_len, args.max_videos)
    report = run_markdown(run)
    (checkpoint.parent / f"{name}.json").write_text(json.dumps(_json_safe(run), indent=2) + "\n")
    (checkpoint.parent / f"{name}.md").write_text(report)
    print(report, end="")
    print(f"wrote {checkpoint.parent / name}.json and .md")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.error = fail  # one line, exit status 2, like every other bad input
    parser.add_argument("--checkpoint", help="a folder written by train.py (RUN/best); results go to RUN/")
    parser.add_argument("--table", nargs="+", metavar="RUN", help="make the results table of these runs instead")
    parser.add_argument("--data", choices=["vspw", "cityscapes-vps", "clips", "synthetic"])
    parser.add_argument("--root", help="the dataset's folder")
    parser.add_argument("--split", default="val")
    parser.add_argument("--clip-len", type=int, help="independent clips of T frames instead of whole videos "
                        "(with --table: tabulate those evaluations)")
    parser.add_argument("--save-predictions", metavar="DIR", help="DIR/<video>/<frame>.png in the raw label ids")
    parser.add_argument("--visualize", metavar="DIR", help="DIR/<video>.png: image, ground truth, prediction")
    parser.add_argument("--num-vis", type=int, default=4, help="videos to draw with --visualize")
    parser.add_argument("--max-videos", type=int, help="evaluate the first N videos only (a quick look)")
    parser.add_argument("--chunk", type=int, default=8, help="frames the image model runs on at once")
    parser.add_argument("--amp", action="store_true", help="mixed precision")
    parser.add_argument("--device", help="default: cuda when present, else cpu")
    parser.add_argument("--out", help="with --table: also write the table to this file")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.table is None):
        fail("give either --checkpoint (evaluate a model) or --table (tabulate runs)")
    if args.table:
        table_main(args)
    else:
        evaluate_main(args)


if __name__ == "__main__":
    main()
