"""Activation checkpointing (same losses and gradients, fewer saved bytes) and the memory estimate, checked against
the bytes autograd saves in a real step, counted here with saved-tensor hooks."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data
import matcher
import memory
from bench import swin_tiny_config
from tiny import build_model, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def clip(frames, size, num_classes, targets=10):
    """Random frames (1, T, 3, H, W) and the HF targets of `targets` horizontal bands of classes per frame."""
    labels = (torch.arange(size)[:, None] * targets // size).expand(size, size) % num_classes
    mask_labels, class_labels = zip(*(data.mask_targets(labels) for _ in range(frames)))
    return torch.randn(1, frames, 3, size, size, generator=torch.Generator().manual_seed(0)), mask_labels, class_labels


def saved_bytes(model, pixel_values, mask_labels, class_labels):
    """Bytes autograd keeps for backward in one training forward with the loss, each storage once, the parameters'
    and the inputs' left out: the reference the estimate is checked against."""
    inputs = [*model.parameters(), pixel_values, *mask_labels, *class_labels]
    skip = {t.untyped_storage().data_ptr() for t in inputs}
    kept = {}

    def pack(t):
        kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(pixel_values, list(mask_labels), list(class_labels))
    return sum(n for ptr, n in kept.items() if ptr not in skip)


def random_tiny(family):
    """A tiny random model in training mode whose checkpointed blocks draw random numbers: drop path in the
    backbone, dropout in the decoders."""
    config = tiny_config(5, family=family)
    config.backbone_config.drop_path_rate = 0.3
    for sub in (config, getattr(config, "decoder_config", None)):
        if sub is not None:
            sub.dropout = 0.1
    torch.manual_seed(0)
    model = build_model(config, shift_div=8)
    matcher.install(model.model)
    return model.train()


@pytest.mark.parametrize("family", ["maskformer", "mask2former"])
def test_checkpointing_gives_the_same_loss_and_gradients_and_keeps_fewer_bytes(family):
    plain = random_tiny(family)
    checkpointed = memory.checkpoint_activations(copy.deepcopy(plain))
    batch = clip(4, 64, 5, targets=3)
    grads, losses = [], []
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout, drop path and loss points in both
        loss = model(batch[0], list(batch[1]), list(batch[2])).loss
        loss.backward()
        losses.append(loss.detach())
        grads.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 100
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7, msg=name)
    torch.manual_seed(1)
    assert saved_bytes(checkpointed, *batch) < 0.6 * saved_bytes(plain, *batch)
    with torch.no_grad():  # evaluation runs as before
        checkpointed.eval()(batch[0])


@pytest.fixture(scope="module")
def swin_t_counts():
    """The saved bytes of the paper's architecture (MaskFormer, Swin-T, random weights) in one training step of a
    2-frame clip of 256x256, without and with checkpointing: (bytes, bytes, the config)."""
    config = swin_tiny_config()
    torch.manual_seed(0)
    model = build_model(config, shift_div=16)
    matcher.install(model.model)
    batch = clip(2, 256, config.num_labels)
    without = saved_bytes(model.train(), *batch)
    return without, saved_bytes(memory.checkpoint_activations(model), *batch), config


def test_checkpointing_keeps_at_most_45_percent_of_the_swin_t_bytes(swin_t_counts):
    without, with_checkpointing, _ = swin_t_counts
    assert with_checkpointing <= 0.45 * without, with_checkpointing / without


def test_the_estimate_of_the_activations_is_within_20_percent_of_the_count(swin_t_counts):
    without, _, config = swin_t_counts
    estimate = memory.estimate(config, dict(shift_div=16), 1, 2, (256, 256))
    assert abs(estimate["activations_gib"] * memory.GIB / without - 1) <= 0.2
    assert estimate["activations_gib"] == pytest.approx(sum(estimate["activations_by_part"].values()))
    parameters = sum(p.numel() for p in build_model(config).parameters()) * 4 / memory.GIB
    assert estimate["params_gib"] == pytest.approx(parameters)
    assert estimate["optimizer_gib"] == pytest.approx(2 * estimate["grads_gib"])
    assert estimate["peak_gib"] >= estimate["params_gib"] + estimate["optimizer_gib"] + estimate["activations_gib"]
    checkpointed = memory.estimate(config, dict(shift_div=16), 1, 2, (256, 256), checkpointing=True)
    assert checkpointed["activations_gib"] * memory.GIB <= 0.5 * without
    assert checkpointed["peak_gib"] < estimate["peak_gib"]


def train(*flags, out):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "--out", str(out), *flags], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=600)


def losses(out):
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if "loss" in line]


def test_train_py_checkpointed_learns_the_same_and_resume_keeps_the_switch(tmp_path):
    small = ["--model", "tiny", "--clip-len", "4", "--batch-size", "1", "--log-every", "1", "--max-steps", "3",
             "--val-videos", "1"]
    assert train(*small, out=tmp_path / "plain").returncode == 0
    first = train(*small, "--gradient-checkpointing", "--stop-at", "2", out=tmp_path / "checkpointed")
    assert first.returncode == 0, first.stderr[-2000:]
    resumed = train("--resume", out=tmp_path / "checkpointed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((tmp_path / "checkpointed" / "config.json").read_text())["gradient_checkpointing"] is True
    assert losses(tmp_path / "checkpointed") == losses(tmp_path / "plain")  # no max_memory_gib off CUDA
    assert "max_memory_gib" not in (tmp_path / "plain" / "log.jsonl").read_text()


def test_train_py_estimates_without_data_or_output_and_ends_with_json(tmp_path):
    result = train("--data", "vspw", "--model", "tiny-mask2former", "--clip-len", "3", "--crop", "64", "96",
                   "--amp", "bf16", "--gradient-checkpointing", "--estimate-memory", out=tmp_path / "run")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert {"params_gib", "grads_gib", "optimizer_gib", "activations_gib", "peak_gib"} <= set(figures)
    assert (figures["clip_len"], figures["crop"], figures["precision"], figures["gradient_checkpointing"]) == \
        (3, [64, 96], "bf16", True)
    assert "activations saved for backward" in result.stdout and "backbone" in result.stdout
    assert not (tmp_path / "run").exists()


def test_a_model_neither_here_nor_in_the_cache_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit:
        memory.model_config("nobody/no-such-model")
    assert exit.value.code == 2
    assert capsys.readouterr().err.startswith("error: --model nobody/no-such-model: not in the Hugging Face cache")
