"""
The GPU check: one run that answers the open questions about qshift's CUDA path, in about 8 minutes on one GPU.

    python experiments/gpu_check.py [--out DIR]          # on CUDA (DIR: default $OUT if set, else runs/gpu_check)
    python experiments/gpu_check.py --cpu [--out DIR]    # every part at tiny sizes on the CPU, to check the script
    python experiments/gpu_check.py --parts 1,3,7        # some parts only
(experiments/gpu_check.sh runs this.) It writes DIR/gpu_check.json (the machine, and one entry per part: status,
seconds, figures), DIR/logs/<part>.log and DIR/bench.json, and prints a short summary. Each part runs in its own
process under its own time budget; one that fails or runs out of time is recorded as such, and the next one runs.
Time a part leaves unused goes to the parts after it. The parts (see docs/gpu-check.md):

    1 host_waits        host waits per training step, with HF's loss matcher and with matcher.py's, 4 and 8 frames
    2 match_share       a Swin-T training step's time in matching: qshift.match_queries and the loss's matcher
    3 stream_precision  streamed (predict_video) against whole-clip maps in fp32, TF32 and bf16; the float32 islands
    4 cuda_equivalence  test_qshift.py's key equivalences with the model on the device (fp32, TF32 off)
    5 cuda_tests        pytest -k cuda
    6 predict           predict.py on a synthetic video, on the device
    7 amp_training      train.py --amp bf16 and --amp fp16 (stopped at 10, resumed to 20)
    8 bench             bench.py --json, its time budgets scaled to fit
"""
import argparse
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter, namedtuple
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # qshift, matcher, ...; and the tests, whose helpers are reused
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
TAIL = 3000  # characters of a failed part's log kept in the JSON
SIZES = {"match": (16, 480), "stream": (16, 480), "predict": (96, (240, 320))}  # CUDA: frames and frame size


# -----------------------------------------------------------------------------
# running things: a command with a time limit that ends its whole process group


def run_command(cmd, timeout, log=None, env=None, stdout=None):
    """Run cmd (a list) from the repository root, its output appended to the file `log` (or captured), in its own
    process group, killed (the group: its children too) once `timeout` seconds have passed; stdout: a file for the
    standard output alone. Returns (returncode, or None when it timed out; seconds; the output when not logged)."""
    env = {**os.environ, **(env or {})}
    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        err = stack.enter_context(open(log, "a")) if log else subprocess.PIPE
        if log:
            err.write(f"\n$ {' '.join(map(str, cmd))}\n")
            err.flush()
        out = stack.enter_context(open(stdout, "w")) if stdout else err
        proc = subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT if out is err else err, text=True, start_new_session=True)
        try:
            text, _ = proc.communicate(timeout=max(timeout, 1))
            code = proc.returncode
        except subprocess.TimeoutExpired:
            kill_group(proc)
            text, code = (proc.communicate()[0] if not log else None), None
    return code, time.monotonic() - start, text


def kill_group(proc):
    """End proc and the processes it started (its session's group): TERM, then KILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path, n=TAIL):
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return ""


# -----------------------------------------------------------------------------
# a part's side: its context, handed to the part's function in the part's own process


class Context:
    """What a part sees: device ("cuda" or "cpu"), cpu (the CPU mode), out (DIR), work (scratch folder), log (this
    part's log file), figures (a dict to fill; saved to the result file by save(), so that a part killed for time
    keeps what it had), failed (set True when a check fails), and remaining() seconds before the part's deadline."""

    def __init__(self, cpu, out, work, log, result, deadline):
        self.cpu, self.device = cpu, "cpu" if cpu else "cuda"
        self.out, self.work, self.log, self.result = Path(out), Path(work), Path(log), Path(result)
        self.deadline = deadline
        self.figures, self.failed = {}, False

    def remaining(self):
        return self.deadline - time.time()

    def save(self):
        tmp = self.result.with_suffix(".tmp")
        tmp.write_text(json.dumps({"figures": self.figures, "failed": self.failed}, default=str))
        os.replace(tmp, self.result)

    def run(self, cmd, margin=5, env=None, stdout=None):
        """run_command, logged, with what is left of the part's time less `margin` seconds."""
        return run_command(cmd, self.remaining() - margin, self.log, env, stdout)[:2]


def sync(device):
    import torch
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def set_tf32(on):
    """TF32 matmuls and convolutions on CUDA (train.py, predict.py and bench.py turn both on)."""
    import torch
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on


def random_batch(T, size, num_labels, device, seed=0):
    """A training clip: pixel_values (1, T, 3, size, size) and HF's targets from data.mask_targets of class maps made
    of 4x4 blocks of random classes, built on the CPU and copied as train.py copies its batches (pinned, not
    blocking)."""
    import torch
    import torch.nn.functional as F
    from data import mask_targets
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, T, 3, size, size, generator=gen)
    coarse = torch.randint(num_labels, (T, 1, 4, 4), generator=gen).float()
    labels = F.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()
    masks, classes = zip(*(mask_targets(frame) for frame in labels))

    def to(t):
        return (t.pin_memory() if device == "cuda" else t).to(device, non_blocking=True)
    return to(x), [to(m) for m in masks], [to(c) for c in classes]


# -----------------------------------------------------------------------------
# 1. host waits per training step


def count_sync_warnings(fn):
    """Run fn under torch.cuda.set_sync_debug_mode("warn") and count its warnings: one per operation that made the
    host wait for the device. Returns (count, Counter of "file:line" of the Python line that called each)."""
    import torch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    sites = Counter(f"{short_path(w.filename)}:{w.lineno}" for w in syncs)
    return len(syncs), sites


def short_path(filename):
    path = Path(filename)
    if "transformers" in path.parts:
        return "/".join(path.parts[path.parts.index("transformers"):])
    if "torch" in path.parts:
        return "/".join(path.parts[path.parts.index("torch"):])
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


