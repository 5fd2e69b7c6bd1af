"""bench.py at tiny sizes: every figure is measured and reported; the adaptive paired timing on fake runs of known
time; no timing thresholds (the machine is shared)."""
import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

import bench
import memory
from tiny import tiny_config

TINY = ["--frames", "2", "--size", "64", "--min-blocks", "2", "--budget", "0", "--mem-frames", "2", "6", "--mem-size",
        "64", "--clips", "2", "--fps-frames", "2", "--fps-size", "32", "48", "--device", "cpu"]
FPS = {f"{figure}_{name}" for figure in ("fps_offline", "online_ms", "online_p90_ms", "fps_online")
       for name in ("image", "paper")}


class FakeRuns:
    """Runs of known length on a fake clock: run(name, seconds) is a function that moves the clock on by `seconds`,
    times load(clock) (the machine's slowdown at that moment, 1: idle), times 1 + switch if the run before it was
    another one's (caches filled by the other), times 1 + noise * N(0, 1) (fixed seed); it logs its name."""

    def __init__(self, noise=0.0, load=lambda now: 1.0, switch=0.0, seed=0):
        self.now, self.noise, self.load, self.switch, self.log = 0.0, noise, load, switch, []
        self.rng = np.random.default_rng(seed)

    def clock(self):
        return self.now

    def run(self, name, seconds):
        def fn():
            switched = bool(self.log) and self.log[-1] != name
            self.log.append(name)
            self.now += (seconds * self.load(self.now) * (1 + self.switch * switched)
                         * (1 + self.noise * self.rng.standard_normal()))
        return fn


def time_fakes(fakes, ratio, **timing):
    """side_by_side of fake runs of 1 s (A) and `ratio` s (B) on the fake clock."""
    return bench.side_by_side(fakes.run("A", 1.0), fakes.run("B", ratio), "cpu", clock=fakes.clock, **timing)


def test_exact_runs_stop_at_6_blocks_of_a_b_b_a_the_fewest_that_hold_the_median_to_95_percent():
    fakes = FakeRuns()
    t = time_fakes(fakes, 1.25, budget=1e9, min_blocks=3)
    assert t["precise"] and t["blocks"] == 6 and t["ratio"] == pytest.approx(1.25)
    assert t["interval"] == pytest.approx([1.25, 1.25]) and (t["a_s"], t["b_s"]) == pytest.approx((1.0, 1.25))
    assert "".join(fakes.log) == "AB" + "ABBA" * 6  # the warm-up, then the blocks
    few = time_fakes(FakeRuns(), 1.25, budget=0, min_blocks=5)  # 5 blocks: no interval holds 95%, not precise
    assert few["blocks"] == 5 and not few["precise"] and few["interval"] == pytest.approx([1.25, 1.25])


def test_the_interval_runs_from_the_kth_smallest_to_the_kth_largest_block():
    ratios = [1.0, 1.3, 0.9, 1.1, 1.2, 0.8, 1.05, 0.95, 1.15, 0.85]  # one per block: B's time, A's is 1
    seconds = iter(s for ratio in ratios for s in (1.0, ratio, ratio, 1.0))  # the runs of the blocks A B B A
    now = [0.0]

    def run():  # A and B alike: the next run's seconds
        now[0] += next(seconds)

    t = bench.side_by_side(run, run, "cpu", budget=0, min_blocks=10, warmup=0, clock=lambda: now[0])
    # 10 blocks: P(Binomial(10, 1/2) < 2) = 11/1024 <= 2.5% < P(... < 3) = 56/1024, so the 2nd smallest to the
    # 2nd largest (a 97.9% interval)
    assert t["blocks"] == 10 and t["ratio"] == pytest.approx(1.025) and t["interval"] == pytest.approx([0.85, 1.2])


def test_noisy_runs_take_blocks_until_the_interval_is_within_the_precision():
    loose, tight = (time_fakes(FakeRuns(noise=0.02), 1.1, budget=1e9, precision=p) for p in (0.01, 0.005))
    for t, precision in ((loose, 0.01), (tight, 0.005)):
        low, high = t["interval"]
        assert t["precise"] and low <= t["ratio"] <= high
        assert max(t["ratio"] - low, high - t["ratio"]) <= precision * t["ratio"]
        assert t["ratio"] == pytest.approx(1.1, rel=2 * precision)  # near the known ratio (a 95% interval, which
        # a rule that stops once it is narrow enough misses a little more often than 1 in 20)
    assert 6 < loose["blocks"] < tight["blocks"]  # more than the fewest (6) were needed, and more for ±0.5%


