"""
Train MaskFormer (or Mask2Former) with shifted and matched queries on video clips (the paper's Sec. 4.2.1).

    python train.py                                         # built-in synthetic set, tiny model, CPU, minutes
    python train.py --data vspw --root data/VSPW_480p --shift 16 --match
    python train.py --data cityscapes-vps --root data/cityscapes-vps --shift 32 --match
    python train.py --data vspw --root data/VSPW_480p --shift 0            # the frame-by-frame baseline
    python train.py --data vspw --root data/VSPW_480p --shift 8 --shift-at pixels          # beyond the paper
    python train.py --world hide_run=3 --shift 4 --shift-at pixels --reach 3     # cues hidden 3 frames in a row
    python train.py --data vspw --root data/VSPW_480p --model facebook/mask2former-swin-tiny-ade-semantic
    python train.py --data clips --root my_videos --model tiny --max-steps 200   # your own videos (see data.py)

Several GPUs (DistributedDataParallel, one process per GPU):

    torchrun --standalone --nproc_per_node 4 train.py --data vspw --root data/VSPW_480p --shift 16 --match

A run writes OUT/config.json, OUT/log.jsonl and two checkpoints, OUT/last and OUT/best (by validation mIoU): each is
a folder readable by evaluate.py and QShiftSegmenter.from_pretrained, plus train_state.pt for --resume. Own clips
train on ROOT/train.txt's videos (default: all but those of ROOT/val.txt) and validate on ROOT/val.txt's, if any.
"""
import argparse
import atexit
import datetime
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from dataclasses import asdict, fields
from pathlib import Path

import cli
from cli import fail, first_line
from synthetic import parse_world

# -----------------------------------------------------------------------------
# settings: a flag given on the command line wins, then (with --resume) the run's saved config, then the paper's
# preset for the data set (Sec. 4.2.1), then the defaults; the shift's own settings are qshift.Settings

PRESETS = {  # clip_len frames per clip; batch_size clips per step (per GPU); crop (h, w)
    "vspw": dict(clip_len=16, batch_size=1, lr=5e-4, epochs=10, crop=[480, 480]),
    "cityscapes-vps": dict(clip_len=6, batch_size=1, lr=1e-3, epochs=50, crop=[512, 1024]),
    "clips": dict(clip_len=8, batch_size=1, lr=5e-4, epochs=10, crop=[480, 480]),
    "synthetic": dict(clip_len=8, batch_size=2, lr=5e-4, epochs=10, crop=None, model="tiny", workers=0),
}
DEFAULTS = dict(root=None, model="facebook/maskformer-swin-tiny-ade", world={}, weight_decay=0.05, warmup=100,
                grad_clip=0.1, max_steps=0, out="out", seed=0, workers=4, amp="off", eval_every=0, val_videos=0,
                log_every=10, device=None, gradient_checkpointing=False)  # min_frames: data.VSPW_MIN_FRAMES
TINY = {"tiny": "maskformer", "tiny-mask2former": "mask2former"}  # --model: small random models (tiny.py)
FLAGS = {"shift_div": "--shift", "match": "--match", "causal": "--causal", "shift_at": "--shift-at",
         "match_by": "--match-by", "reach": "--reach"}  # qshift.Settings' fields, with their meanings as help


def presets_help():
    """The per-data-set presets, as --help shows them."""
    lines = ["presets per data set (flags given win; with --resume the run's saved config comes next):"]
    for name, preset in PRESETS.items():
        values = {**DEFAULTS, **preset}
        values["crop"] = " ".join(map(str, values["crop"])) if values["crop"] else "none (whole frames)"
        flags = [f"--{key.replace('_', '-')} {values[key]}"
                 for key in ("model", "clip_len", "batch_size", "crop", "lr", "epochs", "workers")]
        lines.append(f"  {name:15} {' '.join(flags)}")
    return "\n".join(lines)


