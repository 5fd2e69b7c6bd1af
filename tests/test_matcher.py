"""matcher.py: HF's assignments and loss, with one host wait per matcher call whatever the number of frames."""
import contextlib
import traceback
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import matcher
from data import IGNORE_INDEX, mask_targets

from tiny import build_model, tiny_config

FAMILIES = ["maskformer", "mask2former"]
aten = torch.ops.aten
ROOT = Path(__file__).resolve().parents[1]  # the repository: its files and transformers' are call sites


def tiny_model(family, aux=None, seed=0):
    """A random QShiftSegmenter (the paper's shift and matching) of 5 classes, Q = 20 queries; aux: HF's auxiliary
    loss on every decoder layer (None: the family's default, off for MaskFormer, on for Mask2Former)."""
    torch.manual_seed(seed)
    config = tiny_config(5, family=family)
    if aux is not None:
        config.use_auxiliary_loss = aux
    return build_model(config)


def random_targets(counts, size=(64, 64), num_labels=5, seed=0):
    """Random 0/1 target masks (K, H, W) and classes (K,) for frames of K = counts[i] targets: the matcher needs
    no segmentation, so they overlap and may outnumber the queries."""
    gen = torch.Generator().manual_seed(seed)
    return ([(torch.rand(k, *size, generator=gen) > 0.5).float() for k in counts],
            [torch.randint(0, num_labels, (k,), generator=gen) for k in counts])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assignments_are_hfs(family, seed):
    """Six frames of 3, 0, 7, 1, 25 (more than the 20 queries) and 12 targets; for Mask2Former the same seed before
    both calls: HF's points are drawn again, frame by frame, and the generator ends where HF's leaves it."""
    model = tiny_model(family).model
    hf = model.criterion.matcher
    ours = matcher.install(model).criterion.matcher
    assert type(ours) is matcher.HungarianMatcher and ours is not hf
    assert (ours.cost_class, ours.cost_mask, ours.cost_dice) == (hf.cost_class, hf.cost_mask, hf.cost_dice)
    assert ours.num_points == getattr(hf, "num_points", None)
    gen = torch.Generator().manual_seed(seed)
    class_logits, mask_logits = 3 * torch.randn(6, 20, 6, generator=gen), 3 * torch.randn(6, 20, 16, 16, generator=gen)
    masks, classes = random_targets([3, 0, 7, 1, 25, 12], seed=seed)
    torch.manual_seed(seed)
    theirs = hf(mask_logits, class_logits, masks, classes)
    after_theirs = torch.rand(4)
    torch.manual_seed(seed)
    mine = ours(mask_logits, class_logits, masks, classes)
    assert torch.equal(torch.rand(4), after_theirs)  # as many random numbers drawn, so HF's loss draws the same next
    assert len(mine) == len(theirs) == 6
    for (rows, cols), (hf_rows, hf_cols), k in zip(mine, theirs, [3, 0, 7, 1, 25, 12]):
        assert rows.dtype == cols.dtype == torch.int64 and len(rows) == len(cols) == min(20, k)
        assert torch.equal(rows, hf_rows) and torch.equal(cols, hf_cols)


