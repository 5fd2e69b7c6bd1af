"""The branches a GPU takes, walked on the CPU (issue 27): mixed precision at every entry point that runs the model,
the loss's matching costs in fp16, and the uploads through pinned memory. CPU autocast computes in bf16 and fp16 as
CUDA's does; what only a GPU has (pinned memory, tensors on the device) is faked by a stand-in that behaves as CUDA
does where the code can tell (fake_cuda). The crossing, chosen so that the file stays cheap (about a minute, one core):

- streaming.stream_logits and predict_video against one whole-clip forward under the same autocast, in process, the
  full cross: MaskFormer and Mask2Former x bf16 and fp16 x the placements queries, pixels, backbone and all three x
  matching by queries and by masks (where the queries are shifted: elsewhere nothing is matched), and causal, reach
  2 and both on a few cells.
- train.py, in subprocesses (the dear part): run A, tiny MaskFormer, queries matched by masks: step 1 in bf16,
  resumed in fp16 (step 2), resumed without amp (step 3), each step validated; run B, tiny Mask2Former, 1/8 at the
  backbone, queries and pixels, matched by masks, causal, reach 2, in fp16, one step validated.
- evaluate.py --amp fp16 on A's checkpoint and --amp bf16 on B's; predict.py --amp fp16 on a folder of frames with
  A's and --amp bf16 on a video with B's (causal: online, one frame at a time). In process, through their main.
- bench.py: model_cost's inference and training step under --amp bf16 and fp16, one family each,
  matching by masks.
"""
import json
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.maskformer.modeling_maskformer import pair_wise_sigmoid_focal_loss

import bench
import data
import evaluate
import matcher
import metrics
import predict
import qshift
import streaming
from test_predict import decoded, saved_maps
from test_qshift import distinct_masks, tiny_model, video
from test_train import train
from tiny import tiny_config