# The flags in two steps: these are read and checked before torch loads (2-4 s), so that a mistake answers at once;
# then the shift's flags, FLAGS, whose help is qshift.Settings' meanings, and the whole command line.
parser = cli.make_parser(__doc__, epilog=presets_help(), add_help=False)
parser.add_argument("--data", choices=list(PRESETS), help="data set (default: synthetic)")
parser.add_argument("--root", help="data set folder (not needed for synthetic)")
parser.add_argument("--world", type=parse_world, metavar="KNOBS", help="synthetic data: the world's knobs, e.g. "
                    "hide_run=3,speed=8 (class cues hidden in runs of 3 frames, blobs 8x faster; see synthetic.py)")
parser.add_argument("--model", help="HF hub id or local folder of a MaskFormer or Mask2Former, or 'tiny' / "
                    "'tiny-mask2former' for a small random one")
parser.add_argument("--clip-len", type=int, help="frames per clip")
parser.add_argument("--batch-size", type=int, help="clips per step and GPU")
parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), help="training crop")
parser.add_argument("--epochs", type=int)
parser.add_argument("--max-steps", type=int, help="stop after this many steps (0: run all epochs)")
parser.add_argument("--lr", type=float)
parser.add_argument("--weight-decay", type=float, help="(0.05)")
parser.add_argument("--warmup", type=int, help="linear warmup steps (100)")
parser.add_argument("--grad-clip", type=float, help="clip the gradient norm (0: off) (0.1)")
parser.add_argument("--min-frames", type=int, help="VSPW: skip videos shorter than this (the paper's 32)")
parser.add_argument("--out", help="output folder (out)")
parser.add_argument("--resume", action="store_true", help="continue the run in --out from OUT/last")
parser.add_argument("--overwrite", action="store_true", help="replace the run in --out")
parser.add_argument("--stop-at", type=int, help="save and exit after this step, e.g. for time-limited jobs; --resume "
                    "goes on")
parser.add_argument("--seed", type=int, help="(0)")
parser.add_argument("--workers", type=int, help="DataLoader workers, at most the cores there are")
cli.add_amp(parser, default=None)  # None: the saved run's, else off
parser.add_argument("--eval-every", type=int, help="validate every N steps (0: only at the end)")
parser.add_argument("--val-videos", type=int, help="validate on the first N videos only (0: all)")
parser.add_argument("--log-every", type=int, help="(10)")
parser.add_argument("--device", type=cli.device_name, help="cpu, cuda or cuda:N (default: cuda when present)")
parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, help="keep a sixth to a third "
                    "of the activations, recomputing the rest in backward (docs/memory.md) (off)")
parser.add_argument("--estimate-memory", action="store_true", default=None, help="print the memory a training "
                    "step needs on the device, by part, and exit: no weights, no training (docs/memory.md)")
args, rest = parser.parse_known_args()
out, saved = Path(args.out or DEFAULTS["out"]), {}
helping = bool({"-h", "--help"} & set(rest))  # --help is answered below, with the settings' flags
if args.resume and args.overwrite and not helping:
    fail("--resume and --overwrite: choose one")
if args.resume and not helping:
    try:
        saved = json.loads((out / "config.json").read_text())
    except FileNotFoundError as e:
        fail(f"--resume: no run to resume in {out} ({e.filename} is missing)")
    except (OSError, ValueError) as e:
        fail(f"--resume: {out / 'config.json'} is corrupt ({first_line(e)})")
given = {k: v for k, v in vars(args).items() if v is not None and k not in ("resume", "overwrite", "stop_at")}
data_name = given.get("data") or saved.get("data") or "synthetic"
config = {**DEFAULTS, **PRESETS[data_name], **saved, **given, "data": data_name}
if not helping:
    cli.check_at_least(args, {"--clip-len": 1, "--batch-size": 1, "--epochs": 1, "--max-steps": 0, "--lr": 0,
                              "--weight-decay": 0, "--warmup": 0, "--grad-clip": 0, "--min-frames": 1,
                              "--stop-at": 1, "--workers": 0, "--eval-every": 0, "--val-videos": 0, "--log-every": 1})
    if args.crop and min(args.crop) < 1:
        fail(f"--crop {args.crop[0]} {args.crop[1]}: must be at least 1 1")
    if config["root"] is None and (data_name == "clips" or data_name != "synthetic" and not args.estimate_memory):
        fail(f"--data {data_name} needs --root, the data set's folder")
    if data_name != "synthetic" and config["world"]:
        fail(f"--world: only the synthetic data set has knobs, not --data {data_name}")
    if config["root"] is not None and not os.path.isdir(config["root"]):
        fail(f"--root {config['root']}: no such folder")
    if not args.resume and config["model"] not in TINY:
        cli.check_model_path("--model", config["model"])  # a mistyped folder fails here, not on the network
    if "RANK" in os.environ and config["device"] not in (None, "cpu", "cuda"):  # torchrun gives each process its GPU
        fail(f"--device {config['device']}: under torchrun use cuda (or cpu); CUDA_VISIBLE_DEVICES picks the GPUs")

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import checkpoints
import matcher
import memory
from data import VSPW_MIN_FRAMES, DataError, build_dataset, collate
from evaluate import evaluate
from metrics import summary
from qshift import SettingError, Settings, to_device
from tiny import build_model, tiny_config