@contextlib.contextmanager
def meta_autocast():
    """tests/test_matcher.py's meta_autocast fixture, as a context: torch.autocast refuses the meta device."""
    import torch
    real = torch.autocast

    def autocast(device_type, *args, **kwargs):
        return contextlib.nullcontext() if device_type == "meta" else real(device_type, *args, **kwargs)
    torch.autocast = autocast
    try:
        yield
    finally:
        torch.autocast = real


def part_host_waits(ctx):
    """Host waits of one training step (forward with HF's loss, backward, gradient clipping, AdamW), tiny models of
    C = 256 (tiny.py), MaskFormer and Mask2Former (auxiliary losses on, its default), at 4 and 8 frames, with HF's
    loss matcher and with matcher.py's. On CUDA counted by set_sync_debug_mode("warn"), one warning per wait; on
    every device also by tests/test_matcher.py's counter (a TorchDispatchMode on the meta device)."""
    import torch
    import matcher
    import test_matcher
    from tiny import build_model, tiny_config
    dev, fig = ctx.device, ctx.figures
    fig["sync_debug"] = {} if not ctx.cpu else "GPU only: set_sync_debug_mode does nothing on the CPU (the steps ran)"
    fig["dispatch"] = {}
    size = 64
    for family in ("maskformer", "mask2former"):
        for which in ("hf", "ours"):
            torch.manual_seed(0)
            model = build_model(tiny_config(5, hidden_size=256, family=family)).to(dev).train()
            if which == "ours":
                matcher.install(model.model)
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            for T in (4, 8):
                x, masks, classes = random_batch(T, size, 5, dev)
                out = {}

                def forward():
                    out["loss"] = model(x, masks, classes).loss

                def backward():
                    out["loss"].backward()

                def update():
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)

                for phase in (forward, backward, update):  # warm-up step: lazy initialisations are not the step's
                    phase()
                sync(dev)
                if ctx.cpu:
                    for phase in (forward, backward, update):  # the same code runs, nothing to count
                        phase()
                    continue
                counts, sites = {}, Counter()
                for phase in (forward, backward, update):
                    counts[phase.__name__], phase_sites = count_sync_warnings(phase)
                    sites.update(phase_sites)
                sync(dev)
                fig["sync_debug"][f"{family}/{which}/T{T}"] = {
                    **counts, "total": sum(counts.values()), "sites": dict(sites.most_common(8))}
                ctx.save()
    with meta_autocast():  # device-independent: the model on meta, every device<->host copy seen as an op
        for family in ("maskformer", "mask2former"):
            for which in ("hf", "ours"):
                torch.manual_seed(0)
                model = build_model(tiny_config(5, hidden_size=256, family=family))
                if which == "ours":
                    matcher.install(model.model)
                for T in (4, 8):
                    waits = test_matcher.training_step_waits(model, T)
                    kinds = Counter(kind for kind, _, _ in waits)
                    fig["dispatch"][f"{family}/{which}/T{T}"] = {"total": len(waits), **kinds}
                ctx.save()
    source = fig["sync_debug"] if not ctx.cpu else fig["dispatch"]
    fig["summary"] = "waits per step at 4 -> 8 frames: " + "; ".join(
        f"{family} HF {source[f'{family}/hf/T4']['total']}->{source[f'{family}/hf/T8']['total']}, "
        f"ours {source[f'{family}/ours/T4']['total']}->{source[f'{family}/ours/T8']['total']}"
        for family in ("maskformer", "mask2former")) + (" (sync debug)" if not ctx.cpu else " (meta counter)")


# -----------------------------------------------------------------------------
# 2. matching's share of a training step


