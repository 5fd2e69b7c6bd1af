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
import datetime
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

from cli import check_at_least, fail, first_line, make_parser, parse_world

# -----------------------------------------------------------------------------
# configuration: a flag given on the command line wins, then (with --resume) the run's saved config, then the
# paper's preset for the data set (Sec. 4.2.1), then the defaults

PRESETS = {  # clip_len frames per clip; batch_size clips per step (per GPU); crop (h, w)
    "vspw": dict(clip_len=16, batch_size=1, lr=5e-4, epochs=10, crop=[480, 480]),
    "cityscapes-vps": dict(clip_len=6, batch_size=1, lr=1e-3, epochs=50, crop=[512, 1024]),
    "clips": dict(clip_len=8, batch_size=1, lr=5e-4, epochs=10, crop=[480, 480]),
    "synthetic": dict(clip_len=8, batch_size=2, lr=5e-4, epochs=10, crop=None, model="tiny", workers=0),
}
SHIFT_AT = ("queries", "pixels", "backbone")  # qshift.PLACEMENTS, named here to check --shift-at before torch loads
DEFAULTS = dict(root=None, model="facebook/maskformer-swin-tiny-ade", world={},
                weight_decay=0.05, warmup=100, grad_clip=0.1, max_steps=0, out="out", seed=0, workers=4, amp=False,
                eval_every=0, val_videos=0, log_every=10, min_frames=32, device=None)


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