config.setdefault("min_frames", VSPW_MIN_FRAMES)  # the last default: data.py's, which needs torch
parser.add_argument("-h", "--help", action="help", help="show this help message and exit")
for f in fields(Settings):  # --shift-at takes the placements comma-separated
    kind = {"type": (lambda text: tuple(text.split(","))) if f.type is tuple else f.type} if f.type is not bool else \
        {"action": argparse.BooleanOptionalAction}
    parser.add_argument(FLAGS[f.name], dest=f.name, **kind,
                        help=f"{f.metadata['meaning']} ({','.join(f.default) if f.type is tuple else f.default})")
args = parser.parse_args()  # the whole command line
config.update({f.name: getattr(args, f.name) for f in fields(Settings) if getattr(args, f.name) is not None})
chosen = {f.name: tuple(v) if isinstance(v := config[f.name], list) else v  # given, or saved with the run (JSON)
          for f in fields(Settings) if f.name in config}
try:  # checked now; the others come from the model's checkpoint, or else Settings' defaults (the paper's)
    Settings(**chosen)
except SettingError as e:
    fail(cli.refusal(e, FLAGS))
if args.estimate_memory:  # from the configs alone: no weights, no data but own clips', no output folder
    sys.exit(memory.report(config, chosen, out / "last" if args.resume else config["model"], TINY, FLAGS))
if args.resume:
    try:
        state = torch.load(out / "last" / "train_state.pt", map_location="cpu", weights_only=False)
    except Exception as e:  # missing, truncated or foreign
        fail(f"--resume: checkpoint {out / 'last'} is missing or corrupt ({first_line(e)})")
config["workers"] = min(config["workers"], len(os.sched_getaffinity(0)))  # more would only wait for each other
cli.quiet_transformers()  # its bars at every save would cut into ours

# -----------------------------------------------------------------------------
# distributed setup: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE

ddp = "RANK" in os.environ
rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
cuda = torch.cuda.is_available() and config["device"] != "cpu"
device = cli.device(f"cuda:{os.environ['LOCAL_RANK']}" if ddp and cuda else "cpu" if ddp else config["device"])
if device.type == "cuda":  # before any CUDA work, so that nothing opens a context on GPU 0
    torch.cuda.set_device(device)
if ddp:
    # Ranks wait for each other in validation (each scores its share) and while rank 0 saves: NCCL's 10-minute
    # timeout could abort a run there; two hours exceed a whole VSPW validation on one GPU (estimated, not measured).
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2),
                            device_id=device if device.type == "cuda" else None)
    atexit.register(dist.destroy_process_group)  # on every exit, errors too
master = rank == 0
if args.resume and len(state["rng"]) != world:
    fail(f"--resume: the run in {out} was trained by {len(state['rng'])} process(es), this one has {world}; resume "
         f"with the same number (the order of the clips and the schedule depend on it)")
# mixed precision in training and validation; fp16's loss is scaled so that small gradients do not flush to zero
amp = cli.amp_dtype(config["amp"], device)
config["precision"] = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]
autocast = torch.autocast(device.type, dtype=amp, enabled=amp is not None)
scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

# -----------------------------------------------------------------------------
# data and model