FAMILIES = ["maskformer", "mask2former"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PLACEMENTS = [("queries",), ("pixels",), ("backbone",), ("backbone", "queries", "pixels")]
STEPS = ["backbone", "shift_backbone", "decode", "shift_decoded", "heads"]  # a QShiftSegmenter's, in order


def autocast_state():
    """CPU autocast now: its dtype, or None when it is off."""
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None


def record_steps(model):
    """Make each of model's steps (STEPS) record, when called, its name and the autocast it runs under, in the list
    returned (instance attributes: other models of the class are left alone)."""
    seen = []

    def recorded(name, step):
        def run(*args, **kwargs):
            seen.append((name, autocast_state()))
            return step(*args, **kwargs)
        return run

    for name in STEPS:
        setattr(model, name, recorded(name, getattr(model, name)))
    return seen


# -----------------------------------------------------------------------------
# 1. streaming under autocast, against the whole clip under the same autocast

CELLS = [(family, shift_at, match_by, False, 1) for family in FAMILIES for shift_at in PLACEMENTS
         for match_by in (["queries", "masks"] if "queries" in shift_at else ["queries"])] + \
    [(family, shift_at, "masks", causal, reach) for family in FAMILIES
     for shift_at, causal, reach in ((("queries",), True, 1), (PLACEMENTS[-1], False, 2), (PLACEMENTS[-1], True, 2))]


def cell_id(cell):
    family, shift_at, match_by, causal, reach = cell
    return "-".join([family, "+".join(shift_at), f"by-{match_by}"] + ["causal"] * causal +
                    [f"reach{reach}"] * (reach > 1))


@pytest.mark.parametrize("amp", DTYPES)
@pytest.mark.parametrize("family,shift_at,match_by,causal,reach", CELLS, ids=map(cell_id, CELLS))
def test_streaming_under_autocast_runs_every_step_in_it_and_equals_the_whole_clip(
        family, shift_at, match_by, causal, reach, amp):
    """Streamed in chunks of 4 (stream_logits) and of 1 (predict_video), 6 frames give the logits and the maps of
    one whole-clip forward under the same autocast; every step runs under it, and none of it reaches the caller.
    Batches of other sizes round some logits apart: within 4 units in the last place of the autocast's dtype, of the
    largest logit (seen: 0.4 of one, in fp16, where the backbone is shifted; else none). The control: the clip cut in
    two, each streamed alone (no frame sees across the cut), is over 10 times further off (0.4 or more)."""
    dtype = DTYPES[amp]
    model = tiny_model(4, causal=causal, family=family, shift_at=shift_at, match_by=match_by, reach=reach)
    distinct_masks(model)  # random models' masks are all alike: matching them would be ill-posed
    frames = video(6)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        whole = model(frames[None])
    steps = record_steps(model)
    streamed = []
    for logits in streaming.stream_logits(model, iter(frames), chunk=4, amp=dtype):
        assert autocast_state() is None  # autocast stays inside the stream
        streamed.append(logits)
    assert {name for name, _ in steps} == {"backbone", "decode", "heads"} | \
        ({"shift_backbone"} if "backbone" in shift_at else set()) | \
        ({"shift_decoded"} if {"queries", "pixels"} & set(shift_at) else set())
    assert {state for _, state in steps} == {dtype}, steps

    def off_by(stream):  # the largest difference from the whole clip's logits, in units of its largest logit
        class_logits, mask_logits = (torch.cat(x) for x in zip(*stream))
        assert class_logits.dtype == mask_logits.dtype == torch.float32
        pairs = ((class_logits, whole.class_queries_logits), (mask_logits, whole.masks_queries_logits))
        return max(((ours - theirs.float()).abs().max() / theirs.float().abs().max()).item() for ours, theirs in pairs)

    rounding = 4 * torch.finfo(dtype).eps
    assert off_by(streamed) <= rounding
    maps = torch.stack(list(streaming.predict_video(model, iter(frames), chunk=1, amp=dtype)))
    expected = qshift.semantic_segmentation(whole.class_queries_logits, whole.masks_queries_logits, (64, 96))
    assert torch.equal(maps, expected)
    cut = [logits for part in (frames[:3], frames[3:])
           for logits in streaming.stream_logits(model, iter(part), 4, dtype)]
    assert off_by(cut) > 10 * rounding


# -----------------------------------------------------------------------------
# 1. train.py, evaluate.py, predict.py and bench.py under each precision

RUN = ["--clip-len", "4", "--batch-size", "1", "--log-every", "1", "--warmup", "2", "--val-videos", "1",
       "--device", "cpu"]


def resume_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("--resume:")]


def log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """Run A: tiny MaskFormer, queries matched by masks, 3 steps each validated: step 1 in bf16, resumed in fp16
    for step 2, then without amp for step 3. Returns its folder and the three runs' results (subprocess's)."""
    out = tmp_path_factory.mktemp("a") / "run"
    runs = [train(*RUN, "--model", "tiny", "--shift-at", "queries", "--match-by", "masks", "--amp", "bf16",
                  "--max-steps", "3", "--eval-every", "1", "--stop-at", "1", out=out),
            train("--resume", "--amp", "fp16", "--stop-at", "2", out=out),
            train("--resume", "--amp", "off", out=out)]
    return out, runs


@pytest.fixture(scope="module")
def run_b(tmp_path_factory):
    """Run B: tiny Mask2Former, 1/8 shifted at the backbone, queries and pixels, queries matched by masks, causal,
    reach 2; one step in fp16, validated. Returns as run_a."""
    out = tmp_path_factory.mktemp("b") / "run"
    return out, [train(*RUN, "--model", "tiny-mask2former", "--shift", "8", "--shift-at", "backbone,queries,pixels",
                       "--match-by", "masks", "--causal", "--reach", "2", "--amp", "fp16", "--max-steps", "1", out=out)]


def test_train_validates_in_bf16_and_fp16_both_families_every_placement_matching_by_masks(run_a, run_b):
    (out_a, _), (out_b, _) = run_a, run_b
    assert [line["step"] for line in log(out_a) if "val" in line] == [1, 2, 3]  # bf16, fp16, fp32
    assert [line["step"] for line in log(out_b) if "val" in line] == [1]
    config = json.loads((out_b / "config.json").read_text())
    assert (config["precision"], config["shift_at"], config["match_by"], config["match"]) == \
        ("fp16", ["backbone", "queries", "pixels"], "masks", True)
    for line in log(out_a) + log(out_b):
        assert np.isfinite(line["loss"]) if "loss" in line else 0 <= line["val"]["pixel_acc"] <= 1