def parse_args(argv=None):
    """train.py's flags, checked; a bad one exits with one line. It needs no torch: see cli.py."""
    parser = make_parser(__doc__, epilog=presets_help())
    parser.add_argument("--data", choices=list(PRESETS), help="data set (default: synthetic)")
    parser.add_argument("--root", help="data set folder (not needed for synthetic)")
    parser.add_argument("--shift", type=int, help="shift 1/K of the channels; 0 = frame-by-frame baseline (16)")
    parser.add_argument("--shift-at", help="where to shift: queries (the paper), pixels, backbone, or a "
                        "comma-separated combination such as queries,pixels (queries)")
    parser.add_argument("--match", action=argparse.BooleanOptionalAction, help="match queries before shifting (on)")
    parser.add_argument("--match-by", choices=["queries", "masks"], help="match by the queries' cosine similarity "
                        "(Eq. 2) or by their predicted masks' (queries)")
    parser.add_argument("--causal", action=argparse.BooleanOptionalAction,
                        help="online: shift from the past only (off)")
    parser.add_argument("--reach", type=int, help="each shift takes its channels from up to R frames each way, "
                        "split evenly among the offsets 1..R (1, the paper's)")
    parser.add_argument("--world", type=parse_world, metavar="KNOBS", help="synthetic data: the world's knobs, e.g. "
                        "hide_run=3,speed=8 (class cues hidden in runs of 3 frames, blobs 8x faster; see data.py)")
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
    parser.add_argument("--min-frames", type=int, help="VSPW: skip videos shorter than this (32, as in the paper)")
    parser.add_argument("--out", help="output folder (out)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from OUT/last")
    parser.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    parser.add_argument("--stop-at", type=int,
                        help="save and exit after this step, e.g. for time-limited jobs; --resume goes on")
    parser.add_argument("--seed", type=int, help="(0)")
    parser.add_argument("--workers", type=int, help="DataLoader workers, at most the cores there are")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, help="bf16 autocast on CUDA")
    parser.add_argument("--eval-every", type=int, help="validate every N steps (0: only at the end)")
    parser.add_argument("--val-videos", type=int, help="validate on the first N videos only (0: all)")
    parser.add_argument("--log-every", type=int, help="(10)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    args = parser.parse_args(argv)
    check_at_least(args, {"--shift": 0, "--reach": 1, "--clip-len": 1, "--batch-size": 1, "--epochs": 1,
                          "--max-steps": 0, "--lr": 0, "--weight-decay": 0, "--warmup": 0, "--grad-clip": 0,
                          "--min-frames": 1, "--stop-at": 1, "--workers": 0, "--eval-every": 0, "--val-videos": 0, "--log-every": 1})
    if args.shift_at is not None:
        places = args.shift_at.split(",")
        if any(p not in SHIFT_AT for p in places) or len(set(places)) < len(places):
            fail(f"--shift-at {args.shift_at}: choose one or more of {', '.join(SHIFT_AT)}, comma-separated")
    if args.crop and min(args.crop) < 1:
        fail(f"--crop {args.crop[0]} {args.crop[1]}: must be at least 1 1")
    if args.resume and args.overwrite:
        fail("--resume and --overwrite: choose one")
    return args


# Flags, the run's config and the data set's folder are read and checked before the imports below (2-4 s, torch and
# transformers), so that --help and mistakes answer at once; then the loop runs at module level, as nanoGPT's does.
args = parse_args()
out = Path(args.out or DEFAULTS["out"])
saved = {}
if args.resume:
    try:
        saved = json.loads((out / "config.json").read_text())
    except FileNotFoundError as e:
        fail(f"--resume: no run to resume in {out} ({e.filename} is missing)")
    except (OSError, ValueError) as e:
        fail(f"--resume: {out / 'config.json'} is corrupt ({first_line(e)})")
given = {k: v for k, v in vars(args).items() if v is not None and k not in ("resume", "overwrite", "stop_at")}
data_name = given.get("data") or saved.get("data") or "synthetic"
config = {**DEFAULTS, **PRESETS[data_name], **saved, **given, "data": data_name}
if data_name != "synthetic" and config["root"] is None:
    fail(f"--data {data_name} needs --root, the data set's folder")
if data_name != "synthetic" and config["world"]:
    fail(f"--world: only the synthetic data set has knobs, not --data {data_name}")
if config["root"] is not None and not os.path.isdir(config["root"]):
    fail(f"--root {config['root']}: no such folder")
# more loader processes than cores only wait for each other (and torch warns): take the cores there are
cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
config["workers"] = min(config["workers"], cores)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
import transformers  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data import DataLoader, DistributedSampler  # noqa: E402
from tqdm import tqdm  # noqa: E402

from data import DataError, build_dataset, collate, mask_targets  # noqa: E402
from evaluate import evaluate, summary  # noqa: E402
from qshift import QShiftSegmenter, build_model, tiny_config  # noqa: E402

transformers.logging.disable_progress_bar()  # its bars at every load and save would cut into ours; messages stay

if args.resume:
    try:
        state = torch.load(out / "last" / "train_state.pt", map_location="cpu", weights_only=False)
    except FileNotFoundError as e:
        fail(f"--resume: no run to resume in {out} ({e.filename} is missing)")
    except Exception as e:  # a truncated or foreign file
        fail(f"--resume: checkpoint {out / 'last'} is corrupt ({first_line(e)})")

# -----------------------------------------------------------------------------
# distributed setup: torchrun sets RANK, LOCAL_RANK and WORLD_SIZE

ddp = "RANK" in os.environ
if ddp:
    cuda = torch.cuda.is_available() and config["device"] != "cpu"
    # Ranks wait for each other in collectives: in validation, where every rank scores its share of the videos and
    # the first done waits for the last, and while rank 0 writes a checkpoint. NCCL's default timeout, 10 minutes,
    # can abort a run there. Two hours is longer than a whole VSPW validation (24k frames) should take on one GPU
    # (estimated 20-30 minutes, not measured), so even a rank left to validate alone cannot hit it; the price is that
    # a rank that really hangs is found only after two hours.
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(hours=2))
    rank, world = dist.get_rank(), dist.get_world_size()
    device = f"cuda:{os.environ['LOCAL_RANK']}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(device)
else:
    rank, world = 0, 1
    device = config["device"] or ("cuda" if torch.cuda.is_available() else "cpu")
master = rank == 0
if args.resume and not isinstance(state["rng"], list):
    fail(f"--resume: {out / 'last'} was written by an older train.py (one random state for all processes), which "
         f"this one cannot continue exactly; start a new run from it with --model {out / 'last'}")
if args.resume and len(state["rng"]) != world:
    fail(f"--resume: the run in {out} was trained by {len(state['rng'])} process(es), this one has {world}; resume "
         f"with the same number (the order of the clips and the schedule depend on it)")
if device.startswith("cuda"):
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
amp = config["amp"] and device.startswith("cuda")  # bf16 autocast, in training and validation alike
autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp)

# -----------------------------------------------------------------------------
# data and model