seed, root = config["seed"], config["root"]
torch.manual_seed(seed)  # the same initial weights on every rank
random.seed(seed)
np.random.seed(seed)
# own clips: validation on the videos of ROOT/val.txt, if there is one (training then leaves them out)
val_split = "val" if data_name != "clips" or os.path.isfile(os.path.join(root, "val.txt")) else None
try:
    crop = tuple(config["crop"]) if config["crop"] else None
    train_set = build_dataset(data_name, root, "train", config["clip_len"], train=True, crop=crop,
                              min_frames=config["min_frames"], seed=seed, **config["world"])
    val_set = val_split and build_dataset(data_name, root, val_split, None, train=False,
                                          min_frames=config["min_frames"], **config["world"])  # seed 0: one val world
    for dataset in (d for d in (train_set, val_set) if d is not None):
        if not dataset.labelled:
            fail(f"--root {root}: the videos have no labels (<video>/labels/); training needs them, evaluate.py "
                 f"predicts without")
        if data_name == "clips":
            dataset.check()  # your own files, read once now: a bad one stops the run here, not steps into it
except DataError as e:
    fail(str(e))
except ValueError as e:  # knobs that each pass alone but not together, e.g. runs of hidden frames too long
    fail(f"--world: {e}")
if capped := crop is not None and train_set.crop != crop:  # at the largest frame at the largest training scale
    config["crop"] = list(train_set.crop)

if args.resume:
    model = cli.load_model("--resume", out / "last")
elif config["model"] in TINY:
    try:
        model = build_model(tiny_config(train_set.num_classes, hidden_size=256, id2label=train_set.id2label,
                                        family=TINY[config["model"]]), **chosen)
    except SettingError as e:  # a setting that does not fit the model
        fail(cli.refusal(e, FLAGS))
else:
    model = cli.load_model("--model", config["model"], FLAGS, num_labels=train_set.num_classes,
                           id2label=train_set.id2label, **chosen)
config.update(asdict(model.settings))  # those given, else the checkpoint's, else the paper's
if model.model.config.num_labels != train_set.num_classes:
    fail(f"--model {config['model']}: {model.model.config.num_labels} classes, the data set has "
         f"{train_set.num_classes}")
if train_set.palette is not None:  # the data set's class colours go with its checkpoints, for predict.py's videos
    model.model.config.palette = train_set.palette.tolist()

# every input is good: only now the output folder, so that its error does not hide theirs
replace_old_run = master and not args.resume and out.exists() and any(out.iterdir())
if replace_old_run and not (out / "config.json").exists():
    fail(f"--out {out} holds files that are not a qshift run; choose another folder")
if replace_old_run and not args.overwrite:
    fail(f"--out {out} holds another run; pass --resume to continue it or --overwrite to replace it")

matcher.install(model.model)  # HF's loss waits for the device once per frame; this matcher, once per call
if config["gradient_checkpointing"]:
    memory.checkpoint_activations(model)
model.to(device)
raw_model = model
if ddp:  # static_graph: DDP finds once which parameters the loss never reaches (Swin's unread final layernorm)
    model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                    broadcast_buffers=False, static_graph=True)  # no BatchNorm: no buffers to sync
if rank:  # the other ranks draw their own dropout, drop path and loss points; rank 0 goes on as one process would
    torch.manual_seed(seed + rank)