def test_a_run_resumed_in_another_precision_goes_on_and_says_so_in_one_line(run_a):
    """bf16 -> fp16: a fresh gradient scaler (the bf16 run saved none); fp16 -> off: the saved scaler is left."""
    out, (first, to_fp16, to_off) = run_a
    assert resume_lines(first) == []
    assert resume_lines(to_fp16) == ["--resume: the run was trained in bf16 and goes on in fp16 with a fresh gradient "
                                     "scaler"]
    assert resume_lines(to_off) == ["--resume: the run was trained in fp16 and goes on in fp32"]
    assert [line["step"] for line in log(out) if "loss" in line] == [1, 2, 3]
    assert json.loads((out / "config.json").read_text())["precision"] == "fp32"


@pytest.fixture
def heads_autocast(monkeypatch):
    """The autocast each call of any QShiftSegmenter's heads runs under, in the list returned."""
    seen, heads = [], qshift.QShiftSegmenter.heads

    def recorded(self, *args):
        seen.append(autocast_state())
        return heads(self, *args)

    monkeypatch.setattr(qshift.QShiftSegmenter, "heads", recorded)
    return seen


@pytest.mark.parametrize("run,amp", [("run_a", "fp16"), ("run_b", "bf16")])
def test_evaluate_runs_the_model_under_its_amp(run, amp, request, heads_autocast, capsys):
    out, _ = request.getfixturevalue(run)
    evaluate.main(evaluate.parse_args(["--checkpoint", str(out / "best"), "--max-videos", "1", "--amp", amp,
                                       "--device", "cpu"]))
    assert "wrote" in capsys.readouterr().out
    results = json.loads((out / "eval-synthetic-val-first1.json").read_text())["results"]
    assert results["num_videos"] == 1 and 0 <= results["miou"] <= 1
    assert len(heads_autocast) > 0 and set(heads_autocast) == {DTYPES[amp]}


@pytest.fixture(scope="module")
def frames():
    """(6, 64, 96, 3) uint8 frames of a synthetic video."""
    world = data.build_dataset("synthetic", split="val", clip_len=None, train=False, num_videos=1, num_frames=6)
    return world.images[0]


def expected_maps(checkpoint, frames, amp):
    """streaming.predict_video's maps of uint8 frames (n, H, W, 3) under autocast amp, as one clip: (n, H, W)."""
    model = qshift.QShiftSegmenter.from_pretrained(checkpoint).eval()
    return torch.stack(list(streaming.predict_video(model, qshift.frames_to_pixel_values(frames), amp=amp))).numpy()


def test_predict_runs_the_model_under_its_amp_on_a_folder_and_a_video(run_a, run_b, frames, tmp_path, capsys,
                                                                      heads_autocast):
    """A's checkpoint in fp16 on a folder of PNG frames; B's (causal: online, one frame at a time) in bf16 on a video:
    the maps are predict_video's under the same autocast, on the frames as the input holds them."""
    folder = tmp_path / "clip"
    folder.mkdir()
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{t}.png")
    movie = tmp_path / "movie.mp4"
    writer = predict.VideoWriter(movie, 10)
    for frame in frames:
        writer.write(frame)
    writer.close()
    for input_, checkpoint, amp, pictures in ((folder, run_a[0] / "best", "fp16", frames),
                                              (movie, run_b[0] / "best", "bf16", decoded(movie))):
        heads_autocast.clear()
        predict.main(predict.parse_args([str(input_), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"),
                                         "--amp", amp, "--device", "cpu"]))
        assert len(heads_autocast) > 0 and set(heads_autocast) == {DTYPES[amp]}
        names = [f"{t}" if input_ == folder else f"{t:05d}" for t in range(len(frames))]  # a video's: 00000, ...
        maps = saved_maps(tmp_path / "out" / input_.stem, names)
        assert np.array_equal(maps, expected_maps(checkpoint, pictures, DTYPES[amp]))
    assert capsys.readouterr().out.count(" 6 frames in ") == 2


