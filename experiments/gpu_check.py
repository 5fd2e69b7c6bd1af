"""
The GPU check: about 8 minutes on one GPU, offline (synthetic data, random weights). Each part runs in its own
process until its deadline (the budgets so far, counted from the start); DIR/gpu_check.json is rewritten after every
figure, so a failure or a timeout keeps what came before. docs/gpu-check.md says what each part asks, its tolerance,
and how to read the JSON; experiments/gpu_check.sh runs this.

    python experiments/gpu_check.py [--out DIR]          # on CUDA; DIR: default $OUT if set, else runs/gpu_check
    python experiments/gpu_check.py --cpu [--out DIR]    # every part at tiny sizes on the CPU, to check the script
    python experiments/gpu_check.py --parts 1,streaming  # some parts, by number or name
"""
import argparse
import datetime
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the project's modules: cli, qshift, tiny, data, matcher, bench
import cli

TOLERANCE = 1e-4  # maps computed on two devices: at most this fraction of their pixels may differ
STREAM_TOLERANCE = {"fp32": 1e-4, "tf32": 1e-3, "bf16": 1e-2, "fp16": 1e-2}  # streamed against whole-clip maps
MEMORY_TOLERANCE = 0.25  # train.py --estimate-memory's peak_gib over the measured max_memory_gib: within 1 ± this
FAMILIES = ("maskformer", "mask2former")
BENCH_RATIOS, BENCH_OTHER_S = 20, 90  # bench.py on CUDA: its time ratios, its seconds besides them (our estimates)

# -----------------------------------------------------------------------------
# the record, and commands under a deadline