def part_match_share(ctx):
    """The share of one training step (forward with HF's loss, backward, AdamW) spent in qshift.match_queries and in
    the loss's matcher, from torch.profiler with record_function labels around both; each is entered after a
    synchronise, so that its range holds matching's own work and not the wait for the backbone. On CUDA the Swin-T
    architecture (bench.swin_tiny_config, random weights), 16 frames at 480x480, bf16 autocast and TF32 as bench.py;
    on the CPU a tiny model, 4 frames at 64x64, fp32."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function
    import matcher
    import qshift
    from tiny import build_model, tiny_config
    dev, fig = ctx.device, ctx.figures
    if ctx.cpu:
        T, size, amp, steps = 4, 64, False, 1
        configs = {f: tiny_config(150, hidden_size=256, family=f) for f in ("maskformer", "mask2former")}
    else:
        import bench
        set_tf32(True)
        T, size, amp, steps = *SIZES["match"], True, 2
        configs = {f: bench.swin_tiny_config(f) for f in ("maskformer", "mask2former")}
    fig["settings"] = {"frames": T, "size": size, "bf16": amp, "tf32": not ctx.cpu, "profiled_steps": steps,
                       "model": "tiny (tiny.py, C=256)" if ctx.cpu else "Swin-T (bench.swin_tiny_config)"}
    autocast = torch.autocast(dev, dtype=torch.bfloat16, enabled=amp)
    active, wall = {"on": False}, Counter()

    def labelled(name, fn):
        def wrapped(*args, **kwargs):
            if not active["on"]:
                return fn(*args, **kwargs)
            sync(dev)
            with record_function(name):
                start = time.perf_counter()
                result = fn(*args, **kwargs)
                sync(dev)
                wall[name] += time.perf_counter() - start
            return result
        return wrapped

    real_match = qshift.match_queries
    qshift.match_queries = labelled("qshift.match_queries", real_match)  # shift_queries looks it up at each call
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if not ctx.cpu else [])
    fig["runs"] = {}
    models = {}
    for which in ("ours", "hf"):  # matcher.py's matcher (what train.py installs), then HF's
        for family, config in configs.items():
            key = f"{family}/{which}"
            if ctx.remaining() < 15:  # a run takes about 8 s on an H100 (our estimate)
                fig["runs"][key] = "skipped: out of time"
                continue
            if family not in models:
                torch.manual_seed(0)
                model = build_model(config, shift_div=16, match=True).to(dev).train()
                models[family] = (model, model.model.criterion.matcher)
            model, hf_matcher = models[family]
            if which == "ours":
                matcher.install(model.model)
            else:
                model.model.criterion.matcher = hf_matcher
                if hasattr(model.model, "matcher"):
                    model.model.matcher = hf_matcher
            loss_matcher = model.model.criterion.matcher
            loss_matcher.forward = labelled("loss matcher", type(loss_matcher).forward.__get__(loss_matcher))
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
            x, masks, classes = random_batch(T, size, config.num_labels, dev)

            def step():
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    loss = model(x, masks, classes).loss
                loss.backward()
                optimizer.step()
                sync(dev)

            active["on"] = False
            step()  # warm-up
            plain = []
            for _ in range(steps):  # without the profiler and the added synchronisations
                start = time.perf_counter()
                step()
                plain.append(time.perf_counter() - start)
            active["on"], wall = True, Counter()
            with profile(activities=activities) as prof:
                for _ in range(steps):
                    with record_function("train step"):
                        start = time.perf_counter()
                        step()
                        wall["train step"] += time.perf_counter() - start
            active["on"] = False
            events = {e.key: e for e in prof.key_averages()}

            def ms(name):
                e = events.get(name)
                return None if e is None else e.cpu_time_total / 1e3 / steps

            def calls(name):
                e = events.get(name)
                return 0 if e is None else e.count / steps

            step_ms = ms("train step")
            run = {"step_ms_plain": 1e3 * statistics.median(plain), "step_ms_profiled": step_ms,
                   "match_queries_ms": ms("qshift.match_queries"), "match_queries_calls": calls("qshift.match_queries"),
                   "loss_matcher_ms": ms("loss matcher"), "loss_matcher_calls": calls("loss matcher"),
                   "wall_ms": {k: 1e3 * v / steps for k, v in wall.items()}}
            for name, k in (("qshift.match_queries", "match_queries_pct"), ("loss matcher", "loss_matcher_pct")):
                run[k] = None if ms(name) is None or not step_ms else 100 * ms(name) / step_ms
            self_key = "self_device_time_total" if hasattr(next(iter(events.values())), "self_device_time_total") \
                else "self_cuda_time_total"
            by_cpu = sorted(events.values(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
            run["top_self_cpu_ms"] = {e.key: e.self_cpu_time_total / 1e3 / steps for e in by_cpu}
            if not ctx.cpu:
                by_dev = sorted(events.values(), key=lambda e: getattr(e, self_key, 0), reverse=True)[:8]
                run["top_self_device_ms"] = {e.key: getattr(e, self_key, 0) / 1e3 / steps for e in by_dev}
            fig["runs"][key] = run
            ctx.save()
    qshift.match_queries = real_match
    parts = []
    for key, run in fig["runs"].items():
        if isinstance(run, dict):
            parts.append(f"{key}: step {run['step_ms_profiled']:.0f} ms, match_queries "
                         f"{run['match_queries_pct'] or 0:.1f}%, loss matcher {run['loss_matcher_pct'] or 0:.1f}%")
    fig["summary"] = "; ".join(parts)


# -----------------------------------------------------------------------------
# 3. streamed against whole-clip maps, per precision


def spread_predictions(model, frames):
    """Make a random model's maps varied, as a trained model's are: a random model's queries are alike, so its class
    head gives every query the same class and the maps hold one or two classes, where no precision could change a
    pixel. As tests/test_qshift.py's distinct_masks, re-draw the mask MLP larger; then re-draw the class head along
    the queries' differences: W (q - mean q) on frames' decoded queries, scaled to logits of std 3."""
    import torch
    import test_qshift
    test_qshift.distinct_masks(model)
    head = model.model.class_predictor
    with torch.no_grad():
        q = model.decode(model.backbone(frames))[0].flatten(0, 1).float()  # (N*Q, C)
        mean = q.mean(0)
        weight = torch.randn(head.out_features, head.in_features, device=q.device)
        weight *= 3 / ((q - mean) @ weight.T).std()
        head.weight.copy_(weight)
        head.bias.copy_(-weight @ mean)


def near_ties(class_logits, mask_logits, size, rel=1e-3):
    """The fraction of pixels whose best two class scores (semantic_segmentation's, float32) are within rel of each
    other: where rounding can flip the class."""
    import torch
    import torch.nn.functional as F
    ties = []
    with torch.no_grad(), torch.autocast(class_logits.device.type, enabled=False):
        for c, m in zip(class_logits.float(), mask_logits.float()):  # one frame at a time: (L, H, W) scores
            scores = torch.einsum("ql,qhw->lhw", c.softmax(-1)[:, :-1], m.sigmoid())
            scores = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
            top = scores.topk(2, dim=0).values
            ties.append(((top[0] - top[1]) <= rel * top[0]).float().mean())
    return torch.stack(ties).mean().item()


def part_stream_precision(ctx):
    """The fraction of pixels whose class differs between qshift.predict_video(model, frames, chunk=4) and
    semantic_segmentation of one whole-clip forward, in fp32 (TF32 off), TF32 and bf16 autocast (TF32 on, as
    predict.py --amp), for the paper's setting (shift 1/16 + matching) of both families, on a synthetic video (data.py's
    moving blobs); also each precision's whole-clip maps against fp32's, and the float32 islands under TF32:
    match_queries' permutations and semantic_segmentation's maps with TF32 on against off (the same inputs), and
    semantic_segmentation under bf16 autocast against without. Random weights, the heads re-drawn so that the maps
    hold many classes (spread_predictions); near_tie_pixels: where the best two classes' scores are within 0.1%. On
    CUDA the Swin-T architecture, 16 frames at 480x480; on the CPU a tiny model, 6 frames at 64x64."""
    import torch
    import qshift
    from tiny import build_model, tiny_config
    dev, fig = ctx.device, ctx.figures
    if ctx.cpu:
        T, size = 6, 64
        configs = {f: tiny_config(150, hidden_size=256, family=f) for f in ("maskformer", "mask2former")}
    else:
        import bench
        T, size = SIZES["stream"]
        configs = {f: bench.swin_tiny_config(f) for f in ("maskformer", "mask2former")}
    fig["settings"] = {"frames": T, "size": size, "chunk": 4, "model": "tiny (C=256)" if ctx.cpu else "Swin-T",
                       "note": "TF32 does nothing on the CPU" if ctx.cpu else ""}
    import data
    world = data.build_dataset("synthetic", split="test", clip_len=None, train=False, num_videos=1, num_frames=T,
                               size=(size, size), object_size=(16, 32) if size < 160 else (80, 200))
    frames = qshift.frames_to_pixel_values(torch.from_numpy(world.images[0])).to(dev)  # moving blobs, (T, 3, H, W)
    fig["runs"] = {}
    precisions = {"fp32": (False, None), "tf32": (True, None), "bf16": (True, torch.bfloat16)}
    for family, config in configs.items():
        if ctx.remaining() < 10:
            fig["runs"][family] = "skipped: out of time"
            continue
        torch.manual_seed(0)
        model = build_model(config, shift_div=16, match=True).to(dev).eval()
        set_tf32(False)
        spread_predictions(model, frames)
        run, fp32_maps = {}, None
        for name, (tf32, amp) in precisions.items():
            set_tf32(tf32)
            with torch.no_grad(), torch.autocast(dev, dtype=amp or torch.bfloat16, enabled=amp is not None):
                out = model(frames[None])
            ref_class, ref_mask = out.class_queries_logits.float(), out.masks_queries_logits.float()
            ref = qshift.semantic_segmentation(ref_class, ref_mask, (size, size))
            streamed = torch.stack(list(qshift.predict_video(model, iter(frames), chunk=4, amp=amp)))
            logits = list(qshift.stream_logits(model, iter(frames), 4, amp))
            class_diff = (torch.cat([c for c, _ in logits]) - ref_class).abs().max().item()
            mask_diff = (torch.cat([m for _, m in logits]) - ref_mask).abs().max().item()
            fp32_maps = ref if fp32_maps is None else fp32_maps
            run[name] = {"streamed_vs_clip_pixels": (streamed != ref).float().mean().item(),
                         "near_tie_pixels": near_ties(ref_class, ref_mask, (size, size)),
                         "frames_differing": int((streamed != ref).flatten(1).any(1).sum()),
                         "clip_vs_fp32_clip_pixels": (ref != fp32_maps).float().mean().item(),
                         "class_logits_max_abs_diff": class_diff, "mask_logits_max_abs_diff": mask_diff,
                         "classes_in_maps": int(ref.unique().numel())}
            ctx.save()
        # the float32 islands: the same decoded queries and logits, TF32 on against off
        set_tf32(False)
        with torch.no_grad():
            q = model.decode(model.backbone(frames))[0].unflatten(0, (1, T))  # (1, T, Q, C)
            perm_off = qshift.match_queries(q)
            maps_off = qshift.semantic_segmentation(ref_class, ref_mask, (size, size))
            set_tf32(True)
            perm_on = qshift.match_queries(q)
            maps_on = qshift.semantic_segmentation(ref_class, ref_mask, (size, size))
            with torch.autocast(dev, dtype=torch.bfloat16):
                maps_bf16 = qshift.semantic_segmentation(ref_class, ref_mask, (size, size))
        run["islands"] = {"match_perm_entries_tf32_vs_fp32": (perm_on != perm_off).float().mean().item(),
                          "semantic_pixels_tf32_vs_fp32": (maps_on != maps_off).float().mean().item(),
                          "semantic_pixels_bf16_autocast_vs_fp32": (maps_bf16 != maps_on).float().mean().item()}
        fig["runs"][family] = run
        ctx.save()
        del model
    fig["summary"] = "; ".join(
        f"{family}: streamed vs clip " + ", ".join(f"{p} {run[p]['streamed_vs_clip_pixels']:.3%}" for p in precisions)
        for family, run in fig["runs"].items() if isinstance(run, dict))


# -----------------------------------------------------------------------------
# 4. test_qshift.py's key equivalences on the device


def part_cuda_equivalence(ctx):
    """tests/test_qshift.py's key equivalences with the model and inputs on the device, fp32 with TF32 off, reusing
    its helpers (tiny_model, targets, video, whole_clip, distinct_masks, STREAMED) and, for matching, its test
    functions themselves under torch.set_default_device: (a) shift 0 is HF's model frame by frame (logits and loss to
    1e-5); (b) streaming equals the whole clip (logits to 1e-5, maps equal), every STREAMED case, causal and not, as
    time allows; (c) matching: batched equals clip by clip, and the other matching tests; the device's permutations
    equal the CPU's; (d) semantic maps equal HF's post-processing (HF's on the CPU copy), also under bf16 autocast."""
    import torch
    import test_qshift as tq
    from transformers import Mask2FormerImageProcessor, MaskFormerImageProcessor
    from transformers.models.maskformer.modeling_maskformer import MaskFormerForInstanceSegmentationOutput as Output
    import qshift
    dev, fig = ctx.device, ctx.figures
    set_tf32(False)
    checks = fig["checks"] = {}

    def record(name, passed, **figures):
        checks[name] = {"passed": bool(passed), **figures}
        if not passed:
            ctx.failed = True
        ctx.save()

    def max_diff(a, b):
        return (a.float() - b.float()).abs().max().item()

    # (a) without the shift, HF's model frame by frame
    for family in tq.FAMILIES:
        for match in (True, False):
            model = tq.tiny_model(shift_div=0, match=match, family=family).to(dev)
            model.model.config.use_auxiliary_loss = True
            torch.manual_seed(0)
            x = torch.randn(2, 3, 3, 64, 96).to(dev)
            masks, classes = tq.targets(6)
            masks, classes = [m.to(dev) for m in masks], [c.to(dev) for c in classes]
            with torch.no_grad():
                torch.manual_seed(0)
                ours = model(x, masks, classes)
                torch.manual_seed(0)
                theirs = model.model(x.flatten(0, 1), mask_labels=masks, class_labels=classes,
                                     output_hidden_states=True)
            diffs = {"class": max_diff(ours.class_queries_logits, theirs.class_queries_logits),
                     "masks": max_diff(ours.masks_queries_logits, theirs.masks_queries_logits),
                     "loss": max_diff(ours.loss, theirs.loss)}
            record(f"shift0_is_hf/{family}/match={match}", max(diffs.values()) <= 1e-5, max_abs_diff=diffs)
    # (c) matching: the tests themselves, their tensors made on the device
    for test in (tq.test_matching_recovers_a_known_permutation_of_noisy_copies,
                 tq.test_matching_is_optimal_against_brute_force, tq.test_matching_of_one_frame_is_the_identity,
                 tq.test_matching_batched_equals_clip_by_clip):
        torch.set_default_device(dev)
        try:
            test()
            record(f"matching/{test.__name__}", True)
        except Exception as e:  # an assertion, or a test that cannot run on the device
            record(f"matching/{test.__name__}", False, error=f"{type(e).__name__}: {e}"[:500])
        finally:
            torch.set_default_device(None)
    torch.manual_seed(2)
    q = torch.randn(3, 5, 20, 16)
    on_device = qshift.match_queries(q.to(dev))
    record("matching/device_equals_cpu", torch.equal(on_device.cpu(), qshift.match_queries(q)),
           device=str(on_device.device))
    # (d) semantic maps against HF's post-processing
    torch.manual_seed(3)
    class_logits, mask_logits = torch.randn(3, 10, 6), 3 * torch.randn(3, 10, 16, 24)
    output = Output(class_queries_logits=class_logits, masks_queries_logits=mask_logits)
    theirs = torch.stack(MaskFormerImageProcessor().post_process_semantic_segmentation(output, [(64, 96)] * 3))
    ours = qshift.semantic_segmentation(class_logits.to(dev), mask_logits.to(dev), (64, 96))
    record("semantic/maskformer_post_processing", torch.equal(ours.cpu(), theirs),
           pixels_differing=(ours.cpu() != theirs).float().mean().item())
    torch.manual_seed(4)
    class_logits, mask_logits = torch.randn(2, 10, 6), 3 * torch.randn(2, 10, 16, 24)
    output = Output(class_queries_logits=class_logits, masks_queries_logits=mask_logits)
    theirs = torch.stack(Mask2FormerImageProcessor().post_process_semantic_segmentation(output, [(64, 96)] * 2))
    at_384 = torch.nn.functional.interpolate(mask_logits.to(dev), size=(384, 384), mode="bilinear",
                                             align_corners=False)
    ours = qshift.semantic_segmentation(class_logits.to(dev), at_384, (64, 96))
    record("semantic/mask2former_post_processing", torch.equal(ours.cpu(), theirs),
           pixels_differing=(ours.cpu() != theirs).float().mean().item())
    with torch.autocast(dev, dtype=torch.bfloat16):
        under_bf16 = qshift.semantic_segmentation(class_logits.to(dev), at_384, (64, 96))
    record("semantic/float32_under_bf16_autocast", torch.equal(under_bf16, ours))
    # (b) streaming against the whole clip: last, the longest, as many cases as time allows
    cases = [(case, causal) for case in tq.STREAMED for causal in (False, True)]
    done = 0
    for (family, shift_at, match_by, reach), causal in cases:
        if ctx.remaining() < 5:
            break
        model = tq.tiny_model(shift_div=4, causal=causal, family=family, shift_at=shift_at, match_by=match_by,
                              reach=reach)
        if match_by == "masks":
            tq.distinct_masks(model)
        model.to(dev)
        frames = tq.video(7 if reach == 1 else 11).to(dev)
        ref_class, ref_mask = tq.whole_clip(model, frames)
        diffs = {}
        for chunk in (1, 3):
            out = list(qshift.stream_logits(model, iter(frames), chunk))
            diffs[f"chunk{chunk}"] = max(max_diff(torch.cat([c for c, _ in out]), ref_class),
                                         max_diff(torch.cat([m for _, m in out]), ref_mask))
        ref_maps = qshift.semantic_segmentation(ref_class, ref_mask, (64, 96))
        maps = torch.stack(list(qshift.predict_video(model, iter(frames), chunk=3)))
        name = f"streaming/{family}/{'+'.join(shift_at)}/{match_by}/reach{reach}/{'causal' if causal else 'both'}"
        record(name, max(diffs.values()) <= 1e-5 and torch.equal(maps, ref_maps), max_abs_diff=diffs,
               map_pixels_differing=(maps != ref_maps).float().mean().item())
        done += 1
    fig["streaming_cases"] = {"run": done, "of": len(cases)}
    failed = [name for name, check in checks.items() if not check["passed"]]
    fig["summary"] = (f"{len(checks) - len(failed)} of {len(checks)} checks passed "
                      f"(streaming: {done} of {len(cases)} cases run)" + (f"; failed: {', '.join(failed)}" if failed
                                                                          else ""))
    ctx.save()


def part_cuda_tests(ctx):
    """The repository's CUDA tests, python -m pytest -v -rs tests -k cuda (skipped on the CPU: they need a GPU), with
    the 8 slowest tests' durations in the log."""
    code, seconds = ctx.run([sys.executable, "-m", "pytest", "-v", "-rs", "--durations=8", "-p", "no:cacheprovider",
                             "tests", "-k", "cuda"], env={"OMP_NUM_THREADS": "1"} if ctx.cpu else None)
    text = tail(ctx.log, 200000)
    results = re.findall(r"^=*\s*((?:\d+ \w+(?:, )?)+) in [\d.]+s", text, re.M)
    if results:
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (\w+)", results[-1])}
    else:  # killed before pytest's summary: count the tests it reported
        seen = re.findall(r"^tests/.*?::.*? (PASSED|FAILED|SKIPPED|ERROR)\b", text, re.M)
        counts = dict(Counter(word.lower() for word in seen))
    ctx.figures.update(returncode=code, timed_out=code is None, counts=counts, seconds=seconds,
                       failures=re.findall(r"^(?:FAILED|ERROR) (\S+)", text, re.M)[:20],
                       durations=re.findall(r"^([\d.]+s \w+ +tests/\S+)", text, re.M)[:8],
                       summary=(results[-1] if results else f"no pytest summary; seen: {counts}")
                       + (" (timed out)" if code is None else ""))
    ctx.failed = code != 0
    ctx.save()


# -----------------------------------------------------------------------------
# 5. predict.py on a video


def part_predict(ctx):
    """predict.py on a synthetic video (experiments/synthetic_video.py) with a tiny checkpoint (random weights, the
    synthetic classes and palette) on the device: success, the frames per second it prints, the outputs written; on
    CUDA also with --amp (bf16) when time allows."""
    import importlib.util
    import torch
    from tiny import build_model, tiny_config
    spec = importlib.util.spec_from_file_location("synthetic_video", ROOT / "experiments" / "synthetic_video.py")
    synthetic_video = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synthetic_video)
    frames, size = (8, (64, 96)) if ctx.cpu else SIZES["predict"]
    fig = ctx.figures
    fig["video"] = {"frames": frames, "size": list(size)}
    (video,) = synthetic_video.write_videos("test", 1, frames, ctx.work / "videos", size=size)
    import data
    world = data.build_dataset("synthetic", split="test", clip_len=None, train=False, num_videos=1, num_frames=2)
    torch.manual_seed(0)
    model = build_model(tiny_config(world.num_classes, hidden_size=256, id2label=world.id2label))
    model.model.config.palette = world.palette.tolist()
    checkpoint = ctx.work / "predict-checkpoint"
    model.save_pretrained(checkpoint)
    fig["runs"] = {}
    for name, flags in (("fp32", []), ("bf16", ["--amp"])):
        if name == "bf16" and (ctx.cpu or ctx.remaining() < 15):
            continue
        out = ctx.work / f"predictions-{name}"
        code, seconds = ctx.run([sys.executable, "predict.py", video, "--checkpoint", checkpoint, "--device",
                                 ctx.device, "--out", out, "--overwrite", *flags])
        found = re.findall(r"(\d+) frames in ([\d.]+) s, ([\d.]+) frames/s", tail(ctx.log, 5000))
        pngs = len(list((out / video.stem).glob("*.png"))) if (out / video.stem).is_dir() else 0
        run = {"returncode": code, "seconds": seconds, "frames_per_s": float(found[-1][2]) if found else None,
               "pngs": pngs, "mp4": (out / f"{video.stem}.mp4").is_file()}
        run["ok"] = code == 0 and pngs == frames and run["mp4"]
        ctx.failed |= not run["ok"]
        fig["runs"][name] = run
        ctx.save()
    fig["summary"] = "; ".join(f"{name}: {'ok' if r['ok'] else 'FAILED'}, {r['frames_per_s']} frames/s"
                               for name, r in fig["runs"].items())