seed = config["seed"]
torch.manual_seed(seed)  # the same initial weights on every rank
random.seed(seed)
np.random.seed(seed)
root = config["root"]
# own clips: validation on the videos of ROOT/val.txt, if there is one (training then leaves them out)
val_split = "val" if data_name != "clips" or os.path.isfile(os.path.join(root, "val.txt")) else None
capped = None  # a note when the crop is larger than any training clip can fill
try:
    crop = tuple(config["crop"]) if config["crop"] else None
    knobs = config["world"]  # the synthetic world's, {} for other data
    train_set = build_dataset(data_name, root, "train", config["clip_len"], train=True, crop=crop,
                              min_frames=config["min_frames"], seed=seed, **knobs)
    if crop is not None and train_set.crop != crop:  # capped at the largest frame at the largest scale
        capped = (f"crop {crop[0]}x{crop[1]} capped at {train_set.crop[0]}x{train_set.crop[1]}: the largest frame at "
                  f"the largest training scale fills no more, the rest would be padding")
        config["crop"] = list(train_set.crop)
    val_set = None
    if val_split:
        val_set = build_dataset(data_name, root, val_split, None, train=False, min_frames=config["min_frames"],
                                **knobs)  # seed 0: one synthetic val world for every run
    for dataset in (train_set, val_set):
        if dataset is not None and not dataset.labelled:
            fail(f"--root {root}: the videos have no labels (<video>/labels/); training needs them, evaluate.py "
                 f"predicts without")
        if data_name == "clips" and dataset is not None:
            dataset.check()  # your own files, read once now: a bad one stops the run here, not steps into it
except DataError as e:
    fail(str(e))
except ValueError as e:  # knobs that each pass alone but not together, e.g. runs of hidden frames too long
    fail(f"--world: {e}")

# the shift's settings: given here or saved with the run; the rest are QShiftSegmenter's defaults, the paper's
settings = dict(shift_div=config.get("shift"), match=config.get("match"), causal=config.get("causal"),
                shift_at=config["shift_at"].split(",") if config.get("shift_at") else None,
                match_by=config.get("match_by"), reach=config.get("reach"))
tiny = {"tiny": "maskformer", "tiny-mask2former": "mask2former"}


def from_cache(name):
    """{"local_files_only": True} when `name` is a hub id whose config is in the Hugging Face cache, else {}.

    Loaded from there, it asks the network nothing: offline, HF retries for half a minute before it falls back on
    the cache (and a newer revision on the Hub is not looked for: a run uses the copy it finds)."""
    from huggingface_hub import try_to_load_from_cache
    try:
        cached = not os.path.isdir(name) and isinstance(try_to_load_from_cache(name, "config.json"), str)
    except ValueError:  # not a hub id at all: from_pretrained says so
        cached = False
    return {"local_files_only": True} if cached else {}


try:
    if args.resume:
        model = QShiftSegmenter.from_pretrained(out / "last", **settings)
    elif config["model"] in tiny:
        config_ = tiny_config(train_set.num_classes, hidden_size=256, id2label=train_set.id2label,
                              family=tiny[config["model"]])
        model = build_model(config_, **{k: v for k, v in settings.items() if v is not None})
    else:
        model = QShiftSegmenter.from_pretrained(config["model"], num_labels=train_set.num_classes,
                                                id2label=train_set.id2label, **settings, **from_cache(config["model"]))
except ValueError as e:  # qshift names the setting: shift_div, shift_at, match_by
    flags = {"shift_div": "--shift", "shift_at": "--shift-at", "match_by": "--match-by", "reach": "--reach"}
    setting = str(e).split(" ")[0]
    fail(flags[setting] + str(e)[len(setting):] if setting in flags else str(e))
except OSError as e:
    fail(str(e))
resolved = model.settings()  # what runs, recorded in config.json: e.g. match is off when the queries are not shifted
config.update(shift=resolved["shift_div"], match=resolved["match"], causal=resolved["causal"],
              shift_at=",".join(resolved["shift_at"]), match_by=resolved["match_by"], reach=resolved["reach"])
if model.model.config.num_labels != train_set.num_classes:
    fail(f"--model {config['model']}: {model.model.config.num_labels} classes, the data set has "
         f"{train_set.num_classes}")
if train_set.palette is not None:  # the data set's class colours go with its checkpoints, for predict.py's videos
    model.model.config.palette = train_set.palette.tolist()