def run(cmd, timeout, log):
    """Run cmd from the project root, its output appended to the file log, in a process group of its own that is
    killed whole after timeout seconds. Returns (its exit status, None when killed; its output)."""
    with open(log, "a") as f:
        print("$", *cmd, file=f, flush=True)
        start = f.tell()
        proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(max(timeout, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # its children too: DataLoader workers, pytest's train.py runs
            proc.wait()
            code = None
    with open(log) as f:
        f.seek(start)
        return code, f.read()


class Part:
    """What a part's function works with, in the part's own process: cpu (CPU mode), device, work (a scratch
    folder), deadline, and its entry in DIR/gpu_check.json, saved after every figure and every skip."""

    def __init__(self, name, out, cpu, deadline, fail):
        self.name, self.out, self.cpu, self.deadline, self.fail = name, Path(out), cpu, deadline, fail
        self.device, self.work = "cpu" if cpu else "cuda", self.out / "work" / name
        self.work.mkdir(parents=True, exist_ok=True)
        self.entry = {"figures": {}, "failed": [], "skipped": []}

    def figure(self, key, value, check=None):
        """Record value under key; check: whether it passes the part's check (None: there is none)."""
        self.entry["figures"][key] = value
        self.entry["failed"] += [key] * (check is False)
        self.save()
        if self.fail:
            raise RuntimeError(f"forced by --fail {self.name}, after its first figure")

    def skip(self, what, why):
        self.entry["skipped"].append(f"{what} because {why}")
        self.save()

    def save(self):
        report = json.loads((self.out / "gpu_check.json").read_text())
        report["parts"][self.name].update(self.entry)
        cli.write_json(self.out / "gpu_check.json", report)

    def run(self, *cmd, margin=5):
        """Run a command until the part's deadline, less margin seconds to record what it did."""
        return run(cmd, self.deadline - time.time() - margin, log_path(self.out, self.name))


def last_line(text):
    """The last line of a command's output that is not blank: its error, when it failed."""
    return next((line for line in reversed(text.splitlines()) if line.strip()), "")


def outcome(code, text):
    """A command's exit status (None: killed at the deadline) and its last line, as figures."""
    return {"returncode": code, "last_line": last_line(text)}


def log_path(out, name):
    return out / "logs" / f"{list(PARTS).index(name) + 1}-{name}.log"


# -----------------------------------------------------------------------------
# what the parts share


def set_tf32(on):
    """TF32 for float32 matmuls and convolutions on CUDA (the scripts turn it on); nothing changes on the CPU."""
    import torch
    torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = "tf32" if on else "ieee"


def model_config(part, family):
    """The paper's architecture on CUDA (Swin-T, bench.swin_tiny_config, 150 classes); a tiny one on the CPU."""
    from tiny import tiny_config
    if part.cpu:
        return tiny_config(150, hidden_size=256, family=family)
    import bench
    return bench.swin_tiny_config(family)


def training_clip(T, size, device):
    """A training clip of the synthetic set (data.py) of frames of size (H, W), on device: pixel_values
    (1, T, 3, H, W) and HF's targets, T masks (n, H, W) and T classes (n,)."""
    import data
    world = data.build_dataset("synthetic", clip_len=T, num_videos=1, num_frames=T, size=size,
                               object_size=(min(size) // 4, min(size) // 2))
    batch = data.collate([world[0]])
    return (batch["pixel_values"].to(device), [m.float().to(device) for m in batch["mask_labels"]],
            [c.to(device) for c in batch["class_labels"]])


def training_step(model, optimizer, clip, autocast):
    """Forward with HF's loss, backward, clipping and the optimizer's step, as in train.py's loop."""
    import torch
    with autocast:
        loss = model(*clip).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def varied(model, frames):
    """Give a random model the varied maps of a trained one. A random model gives its queries about the same mask and
    class: its maps hold a class or two, which no rounding could flip, and matching by masks is ill-posed. Re-draw
    the mask MLP without biases (masks that differ), then the class head along the differences of the queries
    decoded from frames (T, 3, H, W), to logits of standard deviation 3."""
    import torch
    from qshift import FAMILIES as HEADS
    with torch.no_grad():
        for layer in HEADS[model.family].mask_mlp(model.model).modules():
            if isinstance(layer, torch.nn.Linear):
                torch.nn.init.normal_(layer.weight, std=2 / layer.in_features ** 0.5)
                torch.nn.init.zeros_(layer.bias)
        queries = model.decode(model.backbone(frames))[0].flatten(0, 1)  # (T*Q, C)
        mean, head = queries.mean(0), model.model.class_predictor
        weight = torch.randn_like(head.weight)
        head.weight.copy_(weight * 3 / ((queries - mean) @ weight.T).std())
        head.bias.copy_(-head.weight @ mean)


def differing(a, b):
    """The fraction of pixels of two sets of class maps, on any devices, that differ."""
    return (a.cpu() != b.cpu()).float().mean().item()


# -----------------------------------------------------------------------------
# the parts, in order; each one's docstring is its question in the JSON


def matcher_runs(part, clip, autocast):
    """For each family, a model of the paper's setting (model_config) with HF's loss matcher, then the same model
    with matcher.py's, each after a warm-up step on clip: yields ("family/hf" or "family/ours", model, optimizer)."""
    import torch
    import matcher
    from tiny import build_model
    for family in FAMILIES:
        torch.manual_seed(0)
        model = build_model(model_config(part, family)).to(part.device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=part.device == "cuda")
        for which in ("hf", "ours"):
            if which == "ours":
                matcher.install(model.model)
            training_step(model, optimizer, clip, autocast)  # a warm-up: lazy initialisations are not a step's
            yield f"{family}/{which}", model, optimizer


def host_waits(part):
    """How often a training step (fp32) makes the host wait for the GPU, with HF's loss matcher and matcher.py's, at
    4 and 8 frames of 64x64, counted by torch.cuda.set_sync_debug_mode("warn"); models as match_share's. matcher.py's
    count must not grow with the frames. On the CPU the steps run, and nothing is counted."""
    import torch
    fp32 = torch.autocast(part.device, enabled=False)
    clips = {T: training_clip(T, (64, 64), part.device) for T in (4, 8)}
    for key, model, optimizer in matcher_runs(part, clips[4], fp32):
        sites = {}
        for T, clip in clips.items():
            with warnings.catch_warnings(record=True) as caught:  # on CUDA, one warning per wait
                warnings.simplefilter("always")
                if not part.cpu:
                    torch.cuda.set_sync_debug_mode("warn")
                training_step(model, optimizer, clip, fp32)
                if not part.cpu:
                    torch.cuda.set_sync_debug_mode("default")
            sites[T] = [f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
        if not part.cpu:
            part.figure(key, {"waits_4_frames": len(sites[4]), "waits_8_frames": len(sites[8]),
                              "sites_8_frames": dict(Counter(sites[8]).most_common(8))},
                        check=len(sites[8]) <= len(sites[4]) if key.endswith("ours") else None)
    if part.cpu:
        part.skip("counting the waits", "set_sync_debug_mode counts on CUDA only (the steps ran)")


def match_share(part):
    """Matching's share of a training step's time (bf16 autocast, TF32), from a torch.profiler trace: the time in
    qshift.match_queries and in the loss's matcher (HF's, then matcher.py's), less their copies to the host, which on
    CUDA wait for the work queued before. The paper's setting; on CUDA Swin-T at 16 frames of 480x480, 2 steps; on
    the CPU tiny models (C = 256) at 4 frames of 64x64, 1 step."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    cuda = part.device == "cuda"
    T, size, steps = (4, (64, 64), 1) if part.cpu else (16, (480, 480), 2)
    set_tf32(True)
    clip, autocast = training_clip(T, size, part.device), torch.autocast(part.device, dtype=torch.bfloat16)
    for key, model, optimizer in matcher_runs(part, clip, autocast):
        with profile(activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda, with_stack=True) as prof:
            for _ in range(steps):
                with record_function("training step"):
                    training_step(model, optimizer, clip, autocast)
                    if cuda:  # the step's time is its device's too
                        torch.cuda.synchronize()
        prof.export_chrome_trace(str(part.work / "trace.json"))  # read back in a second; prof.events() takes 10
        part.figure(key, step_shares(part.work / "trace.json", steps))


def step_shares(trace, steps):
    """From a profiler trace (Chrome's format) of `steps` training steps, per step: the step's milliseconds, and for
    qshift.match_queries and the loss's matcher their calls, milliseconds, those of the outermost copies (aten::to)
    in them, and their own share of the step, the copies left out, in %."""
    events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("ph") == "X"]
    copies = sorted((e for e in events if e["name"] == "aten::to"), key=lambda e: e["ts"])
    step_us = sum(e["dur"] for e in events if e["name"] == "training step" and e["cat"] == "user_annotation")
    shares = {"step_ms": step_us / 1e3 / steps}
    for key, found in (("match_queries", lambda name: name.endswith(": match_queries")),
                       ("loss_matcher", lambda name: name.startswith("nn.Module: ") and "HungarianMatcher" in name)):
        calls, copied = [e for e in events if e["cat"] == "python_function" and found(e["name"])], 0
        for call in calls:
            end = call["ts"]  # where the last copy counted ends: a copy inside it is not counted again
            for e in copies:
                if e["tid"] == call["tid"] and e["ts"] >= end and e["ts"] + e["dur"] <= call["ts"] + call["dur"]:
                    copied, end = copied + e["dur"], e["ts"] + e["dur"]
        total = sum(e["dur"] for e in calls)
        shares[key] = {"calls": len(calls) / steps, "ms": total / 1e3 / steps, "copies_ms": copied / 1e3 / steps,
                       "own_pct": 100 * (total - copied) / step_us}
    return shares


def streaming(part):
    """Streamed maps (streaming.predict_video, chunks of 4, the frames already on the device) against one whole-clip
    forward's, in fp32, TF32, bf16 and fp16: the fraction of pixels that differ, at most STREAM_TOLERANCE. Models:
    the paper's setting of both families, and Mask2Former matching by masks, their heads re-drawn (varied). On CUDA
    Swin-T, 16 frames of 480x480; on the CPU tiny models, 6 of 64x64, no TF32."""
    import torch
    import qshift
    from streaming import predict_video
    from tiny import build_model
    T, size = (6, (64, 64)) if part.cpu else (16, (480, 480))
    frames = training_clip(T, size, part.device)[0][0]
    dtypes = {"fp32": None, "tf32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if part.cpu:
        del dtypes["tf32"]
        part.skip("TF32", "the CPU has none")
    for family, match_by in (("maskformer", "queries"), ("mask2former", "queries"), ("mask2former", "masks")):
        torch.manual_seed(0)
        model = build_model(model_config(part, family), shift_div=16, match_by=match_by).to(part.device).eval()
        set_tf32(False)
        varied(model, frames)
        fp32 = None
        for precision, dtype in dtypes.items():
            key = f"{family}/{match_by}/{precision}"
            set_tf32(precision != "fp32")  # predict.py runs with TF32 on, under autocast too
            try:
                with torch.no_grad(), torch.autocast(part.device, dtype=dtype, enabled=dtype is not None):
                    out = model(frames[None])
                whole = qshift.semantic_segmentation(out.class_queries_logits, out.masks_queries_logits, size)
                streamed = torch.stack(list(predict_video(model, iter(frames), chunk=4, amp=dtype)))
            except Exception as e:  # the crash is the finding; the other precisions still run
                part.figure(key, {"error": cli.first_line(e)}, check=False)
                continue
            fp32, fraction = whole if fp32 is None else fp32, differing(streamed, whole)
            part.figure(key, {"streamed_vs_whole_pixels": fraction, "tolerance": STREAM_TOLERANCE[precision],
                              "whole_vs_fp32_pixels": differing(whole, fp32), "classes": whole.unique().numel()},
                        check=fraction <= STREAM_TOLERANCE[precision])


def equivalence(part):
    """Our maps with the shift off on the device against HF's image model and its post_process_semantic_segmentation
    on the CPU (fp32, no TF32; tiny models of both families, heads re-drawn): the fraction of pixels that differ, at
    most TOLERANCE. Mask2Former's post-processing resizes the masks to 384x384 first, and so do ours here."""
    import torch
    import torch.nn.functional as F
    from transformers import Mask2FormerImageProcessor, MaskFormerImageProcessor
    import qshift
    from tiny import build_model, tiny_config
    set_tf32(False)
    T, size = (4, (64, 96)) if part.cpu else (8, (240, 320))
    frames = training_clip(T, size, "cpu")[0][0]
    processors = {"maskformer": MaskFormerImageProcessor(), "mask2former": Mask2FormerImageProcessor()}
    for family in FAMILIES:
        torch.manual_seed(0)
        model = build_model(tiny_config(150, hidden_size=256, family=family), shift_div=0).eval()
        varied(model, frames)
        with torch.no_grad():
            theirs = torch.stack(processors[family].post_process_semantic_segmentation(model.model(frames), [size] * T))
            out = model.to(part.device)(frames.to(part.device)[None])
        masks = out.masks_queries_logits
        if family == "mask2former":
            masks = F.interpolate(masks, size=(384, 384), mode="bilinear", align_corners=False)
        fraction = differing(qshift.semantic_segmentation(out.class_queries_logits, masks, size), theirs)
        part.figure(family, {"pixels_differing": fraction, "tolerance": TOLERANCE,
                             "classes_in_maps": theirs.unique().numel()}, check=fraction <= TOLERANCE)


def cuda_tests(part):
    """pytest -k cuda: the project's CUDA-only tests (training with --amp, torchrun with NCCL and resume, evaluation
    and bench on CUDA), which skip without a GPU."""
    code, text = part.run(sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests", "-k", "cuda")
    summary = re.findall(r"^=*\s*(\d+ \w+.*) in [\d.]+s", text, re.M)
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary[-1])} if summary else {}
    failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M)
    part.figure("pytest", {**outcome(code, text), **counts, "failures": failures}, check=code in (0, 5))
    if code == 5:
        part.skip("the CUDA tests", "no test matches -k cuda")
    elif counts.get("skipped"):
        reasons = sorted(set(re.findall(r"^SKIPPED \[\d+\] \S+: (.*)$", text, re.M)))
        part.skip(f"{counts['skipped']} of the tests", "; ".join(reasons))


def predict(part):
    """predict.py --amp (bf16 where native, else fp16) on a synthetic video (experiments/synthetic_video.py) with a
    tiny checkpoint, on the device: one map per frame and the video written; its frames per second. On CUDA 96
    frames of 240x320, on the CPU 8 of 64x96."""
    import torch
    import data
    from tiny import build_model, tiny_config
    sys.path.insert(0, str(ROOT / "experiments"))
    from synthetic_video import write_videos
    frames, size = (8, (64, 96)) if part.cpu else (96, (240, 320))
    (video,) = write_videos("test", 1, frames, part.work, size=size)
    world = data.build_dataset("synthetic", split="test", clip_len=None, train=False, num_videos=1, num_frames=2)
    torch.manual_seed(0)
    model = build_model(tiny_config(world.num_classes, hidden_size=256, id2label=world.id2label))
    model.model.config.palette = world.palette.tolist()
    model.save_pretrained(part.work / "checkpoint")
    out = part.work / "predictions"
    code, text = part.run(sys.executable, "predict.py", video, "--checkpoint", part.work / "checkpoint", "--out", out,
                          "--device", part.device, "--amp")
    speed = re.findall(r"([\d.]+) frames/s", text)
    maps, mp4 = len(list((out / video.stem).glob("*.png"))), (out / f"{video.stem}.mp4").is_file()
    part.figure("predict", {**outcome(code, text), "frames": frames, "maps": maps, "video": mp4,
                            "frames_per_s": float(speed[-1]) if speed else None},
                check=code == 0 and maps == frames and mp4)


def read_run(out):
    """A train.py run's config.json and log.jsonl lines, as far as they exist."""
    config = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else {}
    log = (out / "log.jsonl").read_text().splitlines() if (out / "log.jsonl").is_file() else []
    return config, [json.loads(line) for line in log]


def training(part):
    """train.py on the synthetic set: --amp bf16 --match-by masks (validation must run); --amp fp16 stopped at
    half the steps (--stop-at), then resumed; the bf16 run resumed with --amp fp16, which must go on with a fresh
    scaler and say so in one line, or refuse in one line with exit status 2. On CUDA 20 steps, on the CPU 4."""
    steps = 4 if part.cpu else 20
    common = ["--device", part.device, "--max-steps", steps, "--log-every", 1, "--val-videos", 1, "--warmup", 1,
              *(["--clip-len", 2, "--batch-size", 1] if part.cpu else [])]
    runs = [("bf16_masks", "bf16", [*common, "--amp", "bf16", "--match-by", "masks"], steps),
            ("fp16_stopped", "fp16", [*common, "--amp", "fp16", "--stop-at", steps // 2], steps // 2),
            ("fp16_resumed", "fp16", ["--resume"], steps),
            ("bf16_resumed_as_fp16", "bf16", ["--resume", "--amp", "fp16", "--max-steps", steps + 2], steps + 2)]
    for name, folder, flags, last in runs:
        out = part.work / folder
        if "--resume" in flags and not (out / "last").exists():
            part.skip(name, f"the run before it left no checkpoint in {folder}/last")
            continue
        start = time.time()
        code, text = part.run(sys.executable, "train.py", "--out", out, *flags)
        config, log = read_run(out)
        losses = [line for line in log if "loss" in line] or [{}]
        run = {**outcome(code, text), "seconds": round(time.time() - start, 1), "precision": config.get("precision"),
               "last_step": losses[-1].get("step"), "loss": losses[-1].get("loss"),
               "frames_per_s": losses[-1].get("frames_per_s"), "validated": any("val" in line for line in log)}
        ok = code == 0 and run["last_step"] == last
        if name == "bf16_resumed_as_fp16":  # on with a fresh scaler, said in one line; or refused in one line
            run["said"] = [line for line in text.splitlines() if "scaler" in line.lower() or line.startswith("error:")]
            refused = code == 2 and run["said"] == text.strip().splitlines() and "--amp" in text
            ok = ok and len(run["said"]) == 1 or refused
        else:
            ok = ok and run["precision"] == name[:4] and (run["validated"] or name != "bf16_masks")
        part.figure(name, run, check=ok)


def memory(part):
    """train.py --estimate-memory for the paper's VSPW setting (Swin-T MaskFormer, 16 frames of 480x480 a step,
    shift 1/16 with matching) on a VSPW-like folder (bench.make_vspw), then 3 real steps of it: the estimate's
    peak_gib over log.jsonl's max_memory_gib, within 1 ± MEMORY_TOLERANCE. On the CPU (a tiny model) the estimate
    alone."""
    import torch
    import bench
    from tiny import build_model
    root, model, out = part.work / "vspw", part.work / "model", part.work / "run"
    bench.make_vspw(root, videos=1, **(dict(frames=4, width=96, height=64) if part.cpu else {}))
    shutil.copy(root / "train.txt", root / "val.txt")  # train.py validates on VSPW's val split: the same video
    torch.manual_seed(0)
    build_model(model_config(part, "maskformer")).save_pretrained(model)
    flags = ["train.py", "--data", "vspw", "--root", root, "--model", model, "--out", out, "--overwrite", "--device",
             part.device, *(["--clip-len", 2, "--crop", 64, 64, "--min-frames", 4] if part.cpu else [])]
    code, text = part.run(sys.executable, *flags, "--estimate-memory")
    lines = [line for line in text.splitlines() if line.startswith("{") and "peak_gib" in line]
    estimate = json.loads(lines[-1]) if lines else {}
    keys = {"params_gib", "grads_gib", "optimizer_gib", "activations_gib", "peak_gib"}
    part.figure("estimate", {**outcome(code, text), **estimate}, check=code == 0 and keys <= set(estimate))
    if part.cpu or "peak_gib" not in estimate:
        part.skip("the real steps", "max_memory_gib is measured on CUDA only" if part.cpu else "there is no estimate")
        return
    gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    if estimate["peak_gib"] > 0.9 * gpu_gib:
        part.skip("the real steps", f"the estimate, {estimate['peak_gib']:.1f} GiB, is over 90% of {gpu_gib:.0f} GiB")
        return
    code, text = part.run(sys.executable, *flags, "--max-steps", 3, "--log-every", 1, "--val-videos", 1)
    measured = max((line.get("max_memory_gib", 0) for line in read_run(out)[1]), default=0)
    ratio = estimate["peak_gib"] / measured if measured else None
    part.figure("measured", {**outcome(code, text), "max_memory_gib": measured, "estimate_over_measured": ratio,
                             "tolerance": MEMORY_TOLERANCE},
                check=code == 0 and ratio is not None and abs(ratio - 1) <= MEMORY_TOLERANCE)


def run_bench(part):
    """bench.py --json-out DIR/bench.json (rewritten after each of its sections): on CUDA at its full sizes, its
    frames-per-second section too, with --budget per time ratio what the part's time leaves (1 to 10 s); on the CPU
    at tiny sizes. Cut off at the part's deadline, the sections written are kept."""
    report = part.out / "bench.json"
    report.unlink(missing_ok=True)
    if part.cpu:
        flags = ["--device", "cpu", "--threads", 1, "--frames", 2, "--size", 64, "--min-blocks", 2, "--budget", 0,
                 "--mem-frames", 2, 6, "--mem-size", 64, "--clips", 2]
    else:
        budget = min(10, max(1, (part.deadline - time.time() - BENCH_OTHER_S) / BENCH_RATIOS))
        flags = ["--device", "cuda", "--min-blocks", 3, "--budget", f"{budget:.1f}", "--mem-frames", 16, 32,
                 "--clips", 8]
    part.figure("flags", " ".join(map(str, flags)))
    code, text = part.run(sys.executable, "bench.py", *flags, "--json-out", report)
    figures = json.loads(report.read_text()).get("figures", {}) if report.is_file() else {}
    ratios = {key: value["value"] for key, value in figures.items() if isinstance(value, dict) and "value" in value}
    part.figure("bench", {**outcome(code, text), "report": report.name, "figures": sorted(figures), "ratios": ratios},
                check=code == 0 or (code is None and bool(figures)))
    if code is None and figures:
        part.skip("bench.py's sections after the last one written", "the part's time ran out")


PARTS = {  # name: (function, seconds on CUDA, seconds in CPU mode); the CUDA budgets add up to 8 minutes
    "host_waits": (host_waits, 20, 120), "match_share": (match_share, 45, 120), "streaming": (streaming, 35, 120),
    "equivalence": (equivalence, 25, 120), "cuda_tests": (cuda_tests, 75, 120), "predict": (predict, 25, 120),
    "training": (training, 90, 240), "memory": (memory, 45, 120), "bench": (run_bench, 120, 240)}

# -----------------------------------------------------------------------------
# the driver


def parse_args(argv=None):
    parser = cli.make_parser(__doc__)
    parser.add_argument("--cpu", action="store_true", help="every part at tiny sizes on the CPU")
    parser.add_argument("--out", help="output folder (default: $OUT if set, else runs/gpu_check)")
    parser.add_argument("--parts", help="comma-separated part numbers or names (default: all)")
    parser.add_argument("--fail", metavar="PART", help="raise in PART after its first figure (to test the record)")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # set in a part's own process
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = list(PARTS)
    args.chosen = [names[int(p) - 1] if p.isdigit() and 0 < int(p) <= len(names) else p
                   for p in args.parts.split(",")] if args.parts else names
    if bad := [p for p in args.chosen if p not in PARTS]:
        cli.fail(f"--parts {args.parts}: no part {bad[0]}; the parts: "
                 + ", ".join(f"{i + 1} {name}" for i, name in enumerate(names)))
    if args.fail and args.fail not in args.chosen:
        cli.fail(f"--fail {args.fail}: not one of the parts that run ({', '.join(args.chosen)})")
    args.out = Path(args.out or os.environ.get("OUT") or ROOT / "runs" / "gpu_check").resolve()
    return args


def machine(torch):
    """The card, the versions of torch, CUDA, cuDNN and transformers, the CPU cores."""
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cpu_cores": len(os.sched_getaffinity(0)),
            "transformers": importlib.metadata.version("transformers")}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version(),
                    bf16_native=torch.cuda.is_bf16_supported(including_emulation=False))
    return info


def status(code, entry, output):
    """A part's status, and the line that says why it is not ok."""
    if code is None:
        return "timeout", "killed at its deadline"
    if code:
        return "error", last_line(output)
    why = "; ".join(["failed: " + ", ".join(entry["failed"])] * bool(entry["failed"])
                    + ["skipped " + s for s in entry["skipped"]])
    return ("failed" if entry["failed"] else "partial" if entry["skipped"] else "ok"), why


def main(argv=None):
    args = parse_args(argv)
    if args.part:
        sys.stdout.reconfigure(line_buffering=True)  # its lines in order with those of the commands it runs
        PARTS[args.part][0](Part(args.part, args.out, args.cpu, args.deadline, args.fail == args.part))
        return 0
    import torch
    if not args.cpu and not torch.cuda.is_available():
        cli.fail("no CUDA device visible to torch; --cpu checks the script on the CPU")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.cpu:
        os.environ["OMP_NUM_THREADS"] = "1"  # a shared machine: threads on busy cores crawl
    shutil.rmtree(args.out / "work", ignore_errors=True)
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    path, started = args.out / "gpu_check.json", time.time()
    report = {"mode": "cpu" if args.cpu else "cuda", "command": " ".join(sys.argv), "machine": machine(torch),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "parts": {
                  name: {"part": list(PARTS).index(name) + 1, "question": " ".join(PARTS[name][0].__doc__.split()),
                         "budget_s": PARTS[name][2 if args.cpu else 1], "status": "not run"} for name in args.chosen}}
    cli.write_json(path, report)
    print(f"gpu_check ({report['mode']}, {report['machine'].get('device', 'cpu')}): writing {path}", flush=True)
    deadline = started
    for name in args.chosen:
        deadline += report["parts"][name]["budget_s"]
        log_path(args.out, name).unlink(missing_ok=True)
        start = time.time()
        code, output = run([sys.executable, __file__, "--part", name, "--out", args.out, "--deadline", deadline,
                            *["--cpu"] * args.cpu, *["--fail", args.fail] * bool(args.fail)],
                           deadline - start, log_path(args.out, name))
        report = json.loads(path.read_text())
        entry = {"figures": {}, "failed": [], "skipped": [], **report["parts"][name]}
        entry["seconds"], (entry["status"], entry["why"]) = round(time.time() - start, 1), status(code, entry, output)
        if entry["status"] != "ok":
            entry["log_tail"] = output[-2000:]
        report["parts"][name], report["seconds"] = entry, round(time.time() - started, 1)
        cli.write_json(path, report)
        print(f"{entry['part']} {name:12} {entry['status']:8} {entry['seconds']:6.1f} s  {entry['why']}", flush=True)
    report["not_ok"] = [name for name, entry in report["parts"].items() if entry["status"] != "ok"]
    cli.write_json(path, report)
    shutil.rmtree(args.out / "work", ignore_errors=True)
    print(f"{len(report['parts']) - len(report['not_ok'])} of {len(report['parts'])} parts ok"
          + (f"; not ok: {', '.join(report['not_ok'])}" if report["not_ok"] else "") + f"; figures in {path}")
    return 1 if report["not_ok"] else 0


if __name__ == "__main__":
    sys.exit(main())