def test_the_budget_stops_it_short_of_the_precision_and_says_so():
    t = time_fakes(FakeRuns(noise=0.03), 1.1, budget=0, min_blocks=8)
    low, high = t["interval"]
    assert t["blocks"] == 8 and not t["precise"] and max(t["ratio"] - low, high - t["ratio"]) > 0.005 * t["ratio"]


@pytest.mark.parametrize("ratio", [1.0, 1.1])
def test_drifting_load_and_the_cost_of_switching_cancel_in_each_block(ratio):
    # load tripling over the run (2 at 100 fake seconds), and 5% more for a run after the other one's: adjacent
    # pairs A B, B A would give ratios of about 1.05 and 0.95 in turn, a median anywhere between
    fakes = FakeRuns(load=lambda now: 1 + now / 100, switch=0.05)
    t = time_fakes(fakes, ratio, budget=1e9, min_blocks=30)
    assert fakes.load(fakes.now) > 3 and t["precise"]
    assert t["ratio"] == pytest.approx(ratio, rel=0.002)  # a linear drift cancels; a runs' load is its start's
    noisy = FakeRuns(noise=0.02, load=lambda now: 1 + now / 100, switch=0.05)
    assert time_fakes(noisy, ratio, budget=1e9)["ratio"] == pytest.approx(ratio, rel=0.01)  # the control: 1 ± 0.01


@pytest.fixture(scope="module")
def report():
    """The report of a bench run with a tiny model, tiny clips and 2-frame data clips."""
    args = bench.settle_device(bench.parse_args(TINY + ["--threads", "1"]))
    config = tiny_config(5, embed_dim=32)  # backbone maps of 32..256 channels: 1/16 of each is even
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads crawl when other jobs share the two cores
    figures, models = bench.collect(args, config, tiny_config(5, embed_dim=32, family="mask2former"),
                                    clip_len=2, metric_blocks=1)
    torch.set_num_threads(threads)
    return bench.report(args, figures, models)


def test_every_figure_is_a_positive_finite_number(report):
    rep = json.loads(json.dumps(report))  # what --json prints
    assert set(rep["figures"]) == {key for key, _, _ in bench.rows(bench.parse_args(TINY))}
    for key, row in rep["figures"].items():
        assert math.isfinite(row["value"]) and row["value"] > 0, key
        assert (row["met"] is None) == (row["goal"] is None), key
    assert rep["machine"]["cores_used"] == 1 and rep["settings"]["mem_frames"] == [2, 6]


def test_every_model_gets_speeds_and_ratios_to_the_model_it_is_timed_against(report):
    names = [model["name"] for model in report["models"]]
    assert names == [bench.BASE, *(name for name, _, _ in bench.SHIFTED), f"Mask2Former, {bench.BASE}",
                     f"Mask2Former, {bench.PAPER}"]
    models = {model["name"]: model for model in report["models"]}
    assert [models[name]["against"] for name in (bench.CONTROL, bench.PAPER, bench.REACH, names[-1])] == \
        [bench.BASE, bench.BASE, "shift 1/4 at pixels", f"Mask2Former, {bench.BASE}"]
    for model in report["models"]:
        for key in ("forward", "train_step"):
            assert model[f"{key}_fps"] == pytest.approx(2 / (model[f"{key}_ms"] / 1e3))  # 2 frames a clip
            assert model[f"{key}_peak_mib"] is None  # the CPU keeps no count of its peak
            timing = bench.timing(model, key)
            if model["against"] is None:  # a baseline: timed, but not against anything
                assert timing == {"value": None, "interval": None, "blocks": None, "precise": None}
                continue
            low, high = timing["interval"]
            assert 0 < low <= timing["value"] <= high and math.isfinite(high), (model["name"], key)
            assert timing["blocks"] == 2 and timing["precise"] in (True, False)  # --budget 0: --min-blocks exactly
    figures = report["figures"]
    for prefix, name in (("control_", bench.CONTROL), ("", bench.PAPER), ("reach_", bench.REACH),
                         ("m2f_", names[-1])):
        for key in ("forward", "train_step"):
            assert {k: figures[f"{prefix}{key}_ratio"][k] for k in ("value", "interval", "blocks", "precise")} == \
                bench.timing(models[name], key)
    assert figures["control_forward_ratio"]["goal"] == figures["control_train_step_ratio"]["goal"] == "1 ± 0.01"
    paper = models[bench.PAPER]
    assert paper["match_pct"] == pytest.approx(100 * figures["match_ms"]["value"] / paper["forward_ms"])
    assert models[bench.BASE]["match_pct"] is None and models[bench.CONTROL]["match_pct"] is None