@pytest.mark.parametrize("family,amp", [("maskformer", "bf16"), ("mask2former", "fp16")])
def test_bench_times_inference_and_training_under_its_amp(family, amp, heads_autocast):
    """bench.py --amp bf16 and fp16 (with its loss scaled), the queries matched by masks: inference, and a training
    step with HF's loss."""
    by_masks = [case for case in bench.SHIFTED if isinstance(case[1], dict) and case[1].get("match_by") == "masks"]
    models, match_ms = bench.model_cost(bench.variants(tiny_config(5, family=family), "cpu", by_masks), 2, 32, "cpu",
                                        amp=DTYPES[amp], budget=0, min_blocks=1)
    assert [m["name"] for m in models] == [bench.BASE] + [name for name, _, _ in by_masks]
    assert all(np.isfinite(m[f"{key}_ms"]) and m[f"{key}_ms"] > 0 for m in models for key in ("forward", "train_step"))
    assert set(heads_autocast) == {DTYPES[amp]}


def test_bench_amp_alone_is_auto_and_its_default_is_off_on_the_cpu():
    assert bench.parse_args(["--amp"]).amp == "auto" and bench.parse_args([]).amp is None
    assert bench.settle_device(bench.parse_args(["--device", "cpu"])).amp == "off"
    assert bench.settle_device(bench.parse_args(["--device", "cpu", "--amp"])).amp == "bf16"  # the CPU has bf16


# -----------------------------------------------------------------------------
# 2. the loss's matching costs in fp16


def overflowing_case():
    """The audit's case: 3 queries, 3 targets on 128x256. Target k is a band of 85 columns; query q predicts target
    (q + 1) % 3's band 40 columns to the right (wrapping round), with confident logits, +-30: float32's assignment is
    [1, 2, 0]. In fp16 every focal cost is over 65504. Returns mask logits (1, 3, 128, 256), class logits (1, 3, 6)
    (5 classes and the null one, all alike), target masks [(3, 128, 256)] and classes [(3,)]."""
    columns = torch.arange(256)
    targets = torch.stack([((columns >= 85 * k) & (columns < 85 * (k + 1))).float().expand(128, 256)
                           for k in range(3)])
    mask_logits = torch.stack([torch.where(targets[(q + 1) % 3].roll(40, -1) > 0, 30.0, -30.0) for q in range(3)])
    return mask_logits[None], torch.zeros(1, 3, 6), [targets], [torch.tensor([0, 1, 2])]


def test_fp16_autocast_keeps_float32s_assignment_where_hfs_matcher_overflows():
    hf = tiny_model(0, family="maskformer").model.criterion.matcher  # HF's own, with MaskFormer's cost weights
    ours = matcher.install(tiny_model(0, family="maskformer").model).criterion.matcher
    mask_logits, class_logits, masks, classes = overflowing_case()
    cols = [m(mask_logits, class_logits, masks, classes)[0][1].tolist() for m in (hf, ours)]
    assert cols == [[1, 2, 0], [1, 2, 0]]  # float32
    for amp, logits in ((torch.float16, mask_logits), (torch.float16, mask_logits.half()),  # as the heads give them
                        (torch.bfloat16, mask_logits)):
        with torch.autocast("cpu", dtype=amp):
            assert ours(logits, class_logits, masks, classes)[0][1].tolist() == [1, 2, 0], (amp, logits.dtype)
            if amp == torch.float16:  # the control: HF's costs overflow to inf, all alike, and the assignment changes
                assert pair_wise_sigmoid_focal_loss(logits[0].flatten(1), masks[0].flatten(1)).isinf().all()
                assert hf(logits, class_logits, masks, classes)[0][1].tolist() == [0, 1, 2]


# -----------------------------------------------------------------------------
# 3. uploads through pinned memory, with CUDA faked


