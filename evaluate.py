"""
Evaluate a trained qshift model: mIoU, pixel accuracy, VSPW's video consistency (mVC8, mVC16), per-class IoU, saved
predictions and pictures like the paper's Figures 2-3.

    python evaluate.py --checkpoint RUN/best [--data vspw --root ROOT] [--split val] [--min-frames N]
        [--short-side N] [--clip-len T] [--world KNOBS] [--save-predictions DIR]
        [--visualize DIR --num-vis N --vis-frames A B] [--max-videos N] [--amp [off|auto|bf16|fp16]] [--device cuda]
        -> RUN/eval-<data>-<split>.json and .md (own clips: eval-clips-<folder>-<split>.*; a synthetic world's
           knobs after the data set, eval-synthetic-hide_run3-val.*; -min<N> added with VSPW's --min-frames N other
           than the paper's 32, -short<N> with --short-side N, -clip<T> with --clip-len T, -first<N> with
           --max-videos N)

--data, --root and --world default to those the run was trained on (RUN/config.json); --split to val (own clips
without a ROOT/val.txt: all, every video). Each evaluation's file names say what was scored, so none replaces another
of other data, another world, split, VSPW protocol or clip length, and a quick look (--max-videos) never replaces a
whole evaluation.
The paper's tables over several runs: experiments/tables.py.

VSPW: the paper scores the videos of at least 32 frames (--min-frames 32, the default, as train.py's); VSPW's own
evaluation code, and the papers that report VSPW its way (CFFM, MRCFA, TV3S), score every video of val.txt:
--min-frames 1. The report names the protocol and how many videos it skipped. Raw VSPW frames (720p to 4K):
--short-side 480 scales frames whose short side is longer down before the model, as predict.py does, and the class
scores are resized to the labels' size before the argmax, so that the maps are scored at the labels' size.

Whole videos run in memory bounded by a few frames (streaming.predict_video); the maps equal those of the whole video
run as one clip.

Under torch.distributed (train.py's validation with torchrun), evaluate() scores only this rank's share of the videos
and adds up the ranks' sums, so that every rank returns the scores of all the videos, equal to one process's.
"""
import json
from pathlib import Path

from cli import add_amp, check_at_least, check_checkpoint, count, device_name, fail, first_line, make_parser
from synthetic import parse_world, world_name

DATA_SETS = ("vspw", "cityscapes-vps", "clips", "synthetic")


def scored(data_set, root, split, world=None):
    """What an evaluation scored, in its file names: the data set (own clips: and their folder's name; synthetic: the
    world's knobs that differ from the default, synthetic.world_name) and split."""
    if data_set == "clips" and root:
        return f"{data_set}-{Path(root).resolve().name}-{split}"
    return f"{data_set}{world_name(world or {})}-{split}"


def eval_name(data_set, split, clip_len=None, max_videos=None, root=None, world=None, min_frames=None, short_side=0):
    """File name (no suffix) of an evaluation in its run folder: it names what was scored, VSPW's shortest video
    scored (min_frames) where it is not the paper's, the short side the frames were scaled to, the clip length and
    the number of videos, so that no evaluation replaces another of something else."""
    return (f"eval-{scored(data_set, root, split, world)}"
            + (f"-min{min_frames}" if min_frames not in (None, VSPW_MIN_FRAMES) else "")
            + (f"-short{short_side}" if short_side else "")
            + (f"-clip{clip_len}" if clip_len else "") + (f"-first{max_videos}" if max_videos else ""))