@pytest.mark.parametrize("family", FAMILIES)
def test_install_keeps_the_weights_and_the_loss_module(family):
    model = tiny_model(family).model
    keys = set(model.state_dict())
    assert matcher.install(matcher.install(model)) is model  # twice: the same costs again
    assert set(model.state_dict()) == keys  # the matcher holds no weights
    assert model.criterion.matcher is getattr(model, "matcher", model.criterion.matcher)  # MaskFormer keeps two refs


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_and_gradients_are_hfs(family):
    """The wrapper's loss, every decoder layer's (auxiliary losses on), with labels of 1 to 4 classes a frame made by
    data.mask_targets: the same with either matcher, and so are its gradients."""
    model = tiny_model(family, aux=True).train()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 3, 64, 64, generator=gen)
    maps = torch.stack([torch.randint(0, t + 1, (8, 8), generator=gen) for t in range(4)])  # frame t: <= t + 1 classes
    maps[:, :2, :2] = IGNORE_INDEX
    maps = maps.repeat_interleave(8, 1).repeat_interleave(8, 2)  # (4, 64, 64), blocks of 8 x 8 pixels
    masks, classes = zip(*(mask_targets(m) for m in maps))
    assert len({len(c) for c in classes}) > 1  # frames of different target counts

    def loss_and_grads():
        model.zero_grad()
        torch.manual_seed(0)  # Mask2Former's matcher and loss sample points at random
        loss = model(x, list(masks), list(classes)).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    theirs, their_grads = loss_and_grads()
    matcher.install(model.model)
    ours, our_grads = loss_and_grads()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)
    assert len(our_grads) == len(their_grads) > 0
    for a, b in zip(our_grads, their_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def call_site():
    """file:line of the innermost caller in transformers or in this repository, other than this file."""
    for frame in reversed(traceback.extract_stack()):
        file = Path(frame.filename).resolve()
        if "transformers" in file.parts:
            return "/".join(file.parts[file.parts.index("transformers"):]) + f":{frame.lineno}"
        if file.is_relative_to(ROOT) and file != Path(__file__).resolve():
            return f"{file.relative_to(ROOT)}:{frame.lineno}"
    return "autograd (backward)"  # the backward pass runs in C++, called from no Python line of ours


class HostWaits(TorchDispatchMode):
    """Records every op that makes the host wait for the device, with its kind and call site, in .waits.

    The model and its inputs live on the meta device: a device other than the CPU, as a GPU is, so that every copy
    between the two is an op this mode sees, which it would not be on the CPU, where .cpu() does nothing. Meta
    tensors hold no values, so the mode answers what needs them with stand-ins (zeros for a copy to the CPU, 1 for
    .item()): scipy solves zero costs happily, and no count depends on the values. It counts, as the issue did:
        "to host": a copy from the device to the CPU (aten._to_copy, aten.copy_): the host waits for the device;
        "item": aten._local_scalar_dense, i.e. .item(), bool(t), float(t): the same, for one number;
        "nonzero": aten.nonzero: its output's size lives on the device;
    and, which the issue did not, "from host": a blocking copy from the CPU to the device, or an op reading a CPU
    tensor of indices with device tensors (aten.index, aten.index_put_), one per such tensor; PyTorch moves them
    with a blocking copy, which on CUDA synchronises the stream (cudaStreamSynchronize) before it returns.
    An op with a size that depends on values (nonzero inside boolean indexing, unique, ...) fails on meta: none
    can hide in a run that finishes. Limit: a tensor built from Python numbers straight on the device
    (torch.tensor(x, device=...)) shows no op at all, and is not counted.
    """

    def __init__(self):
        super().__init__()
        self.waits = []  # (kind, op, call site)

    def record(self, kind, func, times=1):
        self.waits += [(kind, str(func), call_site())] * times

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        on_host = [t.device.type == "cpu" for t in tensors]
        if func is aten._to_copy.default:
            to_host, from_host = (kwargs.get("device") or args[0].device).type == "cpu", on_host[0]
            if to_host and not from_host:
                self.record("to host", func)
                return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
            if from_host and not to_host and not kwargs.get("non_blocking"):
                self.record("from host", func)
        elif func is aten.copy_.default:
            if on_host[0] and not on_host[1]:
                self.record("to host", func)
                return args[0].zero_()
            if on_host[1] and not on_host[0] and not kwargs.get("non_blocking", args[2] if len(args) > 2 else False):
                self.record("from host", func)
        elif func is aten._local_scalar_dense.default and not on_host[0]:
            self.record("item", func)
            return torch.ones((), dtype=args[0].dtype).item()
        elif func is aten.nonzero.default and not on_host[0]:
            self.record("nonzero", func)
            return torch.zeros(0, args[0].dim(), dtype=torch.int64, device=args[0].device)
        elif not all(on_host) and any(on_host):  # device tensors with CPU ones: indices, copied over one by one
            self.record("from host", func, sum(h and t.dim() > 0 for h, t in zip(on_host, tensors)))
        return func(*args, **kwargs)


@pytest.fixture
def meta_autocast(monkeypatch):
    """torch.autocast refuses the meta device, and qshift.match_queries opens one (disabled, for float32
    similarities): on meta there is nothing to cast, so it may open nothing."""
    real = torch.autocast
    monkeypatch.setattr(torch, "autocast", lambda device_type, *args, **kwargs: contextlib.nullcontext()
                        if device_type == "meta" else real(device_type, *args, **kwargs))


def training_step_waits(model, T):
    """The host waits of one training step: forward with labels (HF's loss) and backward, on T frames of 1 to 3
    targets each, on the meta device."""
    model.train().to("meta")
    masks = [torch.zeros(1 + t % 3, 64, 64, device="meta") for t in range(T)]
    classes = [torch.zeros(1 + t % 3, dtype=torch.int64, device="meta") for t in range(T)]
    with HostWaits() as counter:
        model(torch.zeros(1, T, 3, 64, 64, device="meta"), masks, classes).loss.backward()
    return counter.waits


@pytest.mark.parametrize("family", FAMILIES)
def test_host_waits_per_step_do_not_grow_with_frames(family, meta_autocast):
    """HF's matcher waits once per frame (per decoder layer): the counter sees it, 4 more frames, more waits. Ours
    waits once per matcher call, and returns the indices on the device, so HF's loss copies none over: the same
    waits at 4 and 8 frames, at most 3 for MaskFormer (the wrapper's query matching and the matcher, once each)."""
    model = tiny_model(family)
    hf = {T: training_step_waits(model, T) for T in (4, 8)}
    assert len(hf[8]) > len(hf[4]), hf[8]  # the control: this counter can fail
    matcher.install(model.model)
    ours = {T: training_step_waits(model, T) for T in (4, 8)}
    assert sorted(ours[4]) == sorted(ours[8]), "\n".join(map(str, ours[8]))
    assert not any("index" in op for _, op, _ in ours[8]), ours[8]
    if family == "maskformer":
        assert len(ours[8]) <= 3, ours[8]