def test_the_checkpointed_model_is_a_copy_of_the_baseline_that_recomputes_its_blocks():
    models = {name: model for name, model, _ in bench.variants(tiny_config(5, embed_dim=32), "cpu")}
    base, checkpointed = models[bench.BASE], models[bench.CHECKPOINTED]
    assert checkpointed is not base and checkpointed.model is not base.model
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), checkpointed.state_dict().values()))
    assert sum(callable(vars(block).get(method)) for block, method in memory.recomputed_blocks(checkpointed)) > 0
    assert not any(callable(vars(block).get(method)) for block, method in memory.recomputed_blocks(base))


def test_the_control_is_the_baseline_itself_and_reach_3_moves_what_reach_1_does():
    models = {name: (model, against) for name, model, against in
              bench.variants(tiny_config(5, embed_dim=32), "cpu")}
    assert models[bench.CONTROL] == (models[bench.BASE][0], bench.BASE)  # the same object
    reach3, against = models[bench.REACH]
    reach1 = models[against][0]
    assert reach3.model is reach1.model and reach3.settings == dataclasses.replace(reach1.settings, reach=3)
    assert reach1.settings.reach == 1 and reach1.settings.shift_at == ("pixels",)


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])  # float16: the training step scales its loss
def test_autocast_runs_on_the_cpu(amp):  # matching computes its similarities in float32 under autocast
    models, _ = bench.model_cost(bench.variants(tiny_config(5), "cpu", bench.SHIFTED[1:2]), 2, 32, "cpu",
                                 amp=amp, budget=0, min_blocks=1)
    assert all(math.isfinite(m["train_step_ms"]) and m["train_step_ms"] > 0 for m in models)


def test_fps_reduced_on_the_cpu_says_how_it_measured(report):
    figures = {key: row["value"] for key, row in report["figures"].items() if key in FPS}
    assert set(figures) == FPS and all(math.isfinite(v) and v > 0 for v in figures.values())
    for name in ("image", "paper"):
        assert figures[f"online_p90_ms_{name}"] >= figures[f"online_ms_{name}"]
    text = bench.markdown(report)
    assert "| frames/s offline, shift 1/16 + matching, whole clip (2 frames at 48x32, batch 1, CPU reduced) |" in text
    assert "Frames per second on the CPU, at reduced sizes (not a GPU figure): batch 1, one video of 2 random 48x32 " \
        "frames made beforehand on the CPU (not counted), float32;" in text and "the streaming halo" in text
    bf16 = bench.fps(tiny_config(5), 3, (32, 48), "cpu", amp=torch.bfloat16, runs=1)  # the path CUDA takes
    assert set(bf16) == FPS and all(math.isfinite(v) and v > 0 for v in bf16.values())


def test_json_out_holds_the_sections_done_when_a_later_one_fails(tmp_path):
    out = tmp_path / "bench.json"
    args = bench.settle_device(bench.parse_args(TINY + ["--sections", "mask2former", "fps", "--json-out", str(out)]))
    # Mask2Former with 24 query channels: 1/16 of them is no whole number, which qshift refuses as it builds the
    # paper's model, in the section that runs after fps
    odd = tiny_config(5, hidden_size=24, family="mask2former")
    with pytest.raises(ValueError, match="shift_div 16"):
        bench.collect(args, tiny_config(5, embed_dim=32), odd)
    saved = json.loads(out.read_text())
    assert saved["sections_done"] == ["fps"] and saved["failed"].startswith("mask2former: SettingError: shift_div 16")
    assert set(saved["figures"]) == FPS and saved["models"] == []
    assert saved["settings"]["sections"] == ["mask2former", "fps"]  # as asked; run in SECTIONS' order
    assert saved["fps_method"].startswith("Frames per second on the CPU") and list(tmp_path.iterdir()) == [out]


def test_goals_are_judged_by_their_direction(report):
    figures = {key: row["value"] for key, row in report["figures"].items()}
    args = bench.parse_args(TINY)
    fast = bench.report(args, {**figures, "forward_ratio": 1.0, "data_clips_per_s": 11.0,
                               "control_forward_ratio": 1.009})["figures"]
    slow = bench.report(args, {**figures, "forward_ratio": 1.5, "data_clips_per_s": 9.0,
                               "control_forward_ratio": 0.985})["figures"]
    for key in ("forward_ratio", "data_clips_per_s", "control_forward_ratio"):
        assert fast[key]["met"] and not slow[key]["met"], key