# -----------------------------------------------------------------------------
# 6. mixed-precision training


def read_log(out):
    path = Path(out) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def part_amp_training(ctx):
    """train.py on the synthetic set with --amp bf16 (20 steps) and --amp fp16 (stopped at step 10 with --stop-at,
    then --resume to 20): final loss, steps per second, the precision its config.json records, that the resumed run
    reached step 20; and what --amp alone (auto) picks here."""
    import torch
    import cli
    fig = ctx.figures
    steps, stop = (4, 2) if ctx.cpu else (20, 10)
    common = ["--device", ctx.device, "--max-steps", steps, "--log-every", 1 if ctx.cpu else 5, "--val-videos",
              1 if ctx.cpu else 2, "--warmup", 2 if ctx.cpu else 5]
    if ctx.cpu:
        common += ["--clip-len", 2, "--batch-size", 1]
    fig["auto_picks"] = str(cli.amp_dtype("auto", torch.device(ctx.device))).replace("torch.", "")
    fig["runs"] = {}
    env = {"OMP_NUM_THREADS": "1"} if ctx.cpu else None
    plan = [("bf16", ["--amp", "bf16"]), ("fp16_stopped", ["--amp", "fp16", "--stop-at", stop]),
            ("fp16_resumed", ["--resume"])]
    for name, flags in plan:
        out = ctx.work / ("train-" + name.split("_")[0])
        cmd = [sys.executable, "train.py", *(common if name != "fp16_resumed" else []), "--out", out, *flags]
        code, seconds = ctx.run(cmd, env=env)
        log = read_log(out)
        losses = [line for line in log if "loss" in line]
        config = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else {}
        frames_per_step = config.get("clip_len", 0) * config.get("batch_size", 0)
        run = {"returncode": code, "seconds": seconds, "precision": config.get("precision"),
               "last_step": losses[-1]["step"] if losses else None,
               "final_loss": losses[-1]["loss"] if losses else None,
               "first_loss": losses[0]["loss"] if losses else None,
               "steps_per_s": (losses[-1]["frames_per_s"] / frames_per_step) if losses and frames_per_step else None,
               "validated": any("val" in line for line in log), "logged_steps": [line["step"] for line in losses]}
        expected_step = stop if name == "fp16_stopped" else steps
        run["ok"] = code == 0 and run["last_step"] == expected_step and run["precision"] == name[:4]
        ctx.failed |= not run["ok"]
        fig["runs"][name] = run
        ctx.save()
        if code != 0 and name == "fp16_stopped":
            break  # nothing to resume
    fig["summary"] = "; ".join(
        f"{name}: {'ok' if r['ok'] else 'FAILED'} ({r['precision']}, step {r['last_step']}, loss "
        f"{r['final_loss'] if r['final_loss'] is None else round(r['final_loss'], 3)}, "
        f"{r['steps_per_s'] if r['steps_per_s'] is None else round(r['steps_per_s'], 2)} steps/s)"
        for name, r in fig["runs"].items()) + f"; --amp alone picks {fig['auto_picks']}"


