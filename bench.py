"""
Benchmarks of qshift, every figure measured side by side in one run (in the style of nanoGPT's bench.py).

    python bench.py                  # full sizes, on CUDA when present (16 frames at 480x480, bf16 autocast,
                                     # TF32), else the CPU (256x256, fp32): hours on 1 CPU core
    python bench.py --quick          # smaller sizes and budgets (QUICK below): about 20 minutes on 1 CPU core
    python bench.py --json           # one JSON object instead of the Markdown table
    python bench.py --json-out F     # and F rewritten after every section with the figures so far
    python bench.py --sections fps   # frames per second alone (on CUDA batch 1, 854x480 frames; see fps)
    python bench.py --threads 1      # on a machine busy with other jobs, where two threads on two cores crawl
    python bench.py --device cuda --frames 16 --size 512 --budget 120 --precision 0.002

Figures: (1) the cost of shift and matching over the frame-by-frame model with the same weights and input (MaskFormer
with the Swin-T architecture of facebook/maskformer-swin-tiny-ade, random weights, built offline), and per model
frames per second in inference and training, matching's share of the forward time and, on CUDA, peak memory of one
clip (the models compared are listed in `variants`); (2) peak memory of
whole-video inference, streamed (streaming.predict_video) beside the video run as one clip; (3) 16-frame training
clips per second from VSPW-like 480p files on one loader worker; (4) the confusion-matrix update per 480p frame;
(5) frames per second as papers report them: absolute, batch 1, offline and online (see fps); (6) Mask2Former's cost.
Time ratios come from blocks of runs A B B A after a warm-up: the median of the blocks' ratios, with blocks added
until its 95% interval is within ±--precision (0.5%) or --budget seconds per ratio are spent (see side_by_side).
A control pair, the frame-by-frame model timed against itself, shows the timing's noise floor.
On the CPU the models are timed on this process's CPU time, which leaves out the time other jobs hold the cores.
CPU memory is read from Linux's /proc (peak resident set size), so the CPU memory figures need Linux.
"""
import argparse
import json
import math
import os

from cli import add_amp, device_name, fail, make_parser

SECTIONS = ("fps", "cost", "memory", "data", "metrics", "mask2former")  # in the order they run
QUICK = dict(frames=4, size=64, min_blocks=3, budget=75.0, mem_frames=[16, 64], mem_size=64, clips=6)


def positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def at_least_0(text):
    try:
        number = float(text)
    except ValueError:
        number = -1.0
    if not (math.isfinite(number) and number >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number of at least 0")
    return number


def parse_args(argv=None):
    """The flags, --quick's smaller defaults filled in where a flag is not given; a bad one exits with one line. It
    needs no torch (see cli.py): whether CUDA is there is checked in main."""
    parser = make_parser(__doc__)
    parser.add_argument("--device", type=device_name, help="cpu, cuda or cuda:N (default: cuda when present)")
    parser.add_argument("--threads", type=positive, default=len(os.sched_getaffinity(0)), help="CPU cores to use")
    parser.add_argument("--frames", type=positive, default=16, help="frames per clip for the cost figures")
    parser.add_argument("--size", type=positive, help="frame height and width of the cost figures (CUDA 480, CPU 256)")
    parser.add_argument("--min-blocks", type=positive, default=5, help="timed blocks A B B A per ratio, at least")
    parser.add_argument("--budget", type=at_least_0, default=60.0,
                        help="seconds per time ratio, after which it stops adding blocks (0: min-blocks exactly)")
    parser.add_argument("--precision", type=at_least_0, default=0.005,
                        help="stop a ratio once its 95%% interval is within ± this fraction of it (0: use the budget)")
    parser.add_argument("--mem-frames", type=positive, nargs=2, default=[16, 128], help="the two video lengths")
    parser.add_argument("--mem-size", type=positive, default=128, help="frame height and width for the memory figures")
    parser.add_argument("--clips", type=positive, default=20, help="clips timed for the data figures")
    parser.add_argument("--fps-frames", type=positive, help="frames of the fps section's clip (CUDA 64, CPU 4)")
    parser.add_argument("--fps-size", type=positive, nargs=2, metavar=("H", "W"),
                        help="frame size of the fps section (CUDA 480 854, VSPW's 480p; CPU 32 56)")
    parser.add_argument("--quick", action="store_true", help=f"smaller defaults: {QUICK}")
    add_amp(parser, default=None, shown="auto on CUDA, off on the CPU")  # settle_device decides
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="NAME",
                        help=f"the sections to run, of {' '.join(SECTIONS)} (default: all), always in that order")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--json-out", metavar="FILE", help="rewrite FILE after every section with the figures so far")
    args = parser.parse_args(argv)
    if args.quick:
        args = parser.parse_args(argv, argparse.Namespace(**QUICK))  # preset attributes take no defaults
    if args.mem_frames[0] >= args.mem_frames[1]:
        fail(f"--mem-frames {args.mem_frames[0]} {args.mem_frames[1]}: the second must be the longer video")
    if args.fps_size and -(-args.fps_size[0] // 32) * -(-args.fps_size[1] // 32) < 2:  # Swin pads to 32 pixels
        fail(f"--fps-size {args.fps_size[0]} {args.fps_size[1]}: the backbone's last map (1/32 of the frame) needs at "
             f"least 2 pixels for its GroupNorm at batch 1")
    if args.json_out and not os.path.isdir(os.path.dirname(os.path.abspath(args.json_out))):
        fail(f"--json-out {args.json_out}: its folder does not exist")
    return args


# Flags are read before the imports below (2-4 s, torch and transformers), so that --help and mistakes answer at once;
# the same pattern in train.py and evaluate.py.
if __name__ == "__main__":
    args = parse_args()

import copy
import ctypes
import gc
import multiprocessing
import platform
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy.stats import binom
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from torch.utils.data import DataLoader
from transformers import DetrConfig, Mask2FormerConfig, MaskFormerConfig, SwinConfig

import cli
import data
import matcher
import qshift
import streaming
from memory import checkpoint_activations
from metrics import SegMetrics
from tiny import build_model


def swin_tiny_config(family="maskformer"):
    """The architecture of facebook/maskformer-swin-tiny-ade (150 ADE20K classes), or with family="mask2former" of
    facebook/mask2former-swin-tiny-ade-semantic, to build with random weights."""
    backbone = SwinConfig(image_size=224, patch_size=4, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                          window_size=7, drop_path_rate=0.3, out_features=["stage1", "stage2", "stage3", "stage4"])
    if family == "mask2former":  # HF's defaults are that checkpoint's: 100 queries of 256 channels, 10 layers
        return Mask2FormerConfig(backbone_config=backbone, num_labels=150)
    decoder = DetrConfig(d_model=256, decoder_layers=6, decoder_attention_heads=8, decoder_ffn_dim=2048,
                         num_queries=100)
    return MaskFormerConfig(backbone_config=backbone, decoder_config=decoder, fpn_feature_size=256,
                            mask_feature_size=256, num_labels=150)


def model_clock(device):
    """The clock models are timed on: wall time on CUDA; on the CPU this process's CPU time, which leaves out the time
    other jobs hold the cores (on a shared machine most of the noise of wall time)."""
    return time.perf_counter if device.startswith("cuda") else time.process_time


def timed(fn, device, clock=time.perf_counter):
    """Seconds one call of fn takes on `clock`, waiting for the device's queued work; as timeit does, Python's garbage
    collector is held off during the call, so that a collection of the whole process does not land in one timing."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)
    sync()
    gc.disable()
    start = clock()
    fn()
    sync()
    seconds = clock() - start
    gc.enable()
    return seconds


def peak_memory(fn, device):
    """MiB of device memory in use at the peak of one call of fn, counting what was there before (weights, optimizer
    state); None on the CPU, where PyTorch keeps no such count."""
    if not device.startswith("cuda"):
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def side_by_side(fa, fb, device, budget, precision=0.005, min_blocks=5, warmup=1, clock=None):
    """The time ratio fb / fa, from as many blocks of runs as it takes to know it to ±precision, or `budget` seconds.

    The runs come in blocks A B B A, so that load that drifts hits both alike: the block's ratio, B's two runs over
    A's two, cancels a load that changes linearly over the block and the cost (or gain) of running first. The median
    of the blocks' ratios leaves out the blocks that a burst of another job hit. Its spread is the 95% interval of a
    median that holds whatever the ratios' distribution: each block's ratio falls below the true median with
    probability 1/2, so of n sorted ratios the k-th smallest and the k-th largest enclose it unless fewer than k fall
    on one side, which happens with probability 2 P(Binomial(n, 1/2) < k); k is the largest that keeps this <= 5%.
    Below 6 blocks none does: the interval is then all their range, and not precise. After `warmup` runs of each and
    min_blocks blocks, blocks are added until both ends of the interval lie within ±precision of the median (precise)
    or `budget` seconds of wall time, the warm-up included, have passed. clock: what times a run (default:
    model_clock(device)).

    Returns a dict: a_s, b_s (median seconds of one run of fa, of fb), ratio (median of the blocks' ratios),
    interval [low, high] (its 95% interval), blocks (the number timed) and precise.
    """
    clock = clock or model_clock(device)
    deadline = time.perf_counter() + budget
    for _ in range(warmup):
        fa(), fb()
    blocks = []  # (mean seconds of fa's two runs, of fb's two runs)
    while True:
        a = timed(fa, device, clock)
        b = timed(fb, device, clock) + timed(fb, device, clock)
        a += timed(fa, device, clock)
        blocks.append((a / 2, b / 2))
        if len(blocks) < min_blocks:
            continue
        n, ratios = len(blocks), np.sort([b / a for a, b in blocks])
        k = int((binom.cdf(np.arange(n), n, 0.5) <= 0.025).sum())  # P(Binomial(n, 1/2) < k) <= 2.5%; 0 if n < 6
        ratio, low, high = np.median(ratios), ratios[max(k, 1) - 1], ratios[n - max(k, 1)]
        precise = k > 0 and max(ratio - low, high - ratio) <= precision * ratio
        if precise or time.perf_counter() > deadline:
            break
    a_s, b_s = np.median(blocks, axis=0)
    return {"a_s": float(a_s), "b_s": float(b_s), "ratio": float(ratio), "interval": [float(low), float(high)],
            "blocks": n, "precise": bool(precise)}


# -----------------------------------------------------------------------------
# 1. cost of shift and matching


BASE, PAPER = "frame by frame (shift 0)", "shift 1/16 + matching"
CONTROL, REACH = "frame by frame, against itself", "shift 1/4 at pixels, reach 3"
CHECKPOINTED = "frame by frame, gradient checkpointing"
SHIFTED = [  # (name, settings, the model it is timed against) of the models measured side by side with another
    (CONTROL, None, BASE),  # settings None: the frame-by-frame model itself, whose ratio shows the noise floor
    (PAPER, dict(shift_div=16, match=True), BASE),
    ("shift 1/16, queries matched by masks", dict(shift_div=16, match_by="masks"), BASE),
    ("shift 1/16 at pixels", dict(shift_div=16, shift_at=("pixels",)), BASE),
    ("shift 1/16 at backbone", dict(shift_div=16, shift_at=("backbone",)), BASE),
    ("shift 1/16 at queries + pixels, matching", dict(shift_div=16, shift_at=("queries", "pixels")), BASE),
    # reach: the same 1/4 of the 256 pixel-embedding channels (32 each way) from frames t-3..t+3, 11, 11 and 10
    ("shift 1/4 at pixels", dict(shift_div=4, shift_at=("pixels",)), BASE),
    (REACH, dict(shift_div=4, shift_at=("pixels",), reach=3), "shift 1/4 at pixels"),
    # train.py --gradient-checkpointing: a copy of the baseline whose blocks recompute their activations in backward
    (CHECKPOINTED, lambda base: checkpoint_activations(copy.deepcopy(base)), BASE),
]


def variants(config, device, shifted=SHIFTED):
    """The models compared, as (name, model, against) triples: first the frame-by-frame image model, the baseline,
    against None; then the `shifted` ones, with its weights, each timed against the model named `against` (settings:
    a dict of qshift.Settings, None for the baseline itself, or a function that makes the model from it)."""
    torch.manual_seed(0)
    base = build_model(config, shift_div=0).to(device)
    matcher.install(base.model)  # the loss's matcher that train.py installs: one host wait per call, float32 costs

    def model(settings):
        return base if settings is None else settings(base) if callable(settings) else \
            qshift.QShiftSegmenter(base.model, **settings)
    return [(BASE, base, None)] + [(name, model(settings), against) for name, settings, against in shifted]


def model_cost(models, frames, size, device, amp=None, **timing):
    """Speed and memory of each (name, model, against) of `models` on one clip (1, frames, 3, size, size): inference
    (forward) and a training step (the model's own loss, AdamW), each model timed side by side with the model named
    `against`; timing: side_by_side's budget, precision, min_blocks.

    Returns one dict per model: name, against; forward_ms, train_step_ms (median ms per clip, on model_clock);
    forward_fps, train_step_fps (frames per second); forward_ratio, train_step_ratio (median time ratio to `against`,
    blocks A B B A), with their _interval (95% interval), _blocks and _precise (side_by_side's; all None for
    the baseline); forward_peak_mib, train_step_peak_mib (peak device memory, None on the CPU); match_pct (for
    models that match: match_queries alone on this clip's decoded queries, in percent of the model's forward time, else
    None). And the milliseconds of match_queries alone. amp: an autocast dtype or None; in float16 the training
    step scales its loss, as train.py does.
    """
    x = torch.randn(1, frames, 3, size, size, device=device)
    config = models[0][1].model.config
    coarse = torch.randint(config.num_labels, (frames, 1, 4, 4)).float()  # a few blocks of classes per frame
    labels = F.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long().to(device)  # (T, H, W)
    mask_labels, class_labels = zip(*(data.mask_targets(frame) for frame in labels))
    shared = dict.fromkeys(p for _, model, _ in models for p in model.parameters())  # each weight once, in order
    optimizer = torch.optim.AdamW(shared, lr=1e-5)
    autocast = torch.autocast(torch.device(device).type, dtype=amp, enabled=amp is not None)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=amp == torch.float16)

    def forward(model):
        with torch.no_grad(), autocast:
            model(x)

    def train_step(model):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(x, list(mask_labels), list(class_labels)).loss
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    by_name = {name: model for name, model, _ in models}
    rows = {name: {"name": name, "against": against} for name, _, against in models}
    for key, run, training in (("forward", forward, False), ("train_step", train_step, True)):
        for model in by_name.values():
            model.train(training)
        for name, model, against in models:
            times = dict(ratio=None, interval=None, blocks=None, precise=None)
            if against is not None:
                times = side_by_side(lambda: run(by_name[against]), lambda: run(model), device, **timing)
                rows[against].setdefault(f"{key}_ms", 1e3 * times["a_s"])  # untimed yet: from its first pairing
                rows[name][f"{key}_ms"] = 1e3 * times["b_s"]
            rows[name].update({f"{key}_{k}": times[k] for k in ("ratio", "interval", "blocks", "precise")})
        for name, model, _ in models:
            rows[name][f"{key}_fps"] = frames / (rows[name][f"{key}_ms"] / 1e3)
            rows[name][f"{key}_peak_mib"] = peak_memory(lambda: run(model), device)
    base = models[0][1].eval()
    with torch.no_grad():  # the decoded queries of this clip, what matching sees: the Hungarian algorithm takes
        # 3-4 times as long on them as on random queries (alike queries, close costs)
        q = base.decode(base.backbone(x.flatten(0, 1)))[0].unflatten(0, (1, frames))  # (1, T, Q, C)
    qshift.match_queries(q)  # warm-up
    clock = model_clock(device)
    match_ms = 1e3 * statistics.median(timed(lambda: qshift.match_queries(q), device, clock) for _ in range(10))
    for name, model, _ in models:
        rows[name]["match_pct"] = 100 * match_ms / rows[name]["forward_ms"] if model.settings.matches else None
    return list(rows.values()), match_ms


# -----------------------------------------------------------------------------
# 2. whole-video inference memory, each case in a fresh process, where no earlier allocation hides its peak


def _status_bytes(key):
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: peak resident), in bytes."""
    with open("/proc/self/status") as f:
        return 1024 * next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def memory_case(mode, frames, size, config, device, amp=None, settings=None):
    """Run in a fresh process: build the model (qshift settings: the paper's by default), run one video of `frames`
    random frames streamed ("stream") or as one clip ("clip"), and return its peak memory above the built model, in
    MiB. amp: an autocast dtype or None."""
    torch.set_num_threads(1)  # threads change the time, not the memory
    model = build_model(config, **(settings or {})).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
    else:
        # glibc: a fixed mmap threshold (M_MMAP_THRESHOLD = -3) gives large freed blocks back at once, so the peak is
        # that of live memory; with the default sliding threshold they linger in the heap, and the same 16-frame run
        # varies by 20-40 MiB from one process to the next
        ctypes.CDLL(None).mallopt(-3, 64 * 1024)
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak (VmHWM) to the resident memory now
        start = _status_bytes("VmRSS")
    with torch.no_grad():
        if mode == "stream":  # frames made one at a time, as a video file is read
            video = (torch.randn(3, size, size, generator=gen) for _ in range(frames))
            for _ in streaming.predict_video(model, video, amp=amp):
                pass
        else:
            with torch.autocast(torch.device(device).type, dtype=amp, enabled=amp is not None):
                model(torch.randn(1, frames, 3, size, size, generator=gen).to(device))
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - start) / 2**20
    return (_status_bytes("VmHWM") - start) / 2**20


def memory(config, frame_counts, size, device, amp=None, settings=None, modes=("stream", "clip")):
    """Peak MiB of whole-video inference for the two video lengths, streamed and as one clip (or the `modes` given),
    each case in a fresh process forked from one that has only imported the modules, all at once."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["qshift", "evaluate"])  # imported once, not once per case
    with ProcessPoolExecutor(2 * len(modes), mp_context=context, max_tasks_per_child=1) as pool:
        runs = {(mode, n): pool.submit(memory_case, mode, n, size, config, device, amp, settings)
                for mode in modes for n in frame_counts}
        peak = {case: run.result() for case, run in runs.items()}
    short, long = frame_counts
    return {figure: value for mode in modes for figure, value in (
        (f"{mode}_mib_short", peak[mode, short]), (f"{mode}_mib_long", peak[mode, long]),
        (f"{mode}_ratio", peak[mode, long] / peak[mode, short]))}


# -----------------------------------------------------------------------------
# 3. data loading


def make_vspw(root, videos=2, frames=32, width=853, height=480):
    """Write a VSPW-like data set (official layout): JPEG frames and PNG masks of raw ids 0..124 (0: "others"),
    scenes of 12 blocks of classes (VSPW frames show about ten) with grain, panning 4 pixels a frame, and train.txt."""
    rng = np.random.default_rng(0)
    palette = rng.integers(0, 256, (256, 3)).astype(np.int16)
    names = [f"video_{v}" for v in range(videos)]
    for name in names:
        coarse = Image.fromarray(rng.integers(0, 125, (3, 4), dtype=np.uint8))
        scene = np.asarray(coarse.resize((width + 4 * frames, height), Image.NEAREST))  # (H, W + 4T) raw ids
        for sub in ("origin", "mask"):
            os.makedirs(os.path.join(root, "data", name, sub))
        for t in range(frames):
            mask = scene[:, 4 * t:4 * t + width]
            grain = rng.integers(-12, 13, (height, width, 3), dtype=np.int16)  # natural images are not flat
            image = (palette[mask] + grain).clip(0, 255).astype(np.uint8)
            Image.fromarray(image).save(os.path.join(root, "data", name, "origin", f"{t:05d}.jpg"), quality=90)
            Image.fromarray(mask).save(os.path.join(root, "data", name, "mask", f"{t:05d}.png"))
    with open(os.path.join(root, "train.txt"), "w") as f:
        f.write("\n".join(names) + "\n")


def data_speed(clips, clip_len=16):
    """Training clips (480x480 crops, random scale and flip) per second through a DataLoader with one worker, and
    the milliseconds per clip (read and collated) in this process alone, from a temporary VSPW-like folder."""
    with tempfile.TemporaryDirectory() as root:
        make_vspw(root, frames=2 * clip_len)
        dataset = data.build_dataset("vspw", root, "train", clip_len=clip_len, train=True, crop=(480, 480),
                                     min_frames=2 * clip_len)
        single = statistics.median(timed(lambda: data.collate([dataset[i % len(dataset)]]), "cpu")
                                   for i in range(clips))
        loader = DataLoader(dataset, batch_size=1, sampler=[i % len(dataset) for i in range(clips + 1)],
                            num_workers=1, collate_fn=data.collate)
        batches = iter(loader)
        next(batches)  # starts the worker: not timed
        elapsed = timed(lambda: [None for _ in batches], "cpu")
    return {"data_clips_per_s": clips / elapsed, "data_ms_per_clip": 1e3 * single}


# -----------------------------------------------------------------------------
# 4. metrics


def metrics_speed(blocks=12, num_classes=data.VSPW_NUM_CLASSES, size=(480, 853)):
    """Milliseconds per 480p frame of SegMetrics.update on one core, beside a plain masked bincount."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    pred = torch.randint(num_classes, size, generator=gen)
    label = torch.randint(num_classes, size, generator=gen)
    label[torch.rand(size, generator=gen) < 0.1] = data.IGNORE_INDEX
    metrics, confusion = SegMetrics(num_classes), torch.zeros(num_classes**2, dtype=torch.int64)

    def masked_bincount():
        keep = label != data.IGNORE_INDEX
        confusion.add_(torch.bincount(label[keep] * num_classes + pred[keep], minlength=num_classes**2))

    times = side_by_side(lambda: metrics.update(pred, label), masked_bincount, "cpu", budget=0, min_blocks=blocks)
    torch.set_num_threads(threads)
    return {"metrics_ms": 1e3 * times["a_s"], "metrics_baseline_ms": 1e3 * times["b_s"]}


# -----------------------------------------------------------------------------
# 5. frames per second as papers report them: absolute, batch 1, the method stated (fps_method)


FPS_RUNS = 3  # timed passes of each model


def fps(config, frames, size, device, amp=None, runs=FPS_RUNS):
    """Frames per second of the image model (shift 0) and the paper's setting (shift 1/16 + matching), the same
    weights, on one video of `frames` random frames of size (H, W) made beforehand on the device: offline, the
    whole clip through streaming.predict_video; online, the causal model (causal=True) one frame at a time (chunk 1),
    each frame timed from its pixels to its class map. After a warm-up pass of each, `runs` passes of each in turn,
    on wall time, the device synchronised before and after each timed region (timed).

    Returns, for name image and paper: fps_offline_{name} (frames over the median pass), online_ms_{name} and
    online_p90_ms_{name} (median and 90th percentile latency, ms), fps_online_{name} (frames over their total time).
    """
    torch.manual_seed(0)
    image = build_model(config, shift_div=0).to(device).eval()
    models = {"image": (image, image),  # (offline, online): shift 0 has nothing to make causal
              "paper": (qshift.QShiftSegmenter(image.model), qshift.QShiftSegmenter(image.model, causal=True))}
    video = torch.randn(frames, 3, *size, device=device)

    def offline(model):
        for _ in streaming.predict_video(model, video, amp=amp):
            pass

    def online(model):  # the maps taken one by one, each as soon as its frame is in
        maps = streaming.predict_video(model, video, chunk=1, amp=amp)
        return [timed(lambda: next(maps), device) for _ in range(frames)]

    for clip_model, causal_model in models.values():
        offline(clip_model), online(causal_model)
    passes = {name: ([], []) for name in models}  # seconds per offline pass, per online frame
    for _ in range(runs):
        for name, (clip_model, causal_model) in models.items():
            passes[name][0].append(timed(lambda: offline(clip_model), device))
            passes[name][1].extend(online(causal_model))
    figures = {}
    for name, (seconds, latencies) in passes.items():
        figures.update({f"fps_offline_{name}": frames / statistics.median(seconds),
                        f"online_ms_{name}": 1e3 * statistics.median(latencies),
                        f"online_p90_ms_{name}": 1e3 * float(np.percentile(latencies, 90)),
                        f"fps_online_{name}": len(latencies) / sum(latencies)})
    return figures


def precision(amp):
    """--amp as said in the report: float32 (TF32 matmuls on CUDA), or bf16 or fp16 autocast."""
    return "float32" if amp == "off" else f"{amp} autocast"


def fps_method(settings, device):
    """How fps measured, in words, for the report: what is counted and what is cached (see streaming.stream_logits)."""
    (height, width), where = settings["fps_size"], "CPU" if device == "cpu" else "GPU"
    return (f"Frames per second{' on the CPU, at reduced sizes (not a GPU figure)' if where == 'CPU' else ''}: batch "
            f"1, one video of {settings['fps_frames']} random {width}x{height} frames made beforehand on the {where} "
            f"(not counted), {precision(settings['amp'])}; counted: pixels in to each frame's class map at full size; "
            f"wall time, the device synchronised around each timed region, after a warm-up pass; {FPS_RUNS} passes. "
            "Offline: streaming.predict_video on the whole clip, the backbone 8 frames at a time (shifted, frame t's "
            "map waits for frame t+1); online: a causal model, one frame at a time, latency from a frame's pixels to "
            "its map. Nothing is cached across frames but, in the shifted model, the streaming halo: the decoded "
            "queries and pixel embeddings of the last frame (reach 1), which each new frame is matched to and shifted "
            "with.")


# -----------------------------------------------------------------------------


def timing(model, key):
    """A time ratio of model_cost's dict of a model (key: forward or train_step) as a figure: {value, interval,
    blocks, precise}."""
    return {"value": model[f"{key}_ratio"], **{k: model[f"{key}_{k}"] for k in ("interval", "blocks", "precise")}}


def model_figures(models, match_ms):
    """The figures of the table from model_cost's results: the time ratios of the control, the paper's setting and
    reach 3, each to the model it was timed against, and the frame-by-frame model's own times."""
    by_name = {model["name"]: model for model in models}
    base, paper = by_name[BASE], by_name[PAPER]
    figures = {"forward_ms": base["forward_ms"], "train_step_ms": base["train_step_ms"], "match_ms": match_ms,
               "match_pct": paper["match_pct"]}
    for prefix, name in (("control_", CONTROL), ("", PAPER), ("reach_", REACH)):
        for key in ("forward", "train_step"):
            figures[f"{prefix}{key}_ratio"] = timing(by_name[name], key)
    figures["checkpoint_train_step_ratio"] = timing(by_name[CHECKPOINTED], "train_step")
    return figures


STREAMED = {  # figure key -> the settings whose streamed memory is measured besides the paper's
    "pixels": dict(shift_at=("pixels",)), "backbone": dict(shift_at=("backbone",)),
    "masks": dict(match_by="masks"), "backbone_queries": dict(shift_at=("backbone", "queries"))}


def collect(args, config, m2f_config, clip_len=16, metric_blocks=12):
    """The figures of args.sections, {key: value} (time ratios as timing's dicts), and model_cost's dict per model
    (MaskFormer's, then Mask2Former's). After each section, and after a section that fails (before its error is
    raised), the report so far is written to args.json_out, when given, with sections_done and failed."""
    amp = cli.amp_dtype(args.amp, torch.device(args.device))
    cost = dict(frames=args.frames, size=args.size, device=args.device, amp=amp, min_blocks=args.min_blocks,
                budget=args.budget, precision=args.precision)
    video = (args.mem_frames, args.mem_size, args.device, amp)

    def maskformer_cost():
        models, match_ms = model_cost(variants(config, args.device), **cost)
        return model_figures(models, match_ms), models

    def memory_figures():
        figures = memory(config, *video)
        for key, settings in STREAMED.items():
            figures[f"stream_ratio_{key}"] = memory(config, *video, settings, modes=("stream",))["stream_ratio"]
        return figures, []

    def mask2former_cost():
        m2f, _ = model_cost(variants(m2f_config, args.device, [s for s in SHIFTED if s[0] == PAPER]), **cost)
        figures = dict(m2f_forward_ratio=timing(m2f[1], "forward"), m2f_train_step_ratio=timing(m2f[1], "train_step"),
                       m2f_stream_ratio=memory(m2f_config, *video, modes=("stream",))["stream_ratio"])
        for model in m2f:
            model["name"] = "Mask2Former, " + model["name"]
            model["against"] = model["against"] and "Mask2Former, " + model["against"]
        return figures, m2f

    run = {"fps": lambda: (fps(config, args.fps_frames, args.fps_size, args.device, amp), []),
           "cost": maskformer_cost, "memory": memory_figures,
           "data": lambda: (data_speed(args.clips, clip_len), []),
           "metrics": lambda: (metrics_speed(metric_blocks), []), "mask2former": mask2former_cost}
    figures, models, done = {}, [], []
    for section in (s for s in SECTIONS if s in args.sections):
        try:
            more, more_models = run[section]()
        except Exception as e:
            save(args, figures, models, done, failed=f"{section}: {cli.first_line(e)}")
            raise
        figures.update(more)
        models += more_models
        done.append(section)
        save(args, figures, models, done)
    return figures, models


def save(args, figures, models, done, failed=None):
    """Write the report so far to args.json_out (if given) atomically: a reader finds the last one whole."""
    if args.json_out:
        cli.write_json(args.json_out, {**report(args, figures, models), "sections_done": done, "failed": failed})


def rows(args):
    """(key, figure, goal) for the table, goal as (operator, bound) (see meets) or None."""
    short, long = args.mem_frames
    clip = f"{args.frames} frames at {args.size}x{args.size}"
    video = f"{args.mem_size}x{args.mem_size}"
    fps_clip = f"{args.fps_frames} frames at {args.fps_size[1]}x{args.fps_size[0]}, batch 1" + \
        (", CPU reduced" if args.device == "cpu" else "")
    return [("control_forward_ratio", f"forward time, frame-by-frame / itself: the noise floor ({clip})",
             ("1 ±", 0.01)),
            ("control_train_step_ratio", "training step time (AdamW, HF loss), frame-by-frame / itself",
             ("1 ±", 0.01)),
            ("forward_ratio", "forward time, shift+matching / frame-by-frame", ("<=", 1.01)),
            ("train_step_ratio", "training step time, shift+matching / frame-by-frame", ("<=", 1.02)),
            ("reach_forward_ratio", "forward time, pixels 1/4 at reach 3 / at reach 1", ("<=", 1.01)),
            ("reach_train_step_ratio", "training step time, pixels 1/4 at reach 3 / at reach 1", ("<=", 1.02)),
            ("checkpoint_train_step_ratio", "training step time, --gradient-checkpointing / without (frame by frame)",
             None),
            ("forward_ms", "forward, frame-by-frame (ms per clip)", None),
            ("train_step_ms", "training step, frame-by-frame (ms per clip)", None),
            ("match_ms", "match_queries alone (ms per clip)", None),
            ("match_pct", "match_queries alone, % of the shift+matching forward time", None),
            ("stream_mib_short", f"streamed inference, {short} frames at {video} (MiB)", None),
            ("stream_mib_long", f"streamed inference, {long} frames (MiB)", None),
            ("stream_ratio", f"streamed inference memory, {long} / {short} frames", ("<=", 1.1)),
            *[(f"stream_ratio_{key}", f"the same, {key.replace('_', ' + ')} shifted" if key != "masks" else
               "the same, queries matched by masks", ("<=", 1.1)) for key in STREAMED],
            ("clip_mib_short", f"as one clip (model forward alone), {short} frames (MiB)", None),
            ("clip_mib_long", f"as one clip, {long} frames (MiB)", None),
            ("clip_ratio", f"as one clip memory, {long} / {short} frames", None),
            ("data_clips_per_s", "16-frame 480p training clips per second, 1 loader worker", (">=", 10)),
            ("data_ms_per_clip", "one clip in one process (ms)", None),
            ("metrics_ms", "SegMetrics.update, 1 core (ms per 480x853 frame, 124 classes)", ("<=", 2)),
            ("metrics_baseline_ms", "masked bincount, boolean indexing (ms per frame)", None),
            *[row for name, model, causal in (("image", "image model (shift 0)", ""),
                                              ("paper", "shift 1/16 + matching", ", causal"))
              for row in ((f"fps_offline_{name}", f"frames/s offline, {model}, whole clip ({fps_clip})", None),
                          (f"online_ms_{name}", f"online latency, {model}{causal}: median ms per frame", None),
                          (f"online_p90_ms_{name}", "the same, 90th percentile (ms)", None),
                          (f"fps_online_{name}", "the same, frames/s", None))],
            ("m2f_forward_ratio", f"Mask2Former: forward time, shift+matching / frame-by-frame ({clip})",
             ("<=", 1.01)),
            ("m2f_train_step_ratio", "Mask2Former: training step time, shift+matching / frame-by-frame", ("<=", 1.02)),
            ("m2f_stream_ratio", f"Mask2Former: streamed inference memory, {long} / {short} frames", ("<=", 1.1))]


def machine(args):
    """CPU model, cores used and available, library versions, device name."""
    cpu = platform.processor() or "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    return {"cpu": cpu, "cores_used": args.threads, "cores_available": len(os.sched_getaffinity(0)),
            "torch": torch.__version__, "transformers": transformers.__version__, "device": device}


def meets(value, goal):
    """Whether value meets goal: ("<=", bound), (">=", bound) or ("1 ±", tolerance), a ratio of about 1."""
    op, bound = goal
    return value <= bound if op == "<=" else value >= bound if op == ">=" else abs(value - 1) <= bound


def report(args, figures, models=()):
    """The machine, the settings, every figure (with interval, blocks and precise for the time ratios) with its goal
    and whether its value meets it, and model_cost's dict per model, as one dict."""
    table = {}
    for key, name, goal in (row for row in rows(args) if row[0] in figures):  # a run's sections so far
        measured = figures[key] if isinstance(figures[key], dict) else {"value": figures[key]}
        table[key] = {"figure": name, **measured, "goal": goal and f"{goal[0]} {goal[1]}",
                      "met": goal and meets(measured["value"], goal)}
    settings = {k: getattr(args, k) for k in ("quick", "sections", "frames", "size", "amp", "min_blocks", "budget",
                                              "precision", "mem_frames", "mem_size", "clips", "fps_frames", "fps_size")}
    method = fps_method(settings, args.device) if "fps_offline_image" in figures else None
    return {"machine": machine(args), "settings": settings, "figures": table, "fps_method": method,
            "models": list(models)}


def _number(x):
    return "–" if x is None else f"{x:.3f}" if x < 100 else f"{x:.0f}"


def _spread(t):
    """A time ratio's spread as printed: its 95% interval and blocks, '0.995–1.004 (24 blocks)', with 'budget
    spent' where the budget ran out before the interval was within ±precision; '' for other figures."""
    if t.get("interval") is None:
        return ""
    low, high = t["interval"]
    return f"{low:.3f}–{high:.3f} ({t['blocks']} blocks{'' if t['precise'] else ', budget spent'})"


def markdown(rep):
    """The report as printed: settings, machine, a Markdown table of every figure and one of every model."""
    m, s = rep["machine"], rep["settings"]
    lines = [f"{'quick run' if s['quick'] else 'full run'}: {s}",
             f"machine: {m['cpu']}, {m['cores_used']} of {m['cores_available']} cores, torch {m['torch']}, "
             f"transformers {m['transformers']}, device {m['device']}",
             "model: MaskFormer with the Swin-T architecture of facebook/maskformer-swin-tiny-ade, random weights", "",
             "| figure | value | 95% interval (blocks) | goal | met? |", "|---|---|---|---|---|"]
    for row in rep["figures"].values():
        met = "" if row["met"] is None else "yes" if row["met"] else "**no**"
        lines.append(f"| {row['figure']} | {_number(row['value'])} | {_spread(row)} | {row['goal'] or ''} | {met} |")
    if rep["fps_method"]:
        lines += ["", rep["fps_method"]]
    if rep["models"]:
        clock = "CPU time of the bench process" if m["device"] == "cpu" else "wall time"
        lines += ["", f"Per model, one clip of {s['frames']} frames at {s['size']}x{s['size']}, "
                  f"{precision(s['amp'])}, timed on {clock}; time ratios to the model in the second column, run side "
                  "by side; peak memory: all tensors on the device, weights and optimizer state "
                  "included (CUDA only)", "",
                  "| model | timed against | inference frames/s | training frames/s | inference time ratio | 95% "
                  "interval (blocks) | training time ratio | 95% interval (blocks) | matching, % of forward "
                  "| peak MiB, inference | peak MiB, training |", "|---|---|" + "---:|" * 9]
        for model in rep["models"]:
            cells = [model["name"], model["against"] or "–", _number(model["forward_fps"]),
                     _number(model["train_step_fps"])]
            for key in ("forward", "train_step"):
                cells += [_number(model[f"{key}_ratio"]), _spread(timing(model, key))]
            cells += [_number(model[k]) for k in ("match_pct", "forward_peak_mib", "train_step_peak_mib")]
            lines.append("| " + " | ".join(cells) + " |")
        ratios = [(model, key) for model in rep["models"] for key in ("forward", "train_step")
                  if model[f"{key}_blocks"]]
        spent = [f"{model['name']} ({'inference' if key == 'forward' else 'training'})" for model, key in ratios
                 if not model[f"{key}_precise"]]
        goal = f"±{100 * s['precision']:g}%"
        lines += ["", f"Each time ratio took blocks A B B A until its 95% interval was within {goal} (at least "
                  f"{s['min_blocks']} blocks) or {s['budget']:g} s were spent: {len(ratios) - len(spent)} of "
                  f"{len(ratios)} reached {goal}" + (f"; the budget ran out for {', '.join(spent)}." if spent else ".")]
    return "\n".join(lines)


def settle_device(args):
    """Fill in what depends on the device: the device, the frame sizes and the precision, auto resolved to bf16 or
    fp16 (parse_args runs without torch)."""
    device = cli.device(args.device)  # TF32 on CUDA, as train.py
    args.device, cuda = str(device), device.type == "cuda"
    args.size = args.size or (480 if cuda else 256)  # on a GPU the paper's size; the CPU would take an hour
    args.fps_frames = args.fps_frames or (64 if cuda else 4)
    args.fps_size = args.fps_size or ([480, 854] if cuda else [32, 56])  # VSPW's 480p on a GPU
    amp = cli.amp_dtype(args.amp or ("auto" if cuda else "off"), device)  # CPU autocast is slow on most CPUs
    args.amp = {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]
    return args


def main(args):
    """Run the benchmarks that parse_args asked for and print the report."""
    settle_device(args)
    torch.set_num_threads(args.threads)
    # glibc: keep freed memory in the heap for reuse (M_MMAP_THRESHOLD = -3, M_TRIM_THRESHOLD = -1, 1 GiB), as
    # PyTorch's allocator does on CUDA; else every training step asks the kernel for fresh zeroed pages, which cost
    # what the other jobs leave them (on our shared 2-core machine an eighth of a step's CPU time, and most of its
    # spread). The memory figures run in fresh processes with their own setting.
    libc = ctypes.CDLL(None)
    libc.mallopt(-3, 2**30), libc.mallopt(-1, 2**30)
    cli.quiet_transformers()
    rep = report(args, *collect(args, swin_tiny_config(), swin_tiny_config("mask2former")))
    print(json.dumps(rep, indent=2) if args.json else markdown(rep))


if __name__ == "__main__":
    main(args)