def parse_args(argv=None):
    """evaluate.py's flags, checked, with --data, --root and --split filled in (see above); a bad one exits with one
    line. It needs no torch: see cli.py."""
    parser = make_parser(__doc__)
    parser.add_argument("--checkpoint", help="a folder written by train.py (RUN/best); results go to RUN/")
    parser.add_argument("--data", choices=DATA_SETS, help="the data set (default: the run's, from RUN/config.json)")
    parser.add_argument("--root", help="the data set's folder (default: the run's, for its data set)")
    parser.add_argument("--split", help="default: val; own clips: val when ROOT/val.txt lists videos, else all")
    parser.add_argument("--world", type=parse_world, metavar="KNOBS", help="synthetic data: the world's knobs, e.g. "
                        "hide_run=3,speed=8 (default: the run's)")
    parser.add_argument("--min-frames", type=int, metavar="N", help="VSPW: score the videos of at least N frames "
                        "(32: the paper's, the default; 1: every video, as VSPW's official code)")
    parser.add_argument("--short-side", type=int, default=0, metavar="N", help="scale frames whose short side is "
                        "longer down to N before the model; the maps are scored at the labels' size (0: as they are)")
    parser.add_argument("--clip-len", type=int, help="independent clips of T frames instead of whole videos "
                        "(with --table: tabulate those evaluations)")
    parser.add_argument("--save-predictions", metavar="DIR", help="DIR/<video>/<frame>.png in the raw label ids")
    parser.add_argument("--visualize", metavar="DIR", help="DIR/<video>.png: image, ground truth, prediction")
    parser.add_argument("--num-vis", type=int, default=4, help="videos to draw with --visualize (4)")
    parser.add_argument("--vis-frames", type=int, nargs=2, metavar=("A", "B"), help="draw frames A..B of each video "
                        "(default: 6 frames spread over the video)")
    parser.add_argument("--max-videos", type=int, help="evaluate the first N videos only (a quick look)")
    parser.add_argument("--chunk", type=int, default=8, help="frames the image model runs on at once (8)")
    add_amp(parser)
    parser.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N (default: cuda when present)")
    args = parser.parse_args(argv)
    if args.checkpoint is None:
        fail("--checkpoint: give the run's checkpoint to evaluate, e.g. RUN/best")
    check_at_least(args, {"--min-frames": 1, "--short-side": 0, "--clip-len": 1, "--num-vis": 0, "--chunk": 1,
                          "--max-videos": 1})
    if args.vis_frames and not 0 <= args.vis_frames[0] <= args.vis_frames[1]:
        fail(f"--vis-frames {args.vis_frames[0]} {args.vis_frames[1]}: give frames A <= B, counted from 0")
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
    if args.min_frames is not None and args.data != "vspw":
        fail(f"--min-frames: only VSPW skips short videos, not --data {args.data}")
    if args.split is None:  # own clips: the videos listed in ROOT/val.txt, or else all of them
        no_val = args.data == "clips" and args.root is not None and not (Path(args.root) / "val.txt").is_file()
        args.split = "all" if no_val else "val"
    return args


# Flags are read before the imports below (2-4 s, torch and transformers), so that --help and mistakes answer at once.
if __name__ == "__main__":
    args = parse_args()

import itertools
from dataclasses import asdict, fields
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import cli
import data
from data import VSPW_MIN_FRAMES
from metrics import TITLES, Scores, json_safe, percent
from pictures import class_colours, raw_palette, save_picture, save_prediction
from qshift import Settings
from streaming import read_ahead, segment

VIS_FRAMES = 6  # rows of a video's picture: frames spread evenly over the video


# -----------------------------------------------------------------------------
# evaluation of a data set