# -----------------------------------------------------------------------------
# 7. the bench


BENCH_OVERHEAD_S = 90  # CUDA: bench.py's time besides its time ratios (memory cases, data, metrics), our estimate


def part_bench(ctx):
    """bench.py --json: on CUDA at its full sizes (16 frames at 480x480, bf16, TF32) with --min-blocks 3, the
    memory videos 16 and 32 frames and 8 data clips; --budget (seconds per time ratio) is what the part's time
    leaves, less BENCH_OVERHEAD_S, over the number of ratios (2 per model timed against another). On the CPU at tiny
    sizes with --budget 0 (--min-blocks exactly)."""
    fig = ctx.figures
    try:
        import bench
        ratios = 2 * (len(bench.SHIFTED) + 1)  # MaskFormer's variants, and Mask2Former's paper setting
    except Exception:  # bench.py being edited: the count of its last known version
        ratios = 18
    if ctx.cpu:
        flags = ["--device", "cpu", "--threads", "1", "--frames", "2", "--size", "64", "--min-blocks", "2",
                 "--budget", "0", "--mem-frames", "2", "6", "--mem-size", "64", "--clips", "2"]
    else:
        budget = max(1.0, min(10.0, (ctx.remaining() - 10 - BENCH_OVERHEAD_S) / ratios))
        budget = round(budget * 2) / 2
        flags = ["--device", "cuda", "--min-blocks", "3", "--budget", f"{budget:g}", "--mem-frames", "16", "32",
                 "--clips", "8"]
    fig["flags"], fig["time_ratios"] = flags, ratios
    report = ctx.out / "bench.json"
    code, seconds = ctx.run([sys.executable, "bench.py", *flags, "--json"], stdout=report)
    fig.update(returncode=code, seconds=seconds, timed_out=code is None)
    try:
        rep = json.loads(report.read_text())
    except (OSError, ValueError):
        rep = None
    if rep is None:
        ctx.failed = True
        fig["summary"] = "bench.py gave no JSON" + (" (timed out)" if code is None else f" (exit {code})")
        ctx.save()
        return
    fig["report"] = rep
    keys = [k for k in rep["figures"] if k.endswith("_ratio") and "stream" not in k and "clip" not in k]
    fig["time_ratio_figures"] = {k: {f: rep["figures"][k].get(f) for f in ("value", "interval", "blocks", "precise")}
                                 for k in keys}
    fig["summary"] = ", ".join(f"{k} {rep['figures'][k]['value']:.3f}" for k in keys) + \
        f" ({flags[flags.index('--budget') + 1]} s per ratio)"
    ctx.failed = code != 0
    ctx.save()