def test_markdown_tables_have_a_row_per_figure_and_per_model(report):
    lines = bench.markdown(report).splitlines()
    rows = [line for line in lines if line.startswith("| ") and not line.startswith(("| figure", "| model"))]
    assert len(rows) == len(report["figures"]) + len(report["models"])
    assert rows[-1].startswith("| Mask2Former, shift 1/16 + matching | ") and rows[-1].endswith(" | – | – |")
    spreads = sum("blocks" in row for row in report["figures"].values()) + 2 * (len(report["models"]) - 2)
    assert "\n".join(rows).count(" (2 blocks") == spreads == 9 + 20  # every time ratio, in each table it is in
    assert any(line.startswith("machine: ") and "torch" in line for line in lines)
    assert "**no**" in bench.markdown(bench.report(bench.parse_args(TINY), {
        **{key: row["value"] for key, row in report["figures"].items()}, "metrics_ms": 3.0}))


def test_markdown_says_which_ratios_reached_the_precision(report):
    rep = copy.deepcopy(report)
    for row in [*rep["figures"].values(), *rep["models"]]:
        for key in ("precise", "forward_precise", "train_step_precise"):
            if row.get(key) is not None:
                row[key] = True
    ratios = 2 * (len(rep["models"]) - 2)  # all but the two baselines, inference and training
    assert f"{ratios} of {ratios} reached ±0.5%." in bench.markdown(rep) and "budget" not in bench.markdown(rep)[-300:]
    rep["models"][2]["train_step_precise"] = False
    text = bench.markdown(rep)
    assert f"{ratios - 1} of {ratios} reached ±0.5%; the budget ran out for {bench.PAPER} (training)." in text
    assert text.count("blocks, budget spent)") == 1


def test_quick_fills_in_only_the_flags_not_given():
    args = bench.parse_args(["--quick", "--frames", "3"])
    assert args.frames == 3 and args.size == bench.QUICK["size"] and args.mem_frames == bench.QUICK["mem_frames"]
    assert (args.min_blocks, args.budget) == (bench.QUICK["min_blocks"], bench.QUICK["budget"])
    assert (bench.parse_args([]).budget, bench.parse_args(["--budget", "0"]).budget) == (60, 0)
    assert bench.parse_args([]).size is None and bench.parse_args([]).device is None  # settled once torch is there
    cpu = bench.settle_device(bench.parse_args(["--device", "cpu"]))
    assert cpu.size == 256 and (cpu.fps_frames, cpu.fps_size) == (4, [32, 56])


@pytest.mark.parametrize("flags, amp", [([], "off"), (["--amp"], "bf16"), (["--amp", "auto"], "bf16"),
                                        (["--amp", "off"], "off"), (["--amp", "bf16"], "bf16"),
                                        (["--amp", "fp16"], "fp16")])
def test_amp_on_the_cpu_is_off_unless_asked_and_auto_is_bf16(flags, amp):  # CPUs compute bf16 (cli.amp_dtype)
    assert bench.settle_device(bench.parse_args(["--device", "cpu", *flags])).amp == amp


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_defaults_are_the_papers_clip_in_bf16_where_native():
    args = bench.settle_device(bench.parse_args(["--device", "cuda"]))
    auto = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    assert (args.frames, args.size, args.amp, args.fps_size) == (16, 480, auto, [480, 854])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_model_cost_and_memory_on_the_device_given():
    device = f"cuda:{torch.cuda.device_count() - 1}"  # with several GPUs, one that is not the current device
    config = tiny_config(5, embed_dim=32)
    models, _ = bench.model_cost(bench.variants(config, device), 2, 64, device, amp=torch.bfloat16, budget=0,
                                 min_blocks=2)
    for model in models:
        assert 0 < model["forward_peak_mib"] < model["train_step_peak_mib"]  # training adds gradients, AdamW state
    memory = bench.memory(tiny_config(5), [2, 6], 64, device, amp=torch.bfloat16)
    assert all(math.isfinite(value) and value > 0 for value in memory.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_fps_streams_frames_already_on_the_gpu():
    figures = bench.fps(tiny_config(5), 3, (32, 48), "cuda", amp=torch.bfloat16, runs=1)
    assert set(figures) == FPS and all(math.isfinite(v) and v > 0 for v in figures.values())


@pytest.mark.parametrize("argv", [["--device", "tpu"], ["--mem-frames", "8", "4"], ["--frames", "0"],
                                  ["--budget", "-1"], ["--precision", "nan"], ["--repeats", "4"],
                                  ["--amp", "fp8"], ["--sections", "speed"], ["--json-out", "nosuch/bench.json"],
                                  ["--fps-size", "32", "32"]])
def test_bad_flags_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        bench.parse_args(argv)
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