@torch.no_grad()
def evaluate(model, dataset, device=None, clip_len=None, amp=None, progress=True, save_predictions=None,
             visualize=None, num_vis=4, chunk=8, max_videos=None, vis_frames=None, short_side=0):
    """Run `model` on every video of `dataset` (one built with clip_len=None; max_videos: the first ones only) and
    score it: returns metrics.Scores.results.

    Whole videos run as one clip each (memory bounded by a few chunks of frames, see streaming.stream_logits), or as
    independent clips of clip_len frames. device: where the model and metrics run (default: the model's device);
    amp: an autocast dtype (torch.bfloat16, torch.float16) or None. save_predictions: a folder for
    DIR/<video>/<frame>.png in raw ids; visualize: a folder for <video>.png pictures of the first num_vis videos
    (vis_frames (a, b): of its frames a..b, else of 6 spread over it). short_side: the model sees frames scaled down
    to this short side where it is longer (0: never); the class scores are resized to the labels' size before the
    argmax, where the maps are scored and saved. Frames are read and PNGs written by two threads while the model
    runs. The model's train/eval mode is restored afterwards.

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
    pin = device.type == "cuda"  # labels pinned by the reader thread: their upload (qshift.to_device) does not pin

    def read(v, t):
        frame = dataset.frame(v, t, short_side)
        return {k: x.pin_memory() if pin and k in ("labels", "cue_distance") else x for k, x in frame.items()}

    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        todo = (read(v, t) for v in mine for t in range(len(dataset.videos[v][1])))
        frames, writes = read_ahead(todo, reader, chunk + 2), []
        for v in mine:
            video, names = dataset.videos[v]
            drawn = visualize and v < num_vis
            spread = np.linspace(0, len(names) - 1, VIS_FRAMES).round().astype(int).tolist()
            shown = set(range(vis_frames[0], vis_frames[1] + 1) if vis_frames else spread) if drawn else set()
            rows = []
            size = dataset.frame_size(v)  # the labels': maps are scored there, whatever size the model sees
            for t, (frame, pred) in enumerate(segment(model, itertools.islice(frames, len(names)), chunk, amp,
                                                      clip_len, size=size)):
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
# one run's report


def shifted_channels(model):
    """How many channels each placement shifts, e.g. "64" (queries alone, as in the paper's tables), "pixels 8",
    "backbone 4/8/16/32"; "0" for the frame-by-frame model."""
    s = model.settings
    if not s.shift_div:
        return "0"
    counts = {p: "/".join(str(c // s.shift_div) for c in model.channels(p)) for p in s.shift_at}
    return counts["queries"] if list(counts) == ["queries"] else ", ".join(f"{p} {n}" for p, n in counts.items())


def vspw_protocol(min_frames, split, skipped):
    """Which VSPW videos an evaluation scored, for its report: {"min_frames", "protocol" (in words),
    "skipped_videos"}, skipped of the split's for being shorter than min_frames."""
    words = (f"paper: videos of at least {min_frames} frames" if min_frames == VSPW_MIN_FRAMES else
             f"official: every video in {split}.txt" if min_frames == 1 else f"videos of at least {min_frames} frames")
    return {"min_frames": min_frames, "protocol": words, "skipped_videos": skipped}


def run_markdown(run):
    """One evaluation (the eval json's dict) as Markdown: what was scored (VSPW: which videos, vspw_protocol), the
    model's settings (as qshift.Settings names them), the scores, then IoU per class."""
    r = run["results"]
    what = ("whole videos" if not run["clip_len"] else f"clips of {run['clip_len']} frames") + \
        "".join(f", {key} {value:g}" for key, value in sorted(run["world"].items()))
    if run.get("short_side"):
        what += f", scaled down to a short side of {run['short_side']} for the model"
    if "protocol" in run:
        what += f"; {run['protocol']} ({count(run['skipped_videos'], 'video')} skipped)"
    settings = ", ".join(f"{f.name} {','.join(v) if isinstance(v := run[f.name], (list, tuple)) else v}"
                         for f in fields(Settings))
    lines = [f"# {run['checkpoint']} on {run['data']} {run['split']}", "",
             f"{settings} ({run['channels']} channels shifted); {what}", ""]
    seen = f"{count(r['num_frames'], 'frame')} of {count(r['num_videos'], 'video')}"
    if "miou" not in r:
        return "\n".join(lines + [f"{seen} predicted; no labels.", ""])
    keys = [key for key in TITLES if key in r]
    lines += ["| " + " | ".join(TITLES[k] for k in keys) + " |", "|" + "---:|" * len(keys),
              "| " + " | ".join(percent(r[k]) for k in keys) + " |", "",
              f"{seen}; percent; mVC_k counts videos of over k frames.",
              "", "## IoU per class (– : absent from the ground truth)", "", "| class | IoU |", "|---|---:|"]
    lines += [f"| {name} | {percent(iou)} |" for name, iou in r["iou"].items()]
    return "\n".join(lines) + "\n"


# -----------------------------------------------------------------------------
# command line


def main(args):
    """Run the command line that parse_args read."""
    checkpoint = Path(args.checkpoint)
    model = cli.load_model("--checkpoint", checkpoint)
    min_frames = args.min_frames or VSPW_MIN_FRAMES  # VSPW's filter; the other data sets have none (parse_args)
    try:
        dataset = data.build_dataset(args.data, root=args.root, split=args.split, clip_len=None, train=False,
                                     min_frames=min_frames, **args.world)
    except data.DataError as e:
        fail(str(e))
    except ValueError as e:  # synthetic knobs that do not fit together
        fail(f"--world: {e}")
    num_labels = model.model.config.num_labels
    if dataset.class_names and dataset.num_classes != num_labels:  # own clips without labels may have no classes
        fail(f"--data {args.data}: {dataset.num_classes} classes, but the checkpoint {checkpoint} has {num_labels}")
    device = cli.device(args.device)
    try:
        amp = cli.amp_dtype(args.amp, device)
        results = evaluate(model, dataset, device, args.clip_len, amp, save_predictions=args.save_predictions,
                           visualize=args.visualize, num_vis=args.num_vis, chunk=args.chunk, max_videos=args.max_videos,
                           vis_frames=args.vis_frames, short_side=args.short_side)
    except data.DataError as e:  # a bad frame file is found only when it is read
        fail(str(e))
    videos = vspw_protocol(min_frames, args.split, dataset.skipped) if args.data == "vspw" else {}
    run = {"checkpoint": str(checkpoint), "data": args.data, "root": args.root, "split": args.split,
           "world": args.world, **videos, "clip_len": args.clip_len, "max_videos": args.max_videos,
           "short_side": args.short_side, **asdict(model.settings),
           "match": model.settings.matches,  # what ran: tables.py counts a shift without matching by it
           "channels": shifted_channels(model), "results": results}
    name = eval_name(args.data, args.split, args.clip_len, args.max_videos, args.root, args.world,
                     videos.get("min_frames"), args.short_side)
    report = run_markdown(run)
    (checkpoint.parent / f"{name}.json").write_text(json.dumps(json_safe(run), indent=2) + "\n")
    (checkpoint.parent / f"{name}.md").write_text(report)
    print(report, end="")
    print(f"wrote {checkpoint.parent / name}.json and .md")
    if args.save_predictions:
        print(f"wrote the predictions of {count(results['num_frames'], 'frame')} to {args.save_predictions}/<video>/")
    if args.visualize:
        drawn = min(args.num_vis, results["num_videos"])
        print(f"drew {drawn} of {count(results['num_videos'], 'video')} in {args.visualize}/ (--num-vis sets how many)")


if __name__ == "__main__":
    main(args)