# -----------------------------------------------------------------------------
# the parts and their budgets (seconds): on CUDA they add up to 480 (8 minutes); CPU mode's are generous


Part = namedtuple("Part", "number name function cuda_s cpu_s")
PARTS = [Part(1, "host_waits", part_host_waits, 30, 240),
         Part(2, "match_share", part_match_share, 45, 180),
         Part(3, "stream_precision", part_stream_precision, 30, 180),
         Part(4, "cuda_equivalence", part_cuda_equivalence, 35, 240),
         Part(5, "cuda_tests", part_cuda_tests, 75, 240),
         Part(6, "predict", part_predict, 30, 120),
         Part(7, "amp_training", part_amp_training, 90, 300),
         Part(8, "bench", part_bench, 145, 300)]
TEST_PARTS = {  # for tests/test_gpu_check.py: a part that fails, one that outlives its budget, one that passes
    "_fail": (lambda ctx: (ctx.figures.update(before="the error"), ctx.save(), 1 / 0), 3),
    "_sleep": (lambda ctx: (ctx.figures.update(started=True), ctx.save(), time.sleep(60)), 4),
    "_ok": (lambda ctx: ctx.figures.update(summary="fine"), 6),
}


def question(part):
    return " ".join(part.function.__doc__.split())


# -----------------------------------------------------------------------------
# the driver


