"""
Benchmarks of qshift, every figure measured side by side in one run (in the style of nanoGPT's bench.py).

    python bench.py                  # full sizes, on CUDA when present (16 frames at 480x480, bf16 autocast,
                                     # TF32), else the CPU (256x256, fp32): ~15 minutes on 1 CPU core
    python bench.py --quick          # smaller sizes and repeats (QUICK below): 1.5-2.5 minutes on 2 busy CPU cores
    python bench.py --json           # one JSON object instead of the Markdown table
    python bench.py --threads 1      # on a machine busy with other jobs, where two threads on two cores crawl
    python bench.py --device cuda --frames 16 --size 512 --repeats 8

Figures: (1) the cost of shift and matching over the frame-by-frame model with the same weights and input (MaskFormer
with the Swin-T architecture of facebook/maskformer-swin-tiny-ade, random weights, built offline), and per model
frames per second in inference and training, matching's share of the forward time and, on CUDA, peak memory of one
clip (the models compared are listed in `variants`); (2) peak memory of
whole-video inference, streamed (qshift.predict_video) beside the video run as one clip; (3) 16-frame training
clips per second from VSPW-like 480p files on one loader worker; (4) the confusion-matrix update per 480p frame.
Ratios come from interleaved runs (A B B A ...) after a warm-up: the median of the ratios of adjacent runs.
CPU memory is read from Linux's /proc (peak resident set size), so the CPU memory figures need Linux.
"""
import argparse
import json
import os
import re

from cli import fail, make_parser

QUICK = dict(frames=4, size=64, repeats=4, mem_frames=[16, 64], mem_size=64, clips=6)


def positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def parse_args(argv=None):
    """The flags, --quick's smaller defaults filled in where a flag is not given; a bad one exits with one line. It
    needs no torch (see cli.py): whether CUDA is there is checked in main."""
    parser = make_parser(__doc__)
    parser.add_argument("--device", help="cpu or cuda[:i] (default: cuda when present, else cpu)")
    parser.add_argument("--threads", type=positive, default=len(os.sched_getaffinity(0)), help="CPU cores to use")
    parser.add_argument("--frames", type=positive, default=16, help="frames per clip for the cost figures")
    parser.add_argument("--size", type=positive, help="frame height and width of the cost figures (CUDA 480, CPU 256)")
    parser.add_argument("--repeats", type=positive, default=6, help="timed runs of each variant")
    parser.add_argument("--mem-frames", type=positive, nargs=2, default=[16, 128], help="the two video lengths")
    parser.add_argument("--mem-size", type=positive, default=128, help="frame height and width for the memory figures")
    parser.add_argument("--clips", type=positive, default=20, help="clips timed for the data figures")
    parser.add_argument("--quick", action="store_true", help=f"smaller defaults: {QUICK}")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, help="bf16 autocast (default: on CUDA only)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.quick:
        args = parser.parse_args(argv, argparse.Namespace(**QUICK))  # preset attributes take no defaults
    if args.device is not None and not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        fail(f"--device {args.device}: use cpu or cuda[:i]")
    if args.mem_frames[0] >= args.mem_frames[1]:
        fail(f"--mem-frames {args.mem_frames[0]} {args.mem_frames[1]}: the second must be the longer video")
    return args


# Flags are read before the imports below (2-4 s, torch and transformers), so that --help and mistakes answer at once;
# the same pattern in train.py and evaluate.py.
if __name__ == "__main__":
    args = parse_args()

import ctypes  # noqa: E402
import gc  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import DetrConfig, Mask2FormerConfig, MaskFormerConfig, SwinConfig  # noqa: E402

import data  # noqa: E402
import evaluate  # noqa: E402
import qshift  # noqa: E402


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