# every input is good: only now the output folder, so that its error does not hide theirs
replace_old_run = master and not args.resume and out.exists() and any(out.iterdir())
if replace_old_run:  # removed only when the run starts
    if not (out / "config.json").exists():
        fail(f"--out {out} holds files that are not a qshift run; choose another folder")
    if not args.overwrite:
        fail(f"--out {out} holds another run; pass --resume to continue it or --overwrite to replace it")

model.to(device)


def freeze_unused_parameters(model):
    """Freeze the parameters that the training loss never reaches, found by one backward pass of a small clip; returns
    their names.

    HF's Swin backbones keep a final layernorm that MaskFormer and Mask2Former never read. Frozen, such parameters
    need no find_unused_parameters in DDP (a search of the autograd graph at every step). A pass, not a list of
    names, so that the rule holds for any model and backbone.
    """
    labels = torch.zeros(2, 64, 64, dtype=torch.long)  # (T, H, W), one class everywhere
    mask_labels, class_labels = zip(*(mask_targets(frame) for frame in labels))
    model.eval()  # no dropout, no running statistics touched
    with torch.random.fork_rng(devices=[torch.device(device)] if device.startswith("cuda") else []):  # exact resume
        model(torch.zeros(1, 2, 3, 64, 64, device=device), [m.to(device) for m in mask_labels],
              [c.to(device) for c in class_labels]).loss.backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None]
    for p in model.parameters():
        p.requires_grad_(p.grad is not None)
    model.zero_grad(set_to_none=True)
    return unused


frozen = freeze_unused_parameters(model)
raw_model = model
if ddp:
    model = DistributedDataParallel(model, device_ids=[device] if device.startswith("cuda") else None)
if rank:  # the other ranks draw their own dropout, drop path and loss points; rank 0 goes on as one process would
    torch.manual_seed(seed + rank)

# MaskFormer's loss divides its mask terms by the number of masks of the local batch (transformers issue 26844). We
# keep that: every rank sees batches of the same size, so DDP's gradient average is the mean of per-rank losses.