def machine(cpu):
    """The card, its memory and capability, the driver, torch, CUDA, cuDNN and transformers versions, the CPU."""
    import torch
    import transformers
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "python": sys.version.split()[0], "cuda_available": torch.cuda.is_available(), "cpu_cores": os.cpu_count()}
    with contextlib.suppress(Exception):
        info["cudnn"] = torch.backends.cudnn.version()
    with contextlib.suppress(OSError, StopIteration):
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    if cpu or not torch.cuda.is_available():
        info["device"] = "cpu"
        return info
    props = torch.cuda.get_device_properties(0)
    info.update(device=torch.cuda.get_device_name(0), device_count=torch.cuda.device_count(),
                memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}",
                bf16_native=torch.cuda.is_bf16_supported(including_emulation=False))
    code, _, text = run_command(["nvidia-smi", "--query-gpu=driver_version,name,clocks.max.sm,power.limit",
                                 "--format=csv,noheader"], 15) if shutil.which("nvidia-smi") else (None, 0, "")
    if code == 0:
        info["nvidia_smi"] = text.strip()
    return info


def write_report(path, report):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run_part(part, cpu, out, work, deadline, log):
    """Run one part in a fresh process, killed at `deadline` (time.time()); returns its JSON entry."""
    result = work / f"{part.name}.result.json"
    result.unlink(missing_ok=True)
    start = time.time()
    cmd = [sys.executable, __file__, "--out", out, "--_part", part.name, "--_result", result, "--_work", work,
           "--_deadline", f"{deadline:.1f}", "--_log", log] + (["--cpu"] if cpu else [])
    code, seconds, _ = run_command(cmd, deadline - start, log,
                                   {"OMP_NUM_THREADS": "1"} if cpu else None)
    entry = {"part": part.number, "question": question(part) if part.function else part.name,
             "seconds": round(seconds, 1), "timeout_s": round(deadline - start, 1)}
    saved = {}
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(result.read_text())
    entry["figures"] = saved.get("figures", {})
    if code is None:
        entry["status"] = "timeout"
    elif code != 0:
        entry["status"] = "error"
    else:
        entry["status"] = "failed" if saved.get("failed") else "ok"
    if entry["status"] != "ok":
        entry["log_tail"] = tail(log)
    return entry