def parameter_groups(model, weight_decay):
    """AdamW groups: weight decay on the weights of linear and conv layers only. As MaskFormer and Mask2Former do,
    norms, biases and embeddings (the learned queries, Swin's relative position bias table) are exempt, by module
    type, not by name: decaying them pulls queries and norm scales towards zero for no regularising gain."""
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            exempt = (isinstance(module, (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase))
                      or p.dim() < 2 or name == "relative_position_bias_table")
            (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


optimizer = torch.optim.AdamW(parameter_groups(raw_model, config["weight_decay"]), lr=config["lr"],
                              fused=device.type == "cuda")
steps_per_epoch = len(train_set) // (config["batch_size"] * world)
if steps_per_epoch == 0:
    fail(f"--batch-size {config['batch_size']}: the training set has only {len(train_set)} clips "
         f"for {world} process(es)")
max_steps = config["max_steps"] or config["epochs"] * steps_per_epoch


def learning_rate(step):
    """Linear warmup, then poly decay (power 0.9) to zero at max_steps; a function of the step alone."""
    warmup = min(config["warmup"], max_steps // 10)
    if step < warmup:
        return config["lr"] * (step + 1) / warmup
    return config["lr"] * (1 - step / max_steps) ** 0.9


def batches(step):
    """This rank's batches for steps step..max_steps-1. Each epoch's clip order is fixed by (seed, epoch), and a clip's
    offsets and augmentation by (seed, epoch, index), so a resumed run reads what an uninterrupted one would."""
    B = config["batch_size"]
    while step < max_steps:
        epoch, first = divmod(step, steps_per_epoch)
        sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)  # before the loader copies the data set into its workers
        order = list(sampler)[first * B:min(steps_per_epoch, first + max_steps - step) * B]
        yield from DataLoader(train_set, B, sampler=order, collate_fn=collate, num_workers=config["workers"],
                              pin_memory=device.type == "cuda",
                              generator=torch.Generator().manual_seed(seed))  # leaves the global RNG alone
        step += len(order) // B


def save_checkpoint(name, step, best_miou):
    """OUT/<name>, written atomically (checkpoints.save), with the random states of every rank, so that each
    resumes its own draws; a collective under torchrun."""
    rng, states = checkpoints.random_states(device), [None] * world if master else None
    if ddp:
        dist.gather_object(rng, states, dst=0)
    if master:
        train_state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "step": step,
                       "best_miou": best_miou, "rng": states if ddp else [rng]}
        checkpoints.save(out, name, step, raw_model, train_state)


def check(step, losses, stop):
    """The host reads this rank's losses since the last check (on the device: reading one waits for it), and the
    ranks agree, so that all stop at one step: returns (stop on any rank, the losses as floats); exits, before
    spoiled weights are saved, where a loss or weight is not finite on any rank."""
    values = torch.stack(losses).float().tolist()
    weights_finite = torch.stack([p.isfinite().all() for p in raw_model.parameters()]).all().item()
    flags = torch.tensor([stop, not all(map(math.isfinite, values)), not weights_finite], device=device).float()
    if ddp:  # Ctrl-C and a non-finite loss can reach the ranks at different steps: all act on them at this one
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    stop, bad_loss, bad_weights = flags.tolist()
    if bad_loss or bad_weights:
        bad = [(step - len(values) + 1 + i, v) for i, v in enumerate(values) if not math.isfinite(v)]
        if bad or master:
            what = (f"the loss is {bad[0][1]} at step {bad[0][0]}" if bad else
                    f"the weights are not finite after step {step}" if bad_weights else
                    f"another process's loss is not finite by step {step}")
            print(f"error: {what}; stopping (OUT/last holds the last good checkpoint)", file=sys.stderr)
        sys.exit(1)
    return bool(stop), values


# -----------------------------------------------------------------------------
# the loop

step, best_miou = 0, -1.0
if args.resume:
    optimizer.load_state_dict(state["optimizer"])
    if state["scaler"] or not scaler.is_enabled():  # an fp16 run's scaler; a disabled one ignores it
        scaler.load_state_dict(state["scaler"])
    if master and saved.get("precision", config["precision"]) != config["precision"]:
        print(f"--resume: the run was trained in {saved['precision']} and goes on in {config['precision']}"
              f"{' with a fresh gradient scaler' if scaler.is_enabled() else ''}", file=sys.stderr)
    step, best_miou = state["step"], state["best_miou"]
    checkpoints.restore_random_states(state["rng"][rank], device)  # this rank's own draws
if master:
    if replace_old_run:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    off = {"root": config["root"] is None, "min_frames": data_name != "vspw", "epochs": bool(config["max_steps"]),
           "max_steps": not config["max_steps"], "world": not config["world"], "amp": amp is None,
           "eval_every": val_set is None, "val_videos": val_set is None or not config["val_videos"]}
    s = raw_model.settings  # the shift's settings where they act: matching orders the shifted queries only
    off.update({f.name: not s.shift_div for f in fields(Settings) if f.name != "shift_div"},
               match=not s.shift_div or "queries" not in s.shift_at, match_by=not s.matches)
    print(json.dumps({**{k: v for k, v in config.items() if not off.get(k)}, "device": str(device),
                      "world_size": world, "total_steps": max_steps, "steps_per_epoch": steps_per_epoch,
                      "train_clips": len(train_set), **({"backend": dist.get_backend()} if ddp else {})}, indent=2))
    if capped:
        print(f"crop {crop[0]}x{crop[1]} capped at {train_set.crop[0]}x{train_set.crop[1]}: the largest frame at the "
              f"largest training scale fills no more, the rest would be padding", file=sys.stderr)
    if val_set is None:
        print(f"{root}: no val.txt, so no validation; {out}/best is the last checkpoint", file=sys.stderr)
    cli.write_json(out / "config.json", config)