def parameter_groups(model, weight_decay):
    """AdamW groups: weight decay on the weights of linear and conv layers only.

    As MaskFormer and Mask2Former do, norms, biases and embeddings (the learned queries, nn.Embedding, and Swin's
    relative position bias table, a bare parameter) are exempt, chosen by module type, not by name: decaying
    them pulls queries and norm scales towards zero for no regularising gain.
    """
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            exempt = (isinstance(module, (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase))
                      or p.dim() < 2 or name == "relative_position_bias_table")
            (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


optimizer = torch.optim.AdamW(parameter_groups(raw_model, config["weight_decay"]), lr=config["lr"])

steps_per_epoch = len(train_set) // (config["batch_size"] * world)
if steps_per_epoch == 0:
    fail(f"--batch-size {config['batch_size']}: the training set has only {len(train_set)} clips "
         f"for {world} process(es)")
max_steps = config["max_steps"] or config["epochs"] * steps_per_epoch
derived = dict(total_steps=max_steps, steps_per_epoch=steps_per_epoch, world_size=world, train_clips=len(train_set),
               backend=dist.get_backend() if ddp else None, frozen=frozen)


def learning_rate(step):
    """Linear warmup, then poly decay (power 0.9) to zero at max_steps; a function of the step alone."""
    warmup = min(config["warmup"], max_steps // 10)
    if step < warmup:
        return config["lr"] * (step + 1) / warmup
    return config["lr"] * (1 - step / max_steps) ** 0.9


class EpochClips(torch.utils.data.Dataset):
    """A training set indexed by (epoch, index), so that one DataLoader serves the whole run: its workers start once
    and keep their own copy of the data set, which a set_epoch in this process would not reach."""

    def __init__(self, clips):
        self.clips = clips

    def __getitem__(self, key):
        epoch, index = key
        if self.clips.epoch != epoch:
            self.clips.set_epoch(epoch)  # clip offsets and augmentation are drawn from (seed, epoch, index)
        return self.clips[index]


def clip_order(first_step):
    """This rank's (epoch, clip index) pairs for steps first_step..max_steps-1, each epoch in an order fixed by
    (seed, epoch): a resumed run reads the same clips as an uninterrupted one."""
    first_epoch, B = first_step // steps_per_epoch, config["batch_size"]
    order = []
    for epoch in range(first_epoch, -(-max_steps // steps_per_epoch)):
        sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        sampler.set_epoch(epoch)
        order += [(epoch, index) for index in list(sampler)[:steps_per_epoch * B]]
    skip = first_epoch * steps_per_epoch
    return order[(first_step - skip) * B:(max_steps - skip) * B]


def rng_states():
    """The random number generators' states of every rank: [rank 0's, rank 1's, ...]; a collective under torchrun."""
    mine = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.startswith("cuda") else None}
    if not ddp:
        return [mine]
    states = [None] * world if master else None
    dist.gather_object(mine, states, dst=0)
    return states


def save_checkpoint(name, step, best_miou, rng):
    """Write OUT/<name> atomically: the new checkpoint goes to a fresh folder, then one rename of a link.

    rng: rng_states(), one entry per rank, so that every rank resumes its own random draws."""
    folder = out / f"step-{step:07d}"
    if not folder.exists():
        tmp = out / f".tmp-{folder.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        raw_model.save_pretrained(tmp)
        torch.save({"optimizer": optimizer.state_dict(), "step": step, "best_miou": best_miou, "rng": rng},
                   tmp / "train_state.pt")
        tmp.rename(folder)
    link = out / f".{name}.link"
    link.unlink(missing_ok=True)
    link.symlink_to(folder.name)
    os.replace(link, out / name)  # atomic: OUT/<name> is the old or the new checkpoint, never half of one
    in_use = {os.readlink(out / n) for n in ("last", "best") if (out / n).is_symlink()}
    for old in out.glob("step-*"):
        if old.name not in in_use:
            shutil.rmtree(old)


def applicable(settings):
    """The settings that act in this run, as printed at its start (config.json keeps them all, for --resume)."""
    shifted, validated = bool(settings["shift"]), val_set is not None
    off = {"root": settings["root"] is None, "min_frames": settings["data"] != "vspw",  # VSPW's filter only
           "max_steps": not settings["max_steps"], "epochs": bool(settings["max_steps"]),  # the one that counts
           "shift_at": not shifted, "match": not shifted, "causal": not shifted, "reach": not shifted,
           "match_by": not settings["match"], "world": not settings["world"], "amp": not device.startswith("cuda"),
           "eval_every": not validated, "val_videos": not validated or not settings["val_videos"], "backend": not ddp}
    return {**{k: v for k, v in settings.items() if not off.get(k)}, "device": device}  # the device it runs on


def write_json_atomically(path, obj):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def validate(step):
    """Validation scores. Under torchrun every rank calls evaluate, which shares the videos out between the ranks
    and returns the same scores on all of them, so all agree on the best checkpoint; rank 0 logs them."""
    results = evaluate(raw_model, val_set, device, amp=amp, progress=False, max_videos=config["val_videos"] or None)
    if master:
        with open(out / "log.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "val": {k: v for k, v in results.items() if not isinstance(v, dict)}})
                    + "\n")
    return results


# -----------------------------------------------------------------------------
# the loop

step, best_miou = 0, -1.0
if args.resume:
    optimizer.load_state_dict(state["optimizer"])
    step, best_miou = state["step"], state["best_miou"]
    own = state["rng"][rank]  # this rank's own draws
    torch.set_rng_state(own["torch"])
    np.random.set_state(own["numpy"])
    random.setstate(own["python"])
    if own["cuda"] is not None and device.startswith("cuda"):
        torch.cuda.set_rng_state(own["cuda"], device)
if master:
    if replace_old_run:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    print(json.dumps(applicable({**config, **derived}), indent=2))
    if capped:
        print(capped, file=sys.stderr)
    if val_set is None:
        print(f"{root}: no val.txt, so no validation; {out}/best is the last checkpoint", file=sys.stderr)
    write_json_atomically(out / "config.json", config)

stop = False  # set by Ctrl-C; under torchrun acted on at the next check, where the ranks agree


def request_stop(signum, frame):  # Ctrl-C: finish the step, save, exit
    global stop
    stop = True


signal.signal(signal.SIGINT, request_stop)
loader = DataLoader(EpochClips(train_set), batch_size=config["batch_size"], sampler=clip_order(step),
                    collate_fn=collate, num_workers=config["workers"], pin_memory=device.startswith("cuda"),
                    generator=torch.Generator().manual_seed(seed))  # leaves the global RNG alone
model.train()
pbar = tqdm(total=max_steps, initial=step, disable=not master, dynamic_ncols=True)
frames_seen, t0 = 0, time.time()
recent = []  # this rank's losses since the last check, left on the device: reading one waits for the device
for batch in loader:
    lr = learning_rate(step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    # pinned by the DataLoader on CUDA, so the copies run in the background
    pixel_values = batch["pixel_values"].to(device, non_blocking=True)  # (B, T, 3, H, W)
    mask_labels = [m.to(device, non_blocking=True).float() for m in batch["mask_labels"]]  # B*T x (n, H, W)
    class_labels = [c.to(device, non_blocking=True) for c in batch["class_labels"]]  # B*T x (n,)
    with autocast:
        loss = model(pixel_values, mask_labels=mask_labels, class_labels=class_labels).loss
    recent.append(loss.detach())
    loss.backward()
    if config["grad_clip"]:
        torch.nn.utils.clip_grad_norm_(model.parameters(), config["grad_clip"])
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    step += 1
    frames_seen += pixel_values.shape[0] * pixel_values.shape[1] * world
    pbar.update(1)

    evaluate_now = step == max_steps or (config["eval_every"] and step % config["eval_every"] == 0)
    save_now = evaluate_now or step == args.stop_at or step % steps_per_epoch == 0
    # The host waits for the device only at checks: at log steps, before validating or saving, and (one process) on
    # Ctrl-C. Under torchrun the checks fall on the same steps on every rank, so that all stop at the same one.
    if not (save_now or step % config["log_every"] == 0 or (stop and not ddp)):
        continue
    losses = torch.stack(recent).float()
    weights_finite = torch.stack([p.isfinite().all() for p in raw_model.parameters()]).all()
    flags = torch.stack([torch.tensor(stop or step == args.stop_at, device=device), ~losses.isfinite().all(),
                         ~weights_finite]).float()
    if ddp:  # Ctrl-C and a non-finite loss can reach the ranks at different steps: all act on them at this one
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    stop_flag, bad_loss, bad_weights, *values = torch.cat([flags, losses]).tolist()
    stop, recent = bool(stop_flag), []
    if bad_loss or bad_weights:  # exit before spoiled weights are saved (between checks they fail the matching)
        bad = [(step - len(values) + 1 + i, v) for i, v in enumerate(values) if not math.isfinite(v)]
        if bad or master:
            what = (f"the loss is {bad[0][1]} at step {bad[0][0]}" if bad else
                    f"the weights are not finite after step {step}" if bad_weights else
                    f"another process's loss is not finite by step {step}")
            print(f"error: {what}; stopping (OUT/last holds the last good checkpoint)", file=sys.stderr)
        sys.exit(1)
    if master:
        fps = frames_seen / (time.time() - t0)
        pbar.set_postfix(loss=f"{values[-1]:.3f}", lr=f"{lr:.2e}", fps=f"{fps:.1f}")
        if step % config["log_every"] == 0 or step == max_steps:
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "loss": values[-1], "lr": lr, "frames_per_s": fps}) + "\n")
    if not (save_now or stop):
        continue
    results = validate(step) if evaluate_now and val_set is not None else None
    rng = rng_states()  # after validation: the states an uninterrupted run goes on with
    if results is not None:
        if master:
            pbar.write(f"step {step}: validation " + summary(results))
        if results["miou"] > best_miou:
            best_miou = results["miou"]
            if master:
                save_checkpoint("best", step, best_miou, rng)
    if master:
        save_checkpoint("last", step, best_miou, rng)
        if val_set is None:
            save_checkpoint("best", step, best_miou, rng)  # nothing to validate on: the best is the last
    if ddp:
        dist.barrier()  # the others wait here while rank 0 writes
    if stop:
        break
pbar.close()

if master:
    best = f"best validation mIoU {100 * best_miou:.2f}; " if best_miou >= 0 else ""
    print(f"{'stopped' if stop else 'done'} at step {step}/{max_steps} in {(time.time() - t0) / 60:.1f} min; "
          f"{best}checkpoints in {out}/last and {out}/best")
if ddp:
    dist.destroy_process_group()