class OnGPU(torch.Tensor):
    """A tensor that says it is on the GPU (its values stay on the CPU, where they are computed): all that
    qshift.to_device and its callers read of a CUDA tensor."""

    @property
    def device(self):
        return torch.device("cuda")

    @property
    def is_cuda(self):
        return True


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.Tensor.pin_memory and .to as CUDA has them, recorded in the list returned: ("pin", the tensor's device
    type, the thread, its shape) for each pin_memory, ("to", from device type, to device type, pinned, non_blocking,
    shape) for each .to a device. Pinning raises as CUDA does for a tensor not on the CPU, and gives a copy marked
    pinned (the same tensor if it is pinned already); a copy to cuda gives an OnGPU tensor (a sparse one stays as it
    is)."""
    calls, to = [], torch.Tensor.to

    def pin_memory(self):
        calls.append(("pin", self.device.type, threading.current_thread().name, tuple(self.shape)))
        if self.device.type != "cpu" or self.layout != torch.strided:
            raise RuntimeError(f"cannot pin '{self.device.type} {self.layout}' only dense CPU tensors can be pinned")
        if getattr(self, "pinned", False):
            return self
        pinned = self.clone()
        pinned.pinned = True
        return pinned

    def to_device(self, *args, **kwargs):
        target = kwargs.get("device", args[0] if args and isinstance(args[0], (str, torch.device)) else None)
        if target is None:  # a dtype only
            return to(self, *args, **kwargs)
        target = torch.device(target)
        calls.append(("to", self.device.type, target.type, getattr(self, "pinned", False),
                      kwargs.get("non_blocking", False), tuple(self.shape)))
        if target.type == "cuda":
            return self if isinstance(self, OnGPU) or self.is_sparse else self.as_subclass(OnGPU)
        return to(self.as_subclass(torch.Tensor) if isinstance(self, OnGPU) else self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to_device)
    return calls


def test_to_device_pins_a_cpu_tensor_bound_for_cuda_and_copies_it_without_waiting(fake_cuda):
    x = torch.arange(6.0)
    for device in ("cuda", torch.device("cuda:1")):
        fake_cuda.clear()
        y = qshift.to_device(x, device)
        assert y.device.type == "cuda" and torch.equal(y.as_subclass(torch.Tensor), x)
        assert fake_cuda == [("pin", "cpu", threading.current_thread().name, (6,)),
                             ("to", "cpu", "cuda", True, True, (6,))]


def test_to_device_moves_a_tensor_on_the_gpu_or_a_sparse_one_unpinned_and_to_the_cpu_blocking(fake_cuda):
    on_gpu = torch.arange(6.0).as_subclass(OnGPU)
    assert qshift.to_device(on_gpu, "cuda") is on_gpu
    assert fake_cuda == [("to", "cuda", "cuda", False, True, (6,))]  # pinning it would raise, as on CUDA
    fake_cuda.clear()
    qshift.to_device(torch.eye(3).to_sparse(), "cuda")
    assert fake_cuda == [("to", "cpu", "cuda", False, True, (3, 3))]  # only dense tensors can be pinned
    fake_cuda.clear()
    x = torch.arange(6.0)
    assert qshift.to_device(x, "cpu") is x
    qshift.to_device(on_gpu, "cpu")
    assert fake_cuda == [("to", "cpu", "cpu", False, False, (6,)), ("to", "cuda", "cpu", False, False, (6,))]


class ModelOnGPU:
    """A QShiftSegmenter as streaming sees it on a GPU: its parameters and its decoded queries and pixel embeddings
    say cuda (so matching's permutations are uploaded, and the heads run on "GPU" tensors); the backbone and the
    decoders, whose Hugging Face code makes tensors on its inputs' device, run on plain CPU tensors."""

    def __init__(self, model):
        self.model = model

    def parameters(self):
        yield torch.zeros(0).as_subclass(OnGPU)

    def backbone(self, pixel_values):
        return self.model.backbone(pixel_values.as_subclass(torch.Tensor))

    def decode(self, features):
        queries, pixel_embeddings, earlier = self.model.decode(features)
        return queries.as_subclass(OnGPU), pixel_embeddings.as_subclass(OnGPU), earlier

    def to(self, device):
        return self

    def eval(self):
        self.model.eval()
        return self

    def __getattr__(self, name):  # settings, training, train, heads, shift_backbone, shift_decoded
        return getattr(self.model, name)


def uploads_are_pinned_and_asynchronous(calls):
    """Every .to cuda in calls copies a pinned tensor, or a tensor on the GPU, without waiting; nothing but a CPU
    tensor is pinned. Returns how many were copied from the CPU."""
    assert all(device == "cpu" for kind, device, *_ in calls if kind == "pin"), calls
    uploads = [call for call in calls if call[0] == "to" and call[2] == "cuda"]
    assert all((pinned or source == "cuda") and non_blocking for _, source, _, pinned, non_blocking, _ in uploads), \
        calls
    return sum(source == "cpu" for _, source, *_ in uploads)


@pytest.mark.parametrize("frames_on", ["cpu", "cuda"])
def test_streaming_on_a_gpu_pins_only_cpu_tensors(frames_on, fake_cuda):
    """Frames from the CPU are pinned and uploaded, one upload per chunk; frames already on the GPU are not pinned
    (pinning one raised on CUDA). Matching's permutations are uploaded pinned. The maps are the CPU's."""
    model = tiny_model(4, shift_at=("backbone", "queries", "pixels"), match_by="masks")
    frames = video(5)
    expected = torch.stack(list(streaming.predict_video(model, iter(frames), chunk=2)))
    fake_cuda.clear()
    pictures = iter(frames if frames_on == "cpu" else frames.as_subclass(OnGPU))
    maps = torch.stack(list(streaming.predict_video(ModelOnGPU(model), pictures, chunk=2)))
    assert torch.equal(maps.as_subclass(torch.Tensor), expected)
    main, chunks = threading.current_thread().name, [(2, 3, 64, 96), (2, 3, 64, 96), (1, 3, 64, 96)]
    assert [call for call in fake_cuda if call[-1] in chunks] == [call for shape in chunks for call in (
        [("pin", "cpu", main, shape), ("to", "cpu", "cuda", True, True, shape)] if frames_on == "cpu" else
        [("to", "cuda", "cuda", False, True, shape)])]
    uploads_are_pinned_and_asynchronous(fake_cuda)
    assert any(call[0] == "to" and call[-1][-1] == 20 for call in fake_cuda)  # (1, frames, Q): a permutation


def test_evaluation_on_a_gpu_pins_only_cpu_tensors_labels_in_the_reader_thread(fake_cuda, monkeypatch):
    """evaluate(device="cuda"): its reader thread pins the labels, streaming the frames, matching its permutations,
    all of them CPU tensors; every upload is from pinned memory. The scores are the CPU run's (the metrics stay on
    the CPU here: their own CUDA path is tests/test_evaluate.py's, on a GPU)."""
    class ScoresOnCPU(metrics.Scores):
        def __init__(self, *args):
            super().__init__(*args[:-1], "cpu")

        def update(self, pred, *args):
            super().update(pred.as_subclass(torch.Tensor), *args)

    dataset = data.build_dataset("synthetic", split="val", clip_len=None, train=False, num_videos=1, num_frames=6)
    model = tiny_model(4, num_labels=dataset.num_classes, shift_at=("queries",), match_by="masks")
    expected = evaluate.evaluate(model, dataset, "cpu", progress=False, chunk=4)
    monkeypatch.setattr(evaluate, "Scores", ScoresOnCPU)
    fake_cuda.clear()
    results = evaluate.evaluate(ModelOnGPU(model), dataset, torch.device("cuda"), progress=False, chunk=4)
    assert json.dumps(metrics.json_safe(results)) == json.dumps(metrics.json_safe(expected))
    main = threading.current_thread().name
    pinned_by = [call[2] for call in fake_cuda if call[0] == "pin"]
    assert pinned_by.count(main) > 0 and len(pinned_by) - pinned_by.count(main) == 2 * 6  # labels, cue distances
    assert uploads_are_pinned_and_asynchronous(fake_cuda) > 0
