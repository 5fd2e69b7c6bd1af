"""bench.py at tiny sizes: every figure is measured and reported; no timing thresholds (the machine is shared)."""
import json
import math

import pytest
import torch

import bench
import qshift

TINY = ["--frames", "2", "--size", "64", "--repeats", "2", "--mem-frames", "2", "6", "--mem-size", "64", "--clips",
        "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def report():
    """The report of a bench run with a tiny model, tiny clips and 2-frame data clips."""
    args = bench.settle_device(bench.parse_args(TINY + ["--threads", "1"]))
    config = qshift.tiny_config(5, embed_dim=32)  # backbone maps of 32..256 channels: 1/16 of each is even
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads crawl when other jobs share the two cores
    figures, models = bench.collect(args, config, qshift.tiny_config(5, embed_dim=32, family="mask2former"),
                                    clip_len=2, metric_repeats=2)
    torch.set_num_threads(threads)
    return bench.report(args, figures, models)


def test_every_figure_is_a_positive_finite_number(report):
    rep = json.loads(json.dumps(report))  # what --json prints
    assert set(rep["figures"]) == {key for key, _, _ in bench.rows(bench.parse_args(TINY))}
    for key, row in rep["figures"].items():
        assert math.isfinite(row["value"]) and row["value"] > 0, key
        assert (row["met"] is None) == (row["goal"] is None), key
    assert rep["machine"]["cores_used"] == 1 and rep["settings"]["mem_frames"] == [2, 6]


def test_every_model_gets_speeds_and_ratios_to_the_first(report):
    names = [model["name"] for model in report["models"]]
    assert names == ["frame by frame (shift 0)", *(name for name, _ in bench.SHIFTED),
                     "Mask2Former, frame by frame (shift 0)", "Mask2Former, shift 1/16 + matching"]
    base, shifted = report["models"][:2]
    assert report["models"][-1]["forward_ratio"] == report["figures"]["m2f_forward_ratio"]["value"]
    assert base["forward_ratio"] == base["train_step_ratio"] == 1.0 and base["match_pct"] is None
    for model in report["models"]:
        for key in ("forward", "train_step"):
            assert model[f"{key}_fps"] == pytest.approx(2 / (model[f"{key}_ms"] / 1e3))  # 2 frames a clip
            assert model[f"{key}_peak_mib"] is None  # the CPU keeps no count of its peak
            assert math.isfinite(model[f"{key}_ratio"]) and model[f"{key}_ratio"] > 0
    assert shifted["forward_ratio"] == report["figures"]["forward_ratio"]["value"]
    assert shifted["match_pct"] == pytest.approx(100 * report["figures"]["match_ms"]["value"] / shifted["forward_ms"])


def test_bf16_autocast_runs_on_the_cpu():  # matching computes its similarities in float32 under autocast
    models, _ = bench.model_cost(bench.variants(qshift.tiny_config(5), "cpu", bench.SHIFTED[:1]), 2, 32, 1, "cpu",
                                 amp=True)
    assert all(math.isfinite(m["train_step_ms"]) and m["train_step_ms"] > 0 for m in models)


def test_goals_are_judged_by_their_direction(report):
    figures = {key: row["value"] for key, row in report["figures"].items()}
    args = bench.parse_args(TINY)
    fast = bench.report(args, {**figures, "forward_ratio": 1.0, "data_clips_per_s": 11.0})["figures"]
    slow = bench.report(args, {**figures, "forward_ratio": 1.5, "data_clips_per_s": 9.0})["figures"]
    assert fast["forward_ratio"]["met"] and fast["data_clips_per_s"]["met"]
    assert not slow["forward_ratio"]["met"] and not slow["data_clips_per_s"]["met"]


def test_markdown_tables_have_a_row_per_figure_and_per_model(report):
    lines = bench.markdown(report).splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith(("| figure", "| model"))]
    assert len(rows) == len(report["figures"]) + len(report["models"])
    assert rows[-1].startswith("| Mask2Former, shift 1/16 + matching | ") and rows[-1].endswith(" | – | – |")
    assert any(line.startswith("machine: ") and "torch" in line for line in lines)
    assert "**no**" in bench.markdown(bench.report(bench.parse_args(TINY), {
        **{key: row["value"] for key, row in report["figures"].items()}, "metrics_ms": 3.0}))


def test_quick_fills_in_only_the_flags_not_given():
    args = bench.parse_args(["--quick", "--frames", "3"])
    assert args.frames == 3 and args.size == bench.QUICK["size"] and args.mem_frames == bench.QUICK["mem_frames"]
    assert bench.parse_args([]).size is None and bench.parse_args([]).device is None  # settled once torch is there
    cpu = bench.settle_device(bench.parse_args(["--device", "cpu"]))
    assert cpu.size == 256 and cpu.amp is False
    assert bench.settle_device(bench.parse_args(["--device", "cpu", "--amp"])).amp is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_defaults_are_the_papers_clip_in_bf16():
    args = bench.settle_device(bench.parse_args(["--device", "cuda"]))
    assert (args.frames, args.size, args.amp) == (16, 480, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_model_cost_and_memory_on_the_device_given():
    device = f"cuda:{torch.cuda.device_count() - 1}"  # with several GPUs, one that is not the current device
    config = qshift.tiny_config(5, embed_dim=32)
    models, _ = bench.model_cost(bench.variants(config, device), 2, 64, 2, device, amp=True)
    for model in models:
        assert 0 < model["forward_peak_mib"] < model["train_step_peak_mib"]  # training adds gradients, AdamW state
    memory = bench.memory(qshift.tiny_config(5), [2, 6], 64, device, amp=True)
    assert all(math.isfinite(value) and value > 0 for value in memory.values())


@pytest.mark.parametrize("argv", [["--device", "tpu"], ["--mem-frames", "8", "4"], ["--frames", "0"]])
def test_bad_flags_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        bench.parse_args(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
