"""experiments/tables.py: the paper's Tables 1-2 from several runs' evaluations, mean ± std over seeds, and its
errors."""
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("tables", REPO / "experiments" / "tables.py")
tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tables)


def write_run(folder, shift_div, match, miou, pixel_acc, mvc8=0.8, causal=False, config=None, name="eval-val"):
    """An evaluation as evaluate.py writes it (with a train.py config.json if config is given)."""
    folder.mkdir(parents=True, exist_ok=True)
    run = {"checkpoint": str(folder / "best"), "data": "synthetic", "root": None, "split": "val", "clip_len": None,
           "max_videos": None, "shift_div": shift_div, "match": match, "causal": causal,
           "channels": 256 // shift_div if shift_div else 0,
           "results": {"num_videos": 2, "num_frames": 48, "miou": miou, "pixel_acc": pixel_acc, "mvc8": mvc8}}
    (folder / f"{name}.json").write_text(json.dumps(run))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_table_has_the_papers_layout_with_mean_and_std_over_seeds(tmp_path, capsys):
    runs = [write_run(tmp_path / "base0", 0, False, 0.50, 0.90, mvc8=None),
            write_run(tmp_path / "base1", 0, True, 0.52, 0.92),  # matching means nothing without a shift
            *(write_run(tmp_path / f"m{seed}", 16, True, miou, 0.93) for seed, miou in enumerate([0.55, 0.56, 0.57])),
            write_run(tmp_path / "nomatch", 16, False, 0.49, 0.90),
            write_run(tmp_path / "k128", 128, True, 0.40, 0.88)]
    tables.main([*runs, "--out", str(tmp_path / "table.md")])
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert lines[2:] == [
        "| shift fraction | channels | matching | mIoU | pix. acc. | Δ mIoU | Δ pix. acc. | mVC8 | runs |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
        "| 0 | 0 |  | 51.00 ± 1.41 | 91.00 ± 1.41 |  |  | 80.00 | 2 |",  # mVC8: the one run that has it
        "| 1/128 | 2 | ✓ | 40.00 | 88.00 | -11.00 | -3.00 | 80.00 | 1 |",
        "| 1/16 | 16 |  | 49.00 | 90.00 | -2.00 | -1.00 | 80.00 | 1 |",
        "| 1/16 | 16 | ✓ | 56.00 ± 1.00 | 93.00 ± 0.00 | +5.00 | +2.00 | 80.00 ± 0.00 | 3 |",
    ]
    assert (tmp_path / "table.md").read_text() == printed


def train_config(**changes):
    return {"data": "synthetic", "root": None, "shift_div": 16, "match": True, "causal": False, "model": "tiny",
            "max_steps": 480, "lr": 5e-4, "seed": 0, "out": "x", "workers": 0, "device": None, **changes}


def test_table_never_averages_runs_that_differ_in_more_than_the_seed(tmp_path, capsys):
    runs = [write_run(tmp_path / "long0", 16, True, 0.60, 0.95, config=train_config(seed=0, out="long0")),
            write_run(tmp_path / "long1", 16, True, 0.62, 0.95, config=train_config(seed=1, out="long1")),
            write_run(tmp_path / "short", 16, True, 0.10, 0.50, config=train_config(max_steps=8)),
            write_run(tmp_path / "base", 0, False, 0.55, 0.90, config=train_config(shift_div=0, match=False)),
            write_run(tmp_path / "base8", 0, False, 0.05, 0.40, config=train_config(shift_div=0, max_steps=8))]
    tables.main([*runs])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == [
        "| shift fraction | channels | matching | max_steps | mIoU | pix. acc. | Δ mIoU | Δ pix. acc. | mVC8 | runs |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|",
        "| 0 | 0 |  | 8 | 5.00 | 40.00 |  |  | 80.00 | 1 |",
        "| 0 | 0 |  | 480 | 55.00 | 90.00 |  |  | 80.00 | 1 |",
        "| 1/16 | 16 | ✓ | 8 | 10.00 | 50.00 | +5.00 | +10.00 | 80.00 | 1 |",  # against the 8-step baseline
        "| 1/16 | 16 | ✓ | 480 | 61.00 ± 1.41 | 95.00 ± 0.00 | +6.00 | +5.00 | 80.00 ± 0.00 | 2 |",
    ]