# Ctrl-C: the step finishes, then saves and exits at its check (a KeyboardInterrupt could strike in optimizer.step)
stop, interrupted = False, threading.Event()
signal.signal(signal.SIGINT, lambda signum, frame: interrupted.set())
model.train()
pbar = tqdm(total=max_steps, initial=step, disable=not master, dynamic_ncols=True)
frames_seen, t0 = 0, time.time()
recent = []  # this rank's losses since the last check, left on the device: reading one waits for the device
for batch in batches(step):
    lr = learning_rate(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    # pinned by the DataLoader's thread on CUDA, so the copies run in the background
    pixel_values = to_device(batch["pixel_values"], device)  # (B, T, 3, H, W)
    mask_labels = [to_device(m, device).float() for m in batch["mask_labels"]]  # B*T x (n, H, W)
    class_labels = [to_device(c, device) for c in batch["class_labels"]]  # B*T x (n,)
    with autocast:
        loss = model(pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss
    recent.append(loss.detach())
    scaler.scale(loss).backward()  # the scaler, off except in fp16, leaves the loss and the step as they are
    if config["grad_clip"]:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    step += 1
    frames_seen += pixel_values.shape[0] * pixel_values.shape[1] * world
    pbar.update(1)

    evaluate_now = step == max_steps or (config["eval_every"] and step % config["eval_every"] == 0)
    save_now = evaluate_now or step == args.stop_at or step % steps_per_epoch == 0
    # Checks, where the host reads the losses: at log steps, before validating or saving, and (one process) on Ctrl-C.
    # Under torchrun they fall on the same steps on every rank, so that all stop at the same one.
    if not (save_now or step % config["log_every"] == 0 or (interrupted.is_set() and not ddp)):
        continue
    stop, values = check(step, recent, interrupted.is_set() or step == args.stop_at)
    recent = []
    if master:
        fps = frames_seen / (time.time() - t0)
        pbar.set_postfix(loss=f"{values[-1]:.3f}", lr=f"{lr:.2e}", fps=f"{fps:.1f}")
        if step % config["log_every"] == 0 or step == max_steps:
            with open(out / "log.jsonl", "a") as f:
                peak = {"max_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30} if cuda else {}
                f.write(json.dumps({"step": step, "loss": values[-1], "lr": lr, "frames_per_s": fps, **peak}) + "\n")
    if not (save_now or stop):
        continue
    if evaluate_now and val_set is not None:  # every rank scores its share of the videos; all get the same scores
        results = evaluate(raw_model, val_set, device, amp=amp, progress=False,
                           max_videos=config["val_videos"] or None)
        if master:
            pbar.write(f"step {step}: validation " + summary(results))
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "val": {k: v for k, v in results.items()
                                                          if not isinstance(v, dict)}}) + "\n")
        if results["miou"] > best_miou:
            best_miou = results["miou"]
            save_checkpoint("best", step, best_miou)
    save_checkpoint("last", step, best_miou)  # after validation: the random states an uninterrupted run goes on with
    if val_set is None:
        save_checkpoint("best", step, best_miou)  # nothing to validate on: the best is the last
    if ddp:
        dist.barrier()  # the others wait here while rank 0 writes
    if stop:
        break
pbar.close()

if master:
    best = f"best validation mIoU {100 * best_miou:.2f}; " if best_miou >= 0 else ""
    print(f"{'stopped' if stop else 'done'} at step {step}/{max_steps} in {(time.time() - t0) / 60:.1f} min; "
          f"{best}checkpoints in {out}/last and {out}/best")