def timed(fn, device):
    """Seconds one call of fn takes, waiting for the device's queued work."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


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


def side_by_side(fa, fb, repeats, device, warmup=1):
    """Run fa and fb interleaved, A B B A A B ..., so that drifting load hits both alike.

    Returns (median seconds of fa, median seconds of fb, median of the per-pair ratios fb / fa).
    """
    for _ in range(warmup):
        fa(), fb()
    pairs = []
    for i in range(repeats):
        if i % 2:
            b, a = timed(fb, device), timed(fa, device)
        else:
            a, b = timed(fa, device), timed(fb, device)
        pairs.append((a, b))
    a, b = zip(*pairs)
    return statistics.median(a), statistics.median(b), statistics.median(y / x for x, y in pairs)


# -----------------------------------------------------------------------------
# 1. cost of shift and matching


SHIFTED = [  # (name, settings) of the models measured against the frame-by-frame one; the paper's setting first
    ("shift 1/16 + matching", dict(shift_div=16, match=True)),
    ("shift 1/16, queries matched by masks", dict(shift_div=16, match_by="masks")),
    ("shift 1/16 at pixels", dict(shift_div=16, shift_at=["pixels"])),
    ("shift 1/16 at backbone", dict(shift_div=16, shift_at=["backbone"])),
    ("shift 1/16 at queries + pixels, matching", dict(shift_div=16, shift_at=["queries", "pixels"])),
]


def variants(config, device, shifted=SHIFTED):
    """The models compared, as (name, model) pairs: first the frame-by-frame image model, the baseline; then the
    `shifted` ones measured against it, which share its weights."""
    torch.manual_seed(0)
    frame_by_frame = qshift.build_model(config, shift_div=0).to(device)
    return [("frame by frame (shift 0)", frame_by_frame)] + \
        [(name, qshift.QShiftSegmenter(frame_by_frame.model, **settings)) for name, settings in shifted]


def model_cost(models, frames, size, repeats, device, amp=False):
    """Speed and memory of each (name, model) of `models` on one clip (1, frames, 3, size, size): inference
    (forward) and a training step (the model's own loss, AdamW), each model interleaved with the first.

    Returns one dict per model: name; forward_ms, train_step_ms (median ms per clip); forward_fps, train_step_fps
    (frames per second); forward_ratio, train_step_ratio (median time ratio to the first model, paired runs);
    forward_peak_mib, train_step_peak_mib (peak device memory, None on the CPU); match_pct (for models that match:
    match_queries alone on this clip's queries, in percent of the model's forward time, else None). And the
    milliseconds of match_queries alone. amp: bf16 autocast.
    """
    x = torch.randn(1, frames, 3, size, size, device=device)
    config = models[0][1].model.config
    coarse = torch.randint(config.num_labels, (frames, 1, 4, 4)).float()  # a few blocks of classes per frame
    labels = F.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long().to(device)  # (T, H, W)
    mask_labels, class_labels = zip(*(data.mask_targets(frame) for frame in labels))
    shared = dict.fromkeys(p for _, model in models for p in model.parameters())  # each weight once, in order
    optimizer = torch.optim.AdamW(shared, lr=1e-5)
    autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp)

    def forward(model):
        with torch.no_grad(), autocast:
            model(x)

    def train_step(model):
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(x, list(mask_labels), list(class_labels)).loss
        loss.backward()
        optimizer.step()

    base = models[0][1]
    rows = [{"name": name} for name, _ in models]
    for key, run, training in (("forward", forward, False), ("train_step", train_step, True)):
        for _, model in models:
            model.train(training)
        for row, (_, model) in zip(rows[1:], models[1:]):
            base_s, model_s, ratio = side_by_side(lambda: run(base), lambda: run(model), repeats, device)
            rows[0].setdefault(f"{key}_ms", 1e3 * base_s)  # the baseline's time from its first pairing
            row.update({f"{key}_ms": 1e3 * model_s, f"{key}_ratio": ratio})
        rows[0][f"{key}_ratio"] = 1.0
        for row, (_, model) in zip(rows, models):
            row[f"{key}_fps"] = frames / (row[f"{key}_ms"] / 1e3)
            row[f"{key}_peak_mib"] = peak_memory(lambda: run(model), device)
    Q, C = base.model.model.transformer_module.queries_embedder.weight.shape  # both families
    q = torch.randn(1, frames, Q, C, device=device)
    qshift.match_queries(q)  # warm-up
    match_ms = 1e3 * statistics.median(timed(lambda: qshift.match_queries(q), device) for _ in range(10))
    for row, (_, model) in zip(rows, models):
        row["match_pct"] = 100 * match_ms / row["forward_ms"] if model.shift_div and model.match else None
    return rows, match_ms


# -----------------------------------------------------------------------------
# 2. whole-video inference memory, each case in a fresh process, where no earlier allocation hides its peak


def _status_bytes(key):
    """A memory field of /proc/self/status (VmRSS: resident now, VmHWM: peak resident), in bytes."""
    with open("/proc/self/status") as f:
        return 1024 * next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def memory_case(mode, frames, size, config, device, amp=False, settings=None):
    """Run in a fresh process: build the model (qshift settings: the paper's by default), run one video of `frames`
    random frames streamed ("stream") or as one clip ("clip"), and return its peak memory above the built model, in
    MiB. amp: bf16 autocast."""
    torch.set_num_threads(1)  # threads change the time, not the memory
    model = qshift.build_model(config, **(settings or {})).to(device).eval()
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
            for _ in qshift.predict_video(model, video, amp=amp):
                pass
        else:
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
                model(torch.randn(1, frames, 3, size, size, generator=gen).to(device))
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - start) / 2**20
    return (_status_bytes("VmHWM") - start) / 2**20


def memory(config, frame_counts, size, device, amp=False, settings=None, modes=("stream", "clip")):
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


def metrics_speed(repeats=25, num_classes=data.VSPW_NUM_CLASSES, size=(480, 853)):
    """Milliseconds per 480p frame of SegMetrics.update on one core, beside a plain masked bincount."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    pred = torch.randint(num_classes, size, generator=gen)
    label = torch.randint(num_classes, size, generator=gen)
    label[torch.rand(size, generator=gen) < 0.1] = data.IGNORE_INDEX
    metrics, confusion = evaluate.SegMetrics(num_classes), torch.zeros(num_classes**2, dtype=torch.int64)

    def masked_bincount():
        keep = label != data.IGNORE_INDEX
        confusion.add_(torch.bincount(label[keep] * num_classes + pred[keep], minlength=num_classes**2))

    ours, base, _ = side_by_side(lambda: metrics.update(pred, label), masked_bincount, repeats, "cpu")
    torch.set_num_threads(threads)
    return {"metrics_ms": 1e3 * ours, "metrics_baseline_ms": 1e3 * base}


# -----------------------------------------------------------------------------


def model_figures(models, match_ms):
    """The figures of the table from model_cost's results: the second model (shift and matching) against the
    first (frame by frame)."""
    base, shifted = models[:2]
    return {"forward_ratio": shifted["forward_ratio"], "train_step_ratio": shifted["train_step_ratio"],
            "forward_ms": base["forward_ms"], "train_step_ms": base["train_step_ms"], "match_ms": match_ms,
            "match_pct": shifted["match_pct"]}


STREAMED = {  # figure key -> the settings whose streamed memory is measured besides the paper's
    "pixels": dict(shift_at=["pixels"]), "backbone": dict(shift_at=["backbone"]),
    "masks": dict(match_by="masks"), "backbone_queries": dict(shift_at=["backbone", "queries"])}


def collect(args, config, m2f_config, clip_len=16, metric_repeats=25):
    """Every figure, {key: value}, and model_cost's dict per model (MaskFormer's, then Mask2Former's)."""
    cost = (args.frames, args.size, args.repeats, args.device, args.amp)
    models, match_ms = model_cost(variants(config, args.device), *cost)
    m2f, _ = model_cost(variants(m2f_config, args.device, SHIFTED[:1]), *cost)
    video = (args.mem_frames, args.mem_size, args.device, args.amp)
    figures = {**model_figures(models, match_ms), **memory(config, *video), **data_speed(args.clips, clip_len),
               **metrics_speed(metric_repeats)}
    for key, settings in STREAMED.items():
        figures[f"stream_ratio_{key}"] = memory(config, *video, settings, modes=("stream",))["stream_ratio"]
    figures.update(m2f_forward_ratio=m2f[1]["forward_ratio"], m2f_train_step_ratio=m2f[1]["train_step_ratio"],
                   m2f_stream_ratio=memory(m2f_config, *video, modes=("stream",))["stream_ratio"])
    for model in m2f:
        model["name"] = "Mask2Former, " + model["name"]
    return figures, models + m2f


def rows(args):
    """(key, figure, goal) for the table, goal as (operator, bound) or None."""
    short, long = args.mem_frames
    clip = f"{args.frames} frames at {args.size}x{args.size}"
    video = f"{args.mem_size}x{args.mem_size}"
    return [("forward_ratio", f"forward time, shift+matching / frame-by-frame ({clip})", ("<=", 1.01)),
            ("train_step_ratio", "training step time (AdamW, HF loss), shift+matching / frame-by-frame", ("<=", 1.02)),
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


def report(args, figures, models=()):
    """The machine, the settings, every figure with its goal and whether it is met, and model_cost's dict per
    model, as one dict."""
    table = {}
    for key, name, goal in rows(args):
        value = figures[key]
        met = None if goal is None else value <= goal[1] if goal[0] == "<=" else value >= goal[1]
        table[key] = {"figure": name, "value": value, "goal": goal and f"{goal[0]} {goal[1]}", "met": met}
    settings = {k: getattr(args, k) for k in ("quick", "frames", "size", "amp", "repeats", "mem_frames", "mem_size",
                                              "clips")}
    return {"machine": machine(args), "settings": settings, "figures": table, "models": list(models)}


def _number(x):
    return "–" if x is None else f"{x:.3f}" if x < 100 else f"{x:.0f}"


def markdown(rep):
    """The report as printed: settings, machine, and a Markdown table of every figure."""
    m = rep["machine"]
    lines = [f"{'quick run' if rep['settings']['quick'] else 'full run'}: {rep['settings']}",
             f"machine: {m['cpu']}, {m['cores_used']} of {m['cores_available']} cores, torch {m['torch']}, "
             f"transformers {m['transformers']}, device {m['device']}",
             "model: MaskFormer with the Swin-T architecture of facebook/maskformer-swin-tiny-ade, random weights", "",
             "| figure | value | goal | met? |", "|---|---|---|---|"]
    for row in rep["figures"].values():
        met = "" if row["met"] is None else "yes" if row["met"] else "**no**"
        lines.append(f"| {row['figure']} | {_number(row['value'])} | {row['goal'] or ''} | {met} |")
    if rep["models"]:
        s = rep["settings"]
        lines += ["", f"Per model, one clip of {s['frames']} frames at {s['size']}x{s['size']}"
                  f"{', bf16 autocast' if s['amp'] else ''}; time ratios to the first model, run side by side; peak "
                  "memory: all tensors on the device, weights and optimizer state included (CUDA only)", "",
                  "| model | inference frames/s | training frames/s | inference time ratio | training time ratio "
                  "| matching, % of forward | peak MiB, inference | peak MiB, training |", "|---|" + "---:|" * 7]
        keys = ("forward_fps", "train_step_fps", "forward_ratio", "train_step_ratio", "match_pct",
                "forward_peak_mib", "train_step_peak_mib")
        lines += [f"| {m['name']} | " + " | ".join(_number(m[k]) for k in keys) + " |" for m in rep["models"]]
    return "\n".join(lines)


def settle_device(args):
    """Fill in what depends on the device: the device, the frame size and bf16 (parse_args runs without torch)."""
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {args.device}: CUDA is not available on this machine")
    cuda = args.device.startswith("cuda")
    args.size = args.size or (480 if cuda else 256)  # on a GPU the paper's size; the CPU would take an hour
    args.amp = cuda if args.amp is None else args.amp  # bf16 as train.py --amp; CPU autocast is slow on most CPUs
    return args


def main(args):
    """Run the benchmarks that parse_args asked for and print the report."""
    settle_device(args)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as train.py
    rep = report(args, *collect(args, swin_tiny_config(), swin_tiny_config("mask2former")))
    print(json.dumps(rep, indent=2) if args.json else markdown(rep))


if __name__ == "__main__":
    main(args)
