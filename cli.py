"""What the scripts (train.py, evaluate.py, predict.py, bench.py, experiments/) share: their command line, loading a
checkpoint, and the device.

Each script reads and checks its flags before it imports torch and transformers (2-4 s), so that --help and a
mistake answer at once: this module loads torch only inside the functions that need it, which run after the flags
are checked. A bad flag or input is one line `error: ...` and exit status 2, with no traceback.
"""
import argparse
import json
import os
import re
import sys
from pathlib import Path

# -----------------------------------------------------------------------------
# the command line


def fail(message):
    """Bad input: one line on stderr, exit status 2 (argparse's own status for bad flags), no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def make_parser(doc, epilog=None, add_help=True):
    """An ArgumentParser described by the first paragraph of doc: no abbreviated flags (--max-step must not pass for
    --max-steps), errors through fail."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0].strip(), epilog=epilog, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, add_help=add_help)
    parser.error = fail
    return parser


def check_at_least(args, lows):
    """fail unless every flag in lows ({"--name": lowest value}) that was given is at least its lowest value."""
    for flag, low in lows.items():
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None and value < low:
            fail(f"{flag} {value}: must be at least {low}")


def add_amp(parser, default="off", shown="off"):
    """--amp: mixed precision, the same for every script; --amp alone is auto (see amp_dtype). shown: the default
    as --help tells it, where default is None and the script decides."""
    parser.add_argument("--amp", nargs="?", const="auto", default=default, choices=["off", "auto", "bf16", "fp16"],
                        help=f"mixed precision: --amp alone takes bf16 where the device computes it natively, else "
                        f"fp16 (GPUs before Ampere: V100, T4); --amp bf16 or fp16 forces one ({shown})")


def refusal(e, flags):
    """A qshift.SettingError as one line naming the script's flag for the setting: flags {setting: flag}."""
    return f"{e.name} {e.value} ({flags[e.name]}): {e.why}"


def device_name(text):
    """--device's type: cpu, cuda or cuda:N (whether that GPU is there is checked by `device`, once torch loads)."""
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text}: use cpu, cuda or cuda:N")
    return text


def count(n, noun):
    """'1 video', '2 videos': n and the noun, plural unless n is 1."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def first_line(e):
    """An exception as one line: its type and the first line of its message."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


# -----------------------------------------------------------------------------
# checkpoints: a local folder, or a Hugging Face hub id


def is_local(name):
    """Whether a --checkpoint or --model names a local path rather than a hub id: it starts with ./, ../, / or ~, or
    its first component is a folder here (out/nosuch, where out/ exists). A mistyped path then fails at once instead
    of waiting on the network as a hub id would."""
    name = str(name)
    first = Path(name).parts[0] if Path(name).parts else ""
    return name.startswith(("./", "../", "/", "~")) or os.path.isdir(name) or (first != name and os.path.isdir(first))


def check_checkpoint(flag, folder):
    """fail unless folder is a qshift checkpoint, as QShiftSegmenter.save_pretrained writes it: a config.json with a
    "qshift" entry (the settings). Reads JSON only."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        fail(f"{flag} {folder}: no such folder")
    config = folder / "config.json"
    if not config.is_file():
        fail(f"{flag} {folder}: not a qshift checkpoint (no config.json; train.py writes RUN/best)")
    try:
        saved = json.loads(config.read_text())
    except (OSError, ValueError) as e:
        fail(f"{flag} {folder}: cannot read {config} ({first_line(e)})")
    if not (isinstance(saved, dict) and "qshift" in saved):
        fail(f"{flag} {folder}: not a qshift checkpoint (its config.json has no qshift settings; train.py writes "
             f"RUN/best)")


def check_model_path(flag, name):
    """fail at once if name is a local path (is_local) that holds no model, before anything asks the network."""
    path = Path(name).expanduser()
    if is_local(name) and not (path / "config.json").is_file():
        fail(f"{flag} {name}: no such folder" if not path.is_dir() else f"{flag} {name}: no config.json in it")


def write_json(path, value):
    """Replace the file at path by value as JSON in one rename: a reader, or a kill, meets the old file or the new
    one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2) + "\n")
    os.replace(tmp, path)


def quiet_transformers():
    """No progress bars and no info messages from transformers: they would cut into ours and make an error more than
    one line."""
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def load_model(flag, name, flags=None, **kwargs):
    """QShiftSegmenter.from_pretrained(name, **kwargs), or one line and exit status 2; flags {setting: flag}: the
    script's flags for settings given in kwargs, which a refused one names.

    name: a local folder (see is_local) or a hub id. A hub id found in the Hugging Face cache loads from there without
    asking the network (offline, HF would retry for half a minute first); a missing one says how to get it."""
    from huggingface_hub import constants, try_to_load_from_cache

    from qshift import QShiftSegmenter, SettingError
    quiet_transformers()
    check_model_path(flag, name)
    if is_local(name):
        name = Path(name).expanduser()
    else:
        try:
            if isinstance(try_to_load_from_cache(name, "config.json"), str):
                kwargs["local_files_only"] = True
        except ValueError:  # not a hub id at all: from_pretrained says so
            pass
    try:
        return QShiftSegmenter.from_pretrained(name, **kwargs)
    except SettingError as e:  # a setting that does not fit this model
        fail(refusal(e, flags) if flags and e.name in flags else f"{flag} {name}: {e}")
    except ValueError as e:
        fail(f"{flag} {name}: {e}")
    except OSError as e:
        offline = "" if constants.HF_HUB_OFFLINE else "; offline, HF_HUB_OFFLINE=1 answers at once, not in 30 s"
        local = is_local(name)
        fail(f"{flag} {name}: cannot load it ({first_line(e)})" if local else
             f"{flag} {name}: not in the Hugging Face cache; download it on a connected machine (`hf download "
             f"{name}`) and copy the cache, or pass a local folder{offline}")
    except Exception as e:  # a broken checkpoint fails in many ways: json, safetensors, config, shapes
        fail(f"{flag} {name}: cannot load it ({first_line(e)})")


# -----------------------------------------------------------------------------
# the device


def device(name=None):
    """The torch.device for --device (None: cuda when present, else cpu), with TF32 matmuls and convolutions on CUDA
    (Ampere and later; see docs/details.md on precision); fail if that GPU is not here."""
    import torch
    dev = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda":
        if not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count():
            fail(f"--device {name}: no such CUDA device here")
        torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = "tf32"
    return dev


def amp_dtype(amp, device):
    """--amp (off, auto, bf16, fp16) on device as an autocast dtype, or None. auto takes bf16 where the device
    computes it natively (CPUs, GPUs from Ampere on), else fp16, whose training needs its loss scaled (GradScaler)."""
    import torch
    if amp == "auto":
        native = device.type != "cuda" or torch.cuda.is_bf16_supported(including_emulation=False)
        return torch.bfloat16 if native else torch.float16
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
