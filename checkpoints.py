"""
Checkpoints that a kill at any moment leaves whole (train.py's OUT/last and OUT/best), and the random states that let
a resumed run draw what an uninterrupted one would.

A checkpoint is written once to a fresh folder OUT/step-N; then OUT/<name>, a symbolic link, is replaced by one
rename, so that it names the old checkpoint or the new one, never half of one. Step folders that no link names are
removed. Each folder is readable by QShiftSegmenter.from_pretrained, plus train_state.pt for --resume.
"""
import os
import random
import shutil

import numpy as np
import torch


def save(out, name, step, model, train_state):
    """Write model (save_pretrained) and train_state (a dict, as train_state.pt) to OUT/step-N unless that step is
    written already, point OUT/<name> at it atomically, and remove the step folders no link names."""
    folder = out / f"step-{step:07d}"
    if not folder.exists():
        tmp = out / f".tmp-{folder.name}"
        shutil.rmtree(tmp, ignore_errors=True)  # left by a kill
        model.save_pretrained(tmp)
        torch.save(train_state, tmp / "train_state.pt")
        tmp.rename(folder)
    link = out / f".{name}.link"
    link.unlink(missing_ok=True)
    link.symlink_to(folder.name)
    os.replace(link, out / name)
    in_use = {os.readlink(out / n) for n in ("last", "best") if (out / n).is_symlink()}
    for old in out.glob("step-*"):
        if old.name not in in_use:
            shutil.rmtree(old)


def random_states(device):
    """This process's random states, all that a training step draws from: torch's, numpy's, Python's, the GPU's."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def restore_random_states(states, device):
    """Go on drawing from states (random_states' dict)."""
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if states["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], device)