def test_table_compares_fine_tunes_of_per_seed_models_and_shows_any_new_setting(tmp_path, capsys):
    runs = []
    for seed in (0, 1):  # each seed fine-tunes its own image model: the model paths differ, their settings do not
        image_model = tmp_path / f"seed{seed}" / "base"
        (image_model / "last").mkdir(parents=True)
        (image_model / "config.json").write_text(json.dumps(train_config(seed=seed, shift_div=0, max_steps=960)))
        model = str(image_model / "last")
        for shift_at in ("final", "all"):  # a model setting tables have never heard of: a column of its own
            folder = tmp_path / f"seed{seed}" / shift_at
            runs.append(write_run(folder, 16, True, 0.5 + seed / 100 + (shift_at == "all") / 10, 0.9,
                                  config=train_config(seed=seed, model=model)))
            run = json.loads((folder / "eval-val.json").read_text())
            (folder / "eval-val.json").write_text(json.dumps({**run, "shift_at": shift_at}))
    tables.main([*runs])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| shift fraction | channels | matching | shift_at | mIoU | pix. acc. | Δ mIoU | Δ pix. acc. " \
                       "| mVC8 | runs |"
    assert lines[4:] == ["| 1/16 | 16 | ✓ | all | 60.50 ± 0.71 | 90.00 ± 0.00 | – | – | 80.00 ± 0.00 | 2 |",
                         "| 1/16 | 16 | ✓ | final | 50.50 ± 0.71 | 90.00 ± 0.00 | – | – | 80.00 ± 0.00 | 2 |"]
    image_model = tmp_path / "seed1" / "base"
    (image_model / "config.json").write_text(json.dumps(train_config(seed=1, shift_div=0, max_steps=99)))
    tables.main([*runs])  # image models trained for different lengths: no longer one row
    lines = capsys.readouterr().out.splitlines()
    assert "| model.max_steps |" in lines[2] and len(lines) == 4 + 4


def test_table_picks_the_data_set_every_run_has(tmp_path, capsys):
    a = write_run(tmp_path / "a", 16, True, 0.5, 0.9, name="eval-synthetic-val")
    b = write_run(tmp_path / "b", 16, True, 0.7, 0.9, name="eval-synthetic-val")
    clips = json.loads((tmp_path / "a" / "eval-synthetic-val.json").read_text())
    (tmp_path / "a" / "eval-clips-val.json").write_text(json.dumps({**clips, "data": "clips"}))
    tables.main([a, b])
    assert "| 60.00 ± 14.14 |" in capsys.readouterr().out  # synthetic, the one both runs have
    (tmp_path / "b" / "eval-clips-val.json").write_text(json.dumps({**clips, "data": "clips"}))
    with pytest.raises(SystemExit):
        tables.main([a, b])
    assert "several data sets or splits (clips-val, synthetic-val): choose one with --data" in capsys.readouterr().err
    tables.main([a, b, "--data", "clips"])
    assert "| 50.00 ± 0.00 |" in capsys.readouterr().out


@pytest.mark.parametrize("args,message", [(["{tmp}/missing"], "no evaluation"), (["{tmp}/corrupt"], "cannot read"),
                                          (["{tmp}/corrupt", "--out", "{tmp}/missing/table.md"], "--out")])
def test_bad_input_is_one_line_and_exit_status_2(args, message, tmp_path, capfd):
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "eval-synthetic-val.json").write_text("{")
    with pytest.raises(SystemExit) as exit_:
        tables.main([a.format(tmp=tmp_path) for a in args])
    out, err = capfd.readouterr()
    assert exit_.value.code == 2 and out == "" and len(err.splitlines()) == 1 and message in err, err
