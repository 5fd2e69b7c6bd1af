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
    args = bench.parse_args(TINY + ["--threads", "1"])
    config = qshift.tiny_config(5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads crawl when other jobs share the two cores
    figures = {**bench.model_cost(config, args.frames, args.size, args.repeats, args.device),
               **bench.memory(config, args.mem_frames, args.mem_size, args.device),
               **bench.data_speed(args.clips, clip_len=2), **bench.metrics_speed(repeats=2)}
    torch.set_num_threads(threads)
    return bench.report(args, figures)


def test_every_figure_is_a_positive_finite_number(report):
    rep = json.loads(json.dumps(report))  # what --json prints
    assert set(rep["figures"]) == {key for key, _, _ in bench.rows(bench.parse_args(TINY))}
    for key, row in rep["figures"].items():
        assert math.isfinite(row["value"]) and row["value"] > 0, key
        assert (row["met"] is None) == (row["goal"] is None), key
    assert rep["machine"]["cores_used"] == 1 and rep["settings"]["mem_frames"] == [2, 6]


def test_goals_are_judged_by_their_direction(report):
    figures = {key: row["value"] for key, row in report["figures"].items()}
    args = bench.parse_args(TINY)
    fast = bench.report(args, {**figures, "forward_ratio": 1.0, "data_clips_per_s": 11.0})["figures"]
    slow = bench.report(args, {**figures, "forward_ratio": 1.5, "data_clips_per_s": 9.0})["figures"]
    assert fast["forward_ratio"]["met"] and fast["data_clips_per_s"]["met"]
    assert not slow["forward_ratio"]["met"] and not slow["data_clips_per_s"]["met"]


def test_markdown_table_has_a_row_per_figure(report):
    lines = bench.markdown(report).splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith("| figure")]
    assert len(rows) == len(report["figures"])
    assert any(line.startswith("machine: ") and "torch" in line for line in lines)
    assert "**no**" in bench.markdown(bench.report(bench.parse_args(TINY), {
        **{key: row["value"] for key, row in report["figures"].items()}, "metrics_ms": 3.0}))


def test_quick_fills_in_only_the_flags_not_given():
    args = bench.parse_args(["--quick", "--frames", "3"])
    assert args.frames == 3 and args.size == bench.QUICK["size"] and args.mem_frames == bench.QUICK["mem_frames"]
    assert bench.parse_args([]).size == 256 and bench.parse_args([]).device is None  # main picks cuda if present


@pytest.mark.parametrize("argv", [["--device", "tpu"], ["--mem-frames", "8", "4"], ["--frames", "0"]])
def test_bad_flags_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        bench.parse_args(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
