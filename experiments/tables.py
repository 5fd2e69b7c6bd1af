"""
The paper's Tables 1-2 from several runs' evaluations: one row per setting, mean ± std over the runs that differ
only in the seed, and the difference to the frame-by-frame row trained alike.

    python experiments/tables.py RUN [RUN ...] [--data D] [--root ROOT] [--split S] [--world KNOBS] [--clip-len T]
        [--out FILE]

Each RUN is a folder written by train.py and scored by `evaluate.py --checkpoint RUN/best`: the table takes each run's
evaluation of the one data set and split that every run has (or those given) of all the videos, and the settings the
run was trained with from RUN/config.json (a model that is another run's checkpoint stands for that run's settings).
"""
import collections
import json
import math
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the project's modules
from cli import check_at_least, fail, first_line, make_parser
from data import VSPW_MIN_FRAMES
from evaluate import DATA_SETS, scored
from metrics import CUE_DISTANCES, TITLES, percent
from qshift import Settings
from synthetic import parse_world


def mean_std(values):
    """'m ± s' in percent over the finite values (sample std), 'm' for one value, '–' for none; and the mean."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "–", math.nan
    mean = float(np.mean(values))
    if len(values) == 1:
        return percent(mean), mean
    return f"{percent(mean)} ± {100 * float(np.std(values, ddof=1)):.2f}", mean


RUN_KEYS = ("checkpoint", "data", "split", "clip_len", "shift_div", "match", "causal", "channels", "results")
EVALUATION_KEYS = {"checkpoint", "data", "root", "split", "world", "min_frames", "protocol", "skipped_videos",
                   "clip_len", "max_videos", "short_side", "channels", "results", "train"}
# keys of an eval json (and "train", which the table adds) that describe the evaluation; the others are the model's
# settings (qshift.Settings)
NOT_SETTINGS = {"seed", "out", "root", "device", "workers", "log_every"} | {f.name for f in fields(Settings)}
# keys of a run's config.json that do not set what is trained: the seed (runs that differ only in it share a row),
# where the run and its data were, how it ran, and the shift's settings (the checkpoint's own stand for them)


def train_settings(run_dir):
    """The settings the run in run_dir was trained with: its config.json less NOT_SETTINGS, {} without one. A model
    that is another run's checkpoint stands for that run's settings (its config.json is enough: the experiment keeps
    the configs and evaluations, not the weights), so that fine-tunes of per-seed models compare."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        fail(f"{run_dir}: cannot read {path} ({first_line(e)})")
    if not isinstance(config, dict):
        fail(f"{run_dir}: {path} is not a run's config written by train.py")
    settings = {k: v for k, v in config.items() if k not in NOT_SETTINGS}
    model = Path(str(settings.get("model")))
    if (model.parent / "config.json").is_file() and model.parent.resolve() != path.parent.resolve():  # its run's
        settings["model"] = train_settings(model.parent)
    return settings


def _flat(settings, prefix=""):
    """Nested settings on one level: {"model": {"lr": 0.1}} -> {"model.lr": 0.1}."""
    flat = {}
    for key, value in settings.items():
        flat.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
    return flat


def _settings(run):
    """(training settings, model settings) of an evaluation, each a flat dict. Without a shift, the model's other
    settings (matching, causal, ...) change nothing: they are left out."""
    model = {k: v for k, v in run.items() if k not in EVALUATION_KEYS}
    train = {k: v for k, v in _flat(run.get("train", {})).items() if k not in model}
    if not model.get("match"):
        model.pop("match_by", None)  # what would have been matched by, had matching run
    return train, (model if model["shift_div"] else {"shift_div": 0})


def _cell(value):
    """A setting's value in a table cell."""
    if isinstance(value, bool):
        return "✓" if value else ""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return "–" if value is None else str(value)