def summary_lines(report):
    lines = [f"gpu_check ({report['mode']}): {report['machine'].get('device')}, torch {report['machine']['torch']}, "
             f"CUDA {report['machine']['cuda']}; {report['seconds']:.0f} s"]
    for name, entry in report["parts"].items():
        note = entry["figures"].get("summary", "") if isinstance(entry.get("figures"), dict) else ""
        if entry["status"] in ("error", "timeout") and not note:
            last = [line for line in entry.get("log_tail", "").splitlines() if line.strip()]
            note = last[-1][:200] if last else ""
        lines.append(f"{entry['part']} {name:17} {entry['status']:8} {entry['seconds']:6.1f} s  {note}")
    return lines


PARTS_BY_NAME = {p.name: p for p in PARTS}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="every part on the CPU at tiny sizes")
    parser.add_argument("--out", help="output folder (default: $OUT if set, else runs/gpu_check)")
    parser.add_argument("--parts", help="comma-separated part numbers or names (default: all)")
    parser.add_argument("--total", type=float, help="seconds for the whole run, at most (default: the budgets' sum)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (checkpoints, videos)")
    for hidden in ("--_part", "--_result", "--_work", "--_deadline", "--_log"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or ROOT / "runs" / "gpu_check").resolve()
    if args._part:  # inside a part's own process
        if args.cpu and args._part in PARTS_BY_NAME:
            import torch
            torch.set_num_threads(1)  # a busy machine: two threads on two cores crawl
        ctx = Context(args.cpu, out, args._work, args._log, args._result, float(args._deadline))
        function = PARTS_BY_NAME[args._part].function if args._part in PARTS_BY_NAME else TEST_PARTS[args._part][0]
        try:
            function(ctx)
        finally:
            ctx.save()
        return 0

    started = time.time()
    parts = PARTS
    if args.parts:
        wanted = args.parts.split(",")
        parts = [p for p in PARTS if str(p.number) in wanted or p.name in wanted]
        parts += [Part(0, name, None, TEST_PARTS[name][1], TEST_PARTS[name][1]) for name in wanted
                  if name in TEST_PARTS]
        if not parts:
            parser.error(f"--parts {args.parts}: choose among {', '.join(f'{p.number} {p.name}' for p in PARTS)}")
    budgets = [p.cpu_s if args.cpu else p.cuda_s for p in parts]
    total = args.total or sum(budgets)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    report = {"mode": "cpu" if args.cpu else "cuda", "command": " ".join(sys.argv),
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "seconds": 0.0, "total_budget_s": total,
              "budgets_s": {p.name: b for p, b in zip(parts, budgets)}, "machine": {}, "parts": {}}
    path = out / "gpu_check.json"
    try:
        report["machine"] = machine(args.cpu)
    except Exception as e:  # torch does not import: nothing else can run
        report["machine"] = {"error": f"{type(e).__name__}: {e}", "torch": None, "cuda": None}
    if not args.cpu and not report["machine"].get("cuda_available"):
        report["error"] = "no CUDA device visible to torch: run with --cpu, or on a GPU machine"
        write_report(path, report)
        print(f"gpu_check: {report['error']}", file=sys.stderr)
        return 2
    write_report(path, report)
    print(f"gpu_check ({report['mode']}): {report['machine'].get('device')}; parts: "
          f"{', '.join(p.name for p in parts)}; {total:.0f} s at most; writing {path}", flush=True)
    schedule = time.time()  # each part's deadline: the budgets so far from here, within `total` from the start
    for part, budget in zip(parts, budgets):
        schedule += budget
        deadline = min(schedule, started + total)  # time a part leaves goes to the next ones
        log = out / "logs" / f"{part.number}-{part.name}.log"
        log.write_text("")
        if deadline - time.time() < 1:
            entry = {"part": part.number, "question": question(part) if part.function else part.name,
                     "status": "skipped", "seconds": 0.0, "timeout_s": 0.0, "figures": {},
                     "log_tail": "no time left"}
        else:
            print(f"== {part.number} {part.name} (until +{deadline - started:.0f} s)", flush=True)
            entry = run_part(part, args.cpu, out, work, deadline, log)
        report["parts"][part.name] = entry
        report["seconds"] = round(time.time() - started, 1)
        write_report(path, report)
        print(summary_lines(report)[-1], flush=True)
    bad = [name for name, entry in report["parts"].items() if entry["status"] != "ok"]
    report["not_ok"] = bad
    write_report(path, report)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    print()
    print("\n".join(summary_lines(report)))
    print(f"\ngpu_check: {len(report['parts']) - len(bad)} of {len(report['parts'])} parts ok"
          + (f"; not ok: {', '.join(bad)}" if bad else "") + f"; figures in {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
