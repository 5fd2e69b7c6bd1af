"""train.py end to end on the synthetic set: learning, exact resume, DDP with gloo, and every bad-input error."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import qshift
from tiny import build_model, tiny_config

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--clip-len", "4", "--batch-size", "1", "--log-every", "1", "--warmup", "2", "--val-videos", "2"]


def train(*flags, out, check=True):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--out", str(out), *flags],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def losses(out):
    lines = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


def test_a_short_run_learns_and_writes_loadable_checkpoints(tmp_path):
    out = tmp_path / "run"
    result = train(*SMALL, "--max-steps", "40", "--shift", "16", "--lr", "1e-3", out=out)
    log = losses(out)
    assert sorted(log) == list(range(1, 41))
    first, last = sum(log[s] for s in range(1, 9)) / 8, sum(log[s] for s in range(33, 41)) / 8
    assert last < 0.8 * first, (first, last)
    assert "validation mIoU" in result.stderr + result.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["data"] == "synthetic" and config["shift_div"] == 16 and config["match"] is True
    printed = json.loads(result.stdout[:result.stdout.index("\n}\n") + 2])  # only the settings that act
    assert printed["max_steps"] == 40 and printed["device"] == "cpu" and printed["match_by"] == "queries"
    assert not {"epochs", "min_frames", "root", "amp", "backend"} & set(printed), printed
    assert {"epochs", "min_frames", "root", "amp"} <= set(config)  # config.json keeps them all, for --resume
    assert "Writing model shards" not in result.stderr  # transformers' bars stay out of ours

    for name in ("last", "best"):
        model = qshift.QShiftSegmenter.from_pretrained(out / name)
        assert model.settings == qshift.Settings(shift_div=16, match=True)
    # hub.py's image processor gives the pixel_values that training read (no resizing: the frame as it is)
    import data
    import hub
    from transformers import AutoImageProcessor
    hub.save_image_processor(model, out / "best")
    frames = data.build_dataset("synthetic", split="val", clip_len=None, train=False, num_videos=1)
    pixel_values = AutoImageProcessor.from_pretrained(out / "best")(frames.images[0, 5], return_tensors="pt")
    torch.testing.assert_close(pixel_values["pixel_values"][0], frames.frame(0, 5)["pixel_values"], atol=1e-5, rtol=0)
    state = torch.load(out / "last" / "train_state.pt", weights_only=False)
    assert state["step"] == 40
    assert not list(out.glob(".tmp-*")), "a temporary checkpoint was left behind"
    # weight decay on the 2-d weights of linear and conv layers only: the learned queries and Swin's relative position
    # bias tables are exempt (norms and biases are 1-d), the mask embedder's Linear weights are not
    decayed, exempt = state["optimizer"]["param_groups"]
    weights = [n for n, p in model.named_parameters() if p.dim() >= 2]
    embeddings = [n for n in weights if "queries_embedder" in n or "relative_position_bias_table" in n]
    assert any("mask_embedder" in n for n in weights) and len(embeddings) > 1
    assert (decayed["weight_decay"], exempt["weight_decay"]) == (0.05, 0.0)
    assert len(decayed["params"]) == len(weights) - len(embeddings)


def test_resume_continues_exactly_as_an_uninterrupted_run(tmp_path):
    """In fp16 with its gradient scaler (autocast and GradScaler run on the CPU too), whose state is saved with the
    optimizer's and the random generators': a resumed run matches an uninterrupted one bit for bit."""
    flags = [*SMALL, "--max-steps", "6", "--shift", "8", "--amp", "fp16", "--device", "cpu"]
    train(*flags, out=tmp_path / "whole")
    train(*flags, "--stop-at", "3", out=tmp_path / "split")
    assert max(losses(tmp_path / "split")) == 3
    assert sorted(p.name for p in (tmp_path / "split").glob("step-*")) == ["step-0000003"]
    train("--resume", out=tmp_path / "split")
    whole, split = losses(tmp_path / "whole"), losses(tmp_path / "split")
    assert sorted(split) == list(range(1, 7))
    assert [split[s] for s in range(1, 7)] == [whole[s] for s in range(1, 7)]  # bit for bit
    # last and best are now step 6: the checkpoint of step 3 is pruned, and no temporary folder is left
    assert sorted(p.name for p in (tmp_path / "split").glob("*step-*")) == ["step-0000006"]
    assert os.readlink(tmp_path / "split" / "last") == os.readlink(tmp_path / "split" / "best") == "step-0000006"
    assert json.loads((tmp_path / "split" / "config.json").read_text())["precision"] == "fp16"
    state = torch.load(tmp_path / "whole" / "last" / "train_state.pt", weights_only=False)
    assert state["scaler"]["scale"] > 1  # the loss was scaled: fp16's small gradients kept


def torchrun(processes, *flags, out):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                             str(processes), str(ROOT / "train.py"), "--out", str(out), *flags],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_ddp_with_two_gloo_processes_validates_saves_every_rank_rng_and_resumes(tmp_path):
    # DDP runs with static_graph, without find_unused_parameters: Swin's final layernorm, which the loss never reaches,
    # would otherwise fail step 2
    out = tmp_path / "ddp"
    result = torchrun(2, *SMALL, "--max-steps", "3", "--eval-every", "2", "--stop-at", "2", "--device", "cpu", out=out)
    printed = json.loads(result.stdout[:result.stdout.index("\n}\n") + 2])  # the resolved configuration
    assert printed["backend"] == "gloo" and printed["world_size"] == 2
    assert json.loads((out / "config.json").read_text())["data"] == "synthetic"
    rng = torch.load(out / "last" / "train_state.pt", weights_only=False)["rng"]
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])  # each rank its own draws

    torchrun(2, "--resume", out=out)
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log if "loss" in line] == [1, 2, 3]  # only rank 0 writes
    assert [line["step"] for line in log if "val" in line] == [2, 3]
    assert torch.load(out / "last" / "train_state.pt", weights_only=False)["step"] == 3

    expect_error(train("--resume", out=out, check=False), "--resume", "2 process(es)", "this one has 1")


def test_a_diverging_run_stops_before_saving_spoiled_weights(tmp_path):
    out = tmp_path / "diverged"
    result = train(*SMALL, "--max-steps", "4", "--lr", "1e3", "--warmup", "0", out=out, check=False)
    assert result.returncode == 1
    error = result.stderr[result.stderr.index("error: "):].splitlines()[0]  # after the progress bar's \r
    assert error.endswith("; stopping (OUT/last holds the last good checkpoint)") and "not finite" in error, error
    assert not (out / "last").exists() and not list(out.glob("step-*"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_training_step_with_amp(tmp_path):
    train(*SMALL, "--max-steps", "2", "--device", "cuda", "--amp", out=tmp_path / "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_torchrun_one_process_with_nccl_validates_and_resumes(tmp_path):
    out = tmp_path / "nccl"
    result = torchrun(1, *SMALL, "--max-steps", "3", "--eval-every", "2", "--stop-at", "2", "--amp", out=out)
    assert '"backend": "nccl"' in result.stdout
    torchrun(1, "--resume", out=out)
    assert sorted(losses(out)) == [1, 2, 3]
    assert torch.load(out / "last" / "train_state.pt", weights_only=False)["rng"][0]["cuda"] is not None


def test_a_hub_id_in_the_cache_loads_without_asking_the_network(tmp_path):
    """A model downloaded once loads at once on a machine offline, without HF_HUB_OFFLINE=1 (HF would first retry
    for half a minute): the network here is a closed port, and any request to it shows in stderr."""
    snapshot = tmp_path / "hf" / "hub" / "models--org--tiny" / "snapshots" / "0123abcd"
    build_model(tiny_config(4, hidden_size=256), shift_div=0).model.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *SMALL, "--model", "org/tiny", "--max-steps", "1",
                             "--out", str(tmp_path / "run")], capture_output=True, text=True, env=env, cwd=ROOT,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    asked = ("Could not reach the Hub", "Retry", "127.0.0.1")  # HF's words when it tried
    assert not any(words in result.stderr for words in asked), result.stderr[-3000:]
    assert "Loading weights" not in result.stderr  # transformers' bar, silenced


def test_the_hub_error_suggests_hf_hub_offline_unless_it_is_set(monkeypatch, capsys):
    import cli

    def no_network(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    monkeypatch.setattr(qshift.AutoConfig, "from_pretrained", no_network)
    for offline, hint in ((False, True), (True, False)):
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", offline)
        with pytest.raises(SystemExit):
            cli.load_model("--model", "org/missing")
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--model org/missing: not in the Hugging Face cache" in err, err
        assert ("HF_HUB_OFFLINE=1 answers at once" in err) == hint, err


def expect_error(result, *words):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_bad_input_gets_one_line_and_exit_status_2(tmp_path):
    expect_error(train("--data", "imagenet", out=tmp_path / "a", check=False), "--data", "imagenet")
    expect_error(train("--data", "vspw", "--root", str(tmp_path / "nowhere"), out=tmp_path / "b", check=False),
                 "nowhere")
    expect_error(train("--shift", "3", out=tmp_path / "c", check=False), "shift_div 3 (--shift)")
    expect_error(train("--resume", out=tmp_path / "d", check=False), "--resume")

    corrupt = tmp_path / "corrupt"
    (corrupt / "step-0000001").mkdir(parents=True)
    (corrupt / "config.json").write_text(json.dumps({"data": "synthetic"}))
    (corrupt / "step-0000001" / "train_state.pt").write_bytes(b"not a checkpoint")
    (corrupt / "last").symlink_to("step-0000001")
    expect_error(train("--resume", out=corrupt, check=False), "corrupt")

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "config.json").write_text("{}")
    (tmp_path / "taken" / "notes.txt").write_text("keep me")
    expect_error(train(out=tmp_path / "taken", check=False), "--resume", "--overwrite")
    assert (tmp_path / "taken" / "notes.txt").read_text() == "keep me"
    expect_error(train("--shift", "3", out=tmp_path / "taken", check=False), "(--shift)")  # the real error first
    expect_error(train("--overwrite", "--shift", "3", out=tmp_path / "taken", check=False), "(--shift)")
    assert (tmp_path / "taken" / "notes.txt").exists()  # --overwrite removes the old run only once all has loaded
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "thesis.tex").write_text("keep me")
    expect_error(train("--overwrite", out=tmp_path / "other", check=False), "not a qshift run")
    assert (tmp_path / "other" / "thesis.tex").exists()


def test_world_and_reach_are_recorded_and_read_back(tmp_path):
    out = tmp_path / "run"
    train(*SMALL, "--max-steps", "2", "--world", "hide_run=3,speed=2", "--shift", "4", "--shift-at", "pixels",
          "--reach", "3", out=out)
    config = json.loads((out / "config.json").read_text())
    assert config["world"] == {"hide_run": 3, "speed": 2.0} and config["reach"] == 3
    val = [json.loads(line)["val"] for line in (out / "log.jsonl").read_text().splitlines() if "val" in line]
    assert val[0]["hidden_d2_acc"] is not None  # validated in the world of runs of 3
    assert qshift.QShiftSegmenter.from_pretrained(out / "last").settings.reach == 3
    expect_error(train("--reach", "5", "--shift", "4", "--shift-at", "pixels", out=tmp_path / "b", check=False),
                 "reach 5 (--reach): 1/4 of the 32 pixel-embedding channels shifts 4 each way")
    expect_error(train("--world", "hide_run=30", out=tmp_path / "b", check=False), "--world: hide_run 30")
    expect_error(train("--world", "run=3", out=tmp_path / "b", check=False), "unknown knob 'run'")
    assert not (tmp_path / "b").exists()


def test_flags_are_never_abbreviated_and_presets_are_in_help(tmp_path):
    expect_error(train("--max-step", "5", out=tmp_path / "a", check=False), "unrecognized arguments: --max-step")
    expect_error(train("--clip-len", "0", out=tmp_path / "a", check=False), "--clip-len 0: must be at least 1")
    expect_error(train("--resume", "--overwrite", out=tmp_path / "a", check=False), "choose one")
    help_text = train("--help", out=tmp_path / "a").stdout
    assert "vspw            --model facebook/maskformer-swin-tiny-ade --clip-len 16" in help_text
    assert not (tmp_path / "a").exists()


def before_torch(script, *flags):
    """Run script with flags until it exits: (its exit status, whether torch or transformers had loaded, stderr)."""
    code = ("import runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules or 'transformers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, str(ROOT / script), *flags], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    status, loaded = result.stdout.splitlines()[-1].split()
    return int(status), loaded == "True", result.stderr


@pytest.mark.parametrize("script,flags,status", [  # train.py's --help lists qshift.Settings' flags: it loads torch
    ("train.py", ["--data", "vspw"], 2), ("train.py", ["--clip-len", "0"], 2),
    ("evaluate.py", ["--help"], 0), ("evaluate.py", ["--checkpoint", "nowhere"], 2),
    ("bench.py", ["--help"], 0), ("bench.py", ["--device", "tpu"], 2),
    ("predict.py", ["--help"], 0), ("predict.py", ["nowhere.mp4", "--checkpoint", "nowhere"], 2)])
def test_help_and_flag_errors_answer_before_torch_loads(script, flags, status):
    assert before_torch(script, *flags)[:2] == (status, False)


def test_a_gpu_chosen_by_index_under_torchrun_is_refused_in_one_line_before_torch_loads(monkeypatch):
    """torchrun gives process LOCAL_RANK its GPU: --device cuda:1 would be silently ignored, so it is refused."""
    monkeypatch.setenv("RANK", "0")
    status, loaded, err = before_torch("train.py", "--device", "cuda:1", "--out", "nowhere")
    assert (status, loaded) == (2, False) and err.count("\n") == 1
    assert err.startswith("error: --device cuda:1: under torchrun use cuda (or cpu); CUDA_VISIBLE_DEVICES picks")


def test_the_settings_flags_are_checked_by_qshift_before_anything_is_built(tmp_path):
    """Every bad value is qshift.Settings' to refuse (tests/test_qshift.py has them all); train.py passes the one
    line on. The names of all placements are accepted."""
    for flags, words in [
            (["--shift-at", "pixel"], "shift_at pixel (--shift-at): choose one or more of backbone, queries, pixels"),
            (["--shift-at", ",".join(qshift.PLACEMENTS), "--data", "vspw"], "--data vspw needs --root")]:
        expect_error(train(*flags, out=tmp_path / "run", check=False), words)
    assert not (tmp_path / "run").exists()


def make_clips(root, labels=True, classes=("ground", "thing")):
    """Own videos a, b, c of 4 frames of 32x48, a square of class 1 moving on class 0; b and c kept for val.txt."""
    for v, video in enumerate("abc"):
        for t in range(4):
            label = np.zeros((32, 48), np.uint8)
            label[8:20, 4 + 6 * t + v:16 + 6 * t + v] = 1
            image = np.where(label[..., None] == 1, [200, 40, 40], [30, 90, 30]).astype(np.uint8)
            (root / video / "frames").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / video / "frames" / f"{t}.png")
            if labels:
                (root / video / "labels").mkdir(exist_ok=True)
                Image.fromarray(label).save(root / video / "labels" / f"{t}.png")
    if classes:
        (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


CLIPS = ["--data", "clips", "--model", "tiny", "--clip-len", "2", "--crop", "32", "32", "--warmup", "1"]


def test_own_clips_train_on_train_and_validate_on_val_txt(tmp_path):
    root = make_clips(tmp_path / "videos")
    (root / "val.txt").write_text("c\n")
    out = tmp_path / "run"
    result = train(*CLIPS, "--root", str(root), "--max-steps", "2", "--workers", "64", out=out)
    config = json.loads((out / "config.json").read_text())
    assert config["workers"] <= len(os.sched_getaffinity(0))  # capped quietly
    assert "worker" not in result.stderr  # torch's warning about too many workers
    val = [json.loads(line)["val"] for line in (out / "log.jsonl").read_text().splitlines() if "val" in line]
    assert len(val) == 1 and val[0]["num_videos"] == 1 and val[0]["num_frames"] == 4  # video c only
    assert '"train_clips": 4' in result.stdout  # videos a and b, 2 clips of 2 frames each


def test_own_small_clips_train_on_a_crop_capped_at_the_largest_scaled_frame(tmp_path):
    root = make_clips(tmp_path / "videos")  # 32x48 frames; the clips preset crops 480x480
    out = tmp_path / "run"
    result = train("--data", "clips", "--model", "tiny", "--clip-len", "2", "--warmup", "1", "--root", str(root),
                   "--max-steps", "1", out=out)
    assert "crop 480x480 capped at 64x96" in result.stderr  # 2x, the largest training scale: the rest is padding
    assert json.loads((out / "config.json").read_text())["crop"] == [64, 96]
    assert '"crop": [\n    64,\n    96\n  ]' in result.stdout


def test_bad_own_clips_stop_before_step_0_and_leave_out_as_it_was(tmp_path):
    kept = tmp_path / "kept"  # an old run, to be replaced only if the new one starts
    kept.mkdir()
    (kept / "config.json").write_text("{}")
    unlabelled = make_clips(tmp_path / "unlabelled", labels=False, classes=None)
    expect_error(train(*CLIPS, "--root", str(unlabelled), "--overwrite", out=kept, check=False), "no labels")
    no_classes = make_clips(tmp_path / "no-classes", classes=None)
    expect_error(train(*CLIPS, "--root", str(no_classes), "--overwrite", out=kept, check=False), "classes.txt")
    one_class = make_clips(tmp_path / "one-class", classes=["ground"])  # label 1 has no class
    expect_error(train(*CLIPS, "--root", str(one_class), "--overwrite", out=kept, check=False),
                 "label values [1] out of range")
    (one_class / "val.txt").write_text("ghost\n")
    expect_error(train(*CLIPS, "--root", str(one_class), out=tmp_path / "new", check=False), "ghost")
    expect_error(train(*CLIPS, out=tmp_path / "new", check=False), "--data clips needs --root")
    expect_error(train(*CLIPS, "--root", str(one_class / "a"), out=tmp_path / "new", check=False),
                 f"{one_class / 'a'} looks like one video's folder", f"the video folders, here {one_class}")
    assert sorted(p.name for p in kept.iterdir()) == ["config.json"] and not (tmp_path / "new").exists()


def test_amp_takes_bf16_where_the_gpu_computes_it_and_fp16_elsewhere(monkeypatch):
    import cli
    cuda = torch.device("cuda")  # no GPU needed: only the capability check is asked, and it is patched
    for native, dtype in ((True, torch.bfloat16), (False, torch.float16)):  # e.g. an A100, and a V100 or a T4
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
        assert cli.amp_dtype("auto", cuda) is dtype
    assert cli.amp_dtype("auto", torch.device("cpu")) is torch.bfloat16
    assert [cli.amp_dtype(a, cuda) for a in ("off", "bf16", "fp16")] == [None, torch.bfloat16, torch.float16]