def results_table(runs):
    """The paper's Tables 1-2 from evaluations (eval json dicts, with "train": train_settings where known), Markdown.

    Runs whose settings differ in nothing but the seed share a row, mean ± std over them; every setting besides the
    shift fraction, matching and causal that differs between rows gets a column. Δ is the difference to the mean of
    the frame-by-frame row (shift_div 0) whose other settings are the row's.
    """
    groups, settings, baselines = collections.defaultdict(list), {}, {}
    for run in runs:
        train, model = _settings(run)
        key = json.dumps([train, model], sort_keys=True)
        groups[key].append(run)
        settings[key] = {**train, **model}
        baselines[key] = json.dumps([train, {"shift_div": 0}], sort_keys=True)  # the same training, no shift
    names = sorted({name for s in settings.values() for name in s} - {"shift_div", "match", "causal"})
    varying = [name for name in names if len({json.dumps(s.get(name)) for s in settings.values()}) > 1]
    causal = any(s.get("causal") for s in settings.values())
    synthetic = any("hidden_miou" in run["results"] for run in runs)

    def mean(key, metric):
        return mean_std([run["results"].get(metric) for run in groups[key]])[1] if key in groups else math.nan

    def order(key):  # baseline, the paper's placement, other placements; 1/128 .. 1/2; causal and matching last
        s = settings[key]
        values = [(0, s[name]) if isinstance(s.get(name), (int, float)) else (1, json.dumps(s.get(name)))
                  for name in varying]  # numbers by value, before the rest
        where = s.get("shift_at", ["queries"])
        by_masks = s.get("match_by", "queries") != "queries"
        return (s["shift_div"] != 0, where != ["queries"], len(where), where, by_masks, -s["shift_div"],
                bool(s.get("causal")), bool(s.get("match")), values)

    by_distance = [metric for metric in (f"hidden_d{d}_acc" for d in CUE_DISTANCES)  # those measured somewhere
                   if not math.isnan(mean_std([run["results"].get(metric) for run in runs])[1])]
    metrics = ["mvc8"] + (["hidden_miou", "hidden_acc", *by_distance, "visible_acc"] if synthetic else [])
    header = ["shift fraction", "channels", "matching"] + (["causal"] if causal else []) + varying + \
        [TITLES["miou"], TITLES["pixel_acc"], f"Δ {TITLES['miou']}", f"Δ {TITLES['pixel_acc']}"] + \
        [TITLES[m] for m in metrics] + ["runs"]
    text_columns = 3 + causal + len(varying)  # left-aligned; the numbers are right-aligned
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * text_columns + "---:|" * (len(header) - text_columns)]
    for key in sorted(groups, key=order):
        group, s = groups[key], settings[key]
        cells = [f"1/{s['shift_div']}" if s["shift_div"] else "0", str(group[0]["channels"]),
                 _cell(bool(s.get("match")))] + ([_cell(bool(s.get("causal")))] if causal else [])
        cells += [_cell(s.get(name)) for name in varying]
        cells += [mean_std([run["results"].get(m) for run in group])[0] for m in ("miou", "pixel_acc")]
        for metric in ("miou", "pixel_acc"):
            diff = mean(key, metric) - mean(baselines[key], metric)
            cells.append("" if s["shift_div"] == 0 else "–" if math.isnan(diff) else f"{100 * diff:+.2f}")
        cells += [mean_std([run["results"].get(m) for run in group])[0] for m in metrics]
        lines.append("| " + " | ".join(cells + [str(len(group))]) + " |")
    first = runs[0]
    caption = (f"{first['data']} {first['split']}, " + ("whole videos" if not first["clip_len"] else
               f"clips of {first['clip_len']} frames") + "; percent, mean ± std over runs; Δ: difference from the "
               "frame-by-frame baseline (shift fraction 0)")
    return "\n".join([caption, ""] + lines) + "\n"


def find_evaluations(run_dirs, data_set=None, root=None, split=None, clip_len=None, world=None):
    """Each run's evaluation (its eval json's dict, plus "train": train_settings) of all the videos (no --max-videos;
    VSPW: those of the paper's protocol) with clip_len, of the one data set and split (as `scored` names them) that
    every run has an evaluation of, among those of data_set, root, split and synthetic world where given."""
    found = {}  # run -> {scored: [(path, evaluation)]}
    for run_dir in run_dirs:
        found[run_dir] = collections.defaultdict(list)
        for path in sorted(Path(run_dir).glob("eval-*.json")):
            try:
                run = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                fail(f"{run_dir}: cannot read {path} ({first_line(e)})")
            if not isinstance(run, dict) or any(key not in run for key in RUN_KEYS):
                fail(f"{run_dir}: {path} is not an evaluation written by evaluate.py "
                     f"(keys: {', '.join(RUN_KEYS)})")
            wanted = (data_set in (None, run["data"]) and split in (None, run["split"]) and
                      world in (None, run.get("world", {})) and
                      (root is None or run.get("root") is not None
                       and Path(root).resolve() == Path(run["root"]).resolve()))
            paper = run.get("min_frames") in (None, VSPW_MIN_FRAMES)  # not evaluate.py --min-frames 1's, say
            if run.get("max_videos") is None and run["clip_len"] == clip_len and paper and wanted:
                found[run_dir][scored(run["data"], run.get("root"), run["split"], run.get("world"))].append((path, run))
        if not found[run_dir]:
            what = " ".join(str(x) for x in (data_set, root, split, clip_len and f"clips of {clip_len}") if x)
            fail(f"{run_dir}: no evaluation {what + ' ' if what else ''}of all the videos there "
                 f"(run evaluate.py --checkpoint {run_dir}/best first)")
    common = set.intersection(*(set(evaluations) for evaluations in found.values()))
    if len(common) != 1:
        options = sorted({name for evaluations in found.values() for name in evaluations})
        problem = "several data sets or splits" if common else "no data set and split evaluated in every run"
        fail(f"{problem} ({', '.join(options)}): choose one with --data, --root, --split and --world")
    [name] = common
    runs = []
    for run_dir, evaluations in found.items():
        (path, run), *more = evaluations[name]
        if more:
            fail(f"{run_dir}: {1 + len(more)} evaluations of {name} "
                 f"({', '.join(path.name for path, _ in evaluations[name])}): keep one")
        runs.append({**run, "train": train_settings(run_dir)})
    return runs


def parse_args(argv=None):
    parser = make_parser(__doc__)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by train.py")
    parser.add_argument("--data", choices=DATA_SETS, help="tabulate the evaluations of this data set")
    parser.add_argument("--root", help="tabulate the evaluations of this data set folder")
    parser.add_argument("--split", help="tabulate the evaluations of this split")
    parser.add_argument("--world", type=parse_world, metavar="KNOBS", help="synthetic data: tabulate the evaluations "
                        "of this world, e.g. hide_run=3,speed=8")
    parser.add_argument("--clip-len", type=int, help="tabulate the evaluations in clips of T frames")
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    check_at_least(args, {"--clip-len": 1})
    if args.out and not Path(args.out).parent.is_dir():
        fail(f"--out {args.out}: no such folder {Path(args.out).parent}")
    return args


def main(argv=None):
    args = parse_args(argv)
    table = results_table(find_evaluations(args.runs, args.data, args.root, args.split, args.clip_len, args.world))
    print(table, end="")
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
