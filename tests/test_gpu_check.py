"""experiments/gpu_check.py's driver: every part in its own process, a failing or overdue one recorded, the next one
run; and its CPU-side helpers. Its parts themselves run in `experiments/gpu_check.sh --cpu` (minutes)."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import gpu_check  # noqa: E402


def test_a_failing_and_an_overdue_part_are_recorded_and_the_run_goes_on(tmp_path):
    """Three stand-in parts (gpu_check.TEST_PARTS), budgets 3, 4 and 6 s: one raises, one outlives its deadline, one
    passes; the JSON keeps each one's status, seconds and the figures it saved before it stopped."""
    start = time.monotonic()
    result = subprocess.run(["bash", str(ROOT / "experiments" / "gpu_check.sh"), "--cpu", "--parts",
                             "_fail,_sleep,_ok", str(tmp_path)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 1, result.stderr
    assert time.monotonic() - start < 60  # the sleeping part (60 s) was ended at its deadline
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["_fail", "_sleep", "_ok"]
    assert [parts[p]["status"] for p in parts] == ["error", "timeout", "ok"]
    assert parts["_fail"]["figures"] == {"before": "the error"} and "ZeroDivisionError" in parts["_fail"]["log_tail"]
    assert parts["_sleep"]["figures"] == {"started": True}
    assert parts["_ok"]["figures"]["summary"] == "fine"
    assert report["not_ok"] == ["_fail", "_sleep"] and report["mode"] == "cpu"
    assert report["machine"]["torch"] == torch.__version__
    assert all(isinstance(parts[p]["seconds"], float) for p in parts)
    assert "2 parts ok" not in result.stdout and "1 of 3 parts ok; not ok: _fail, _sleep" in result.stdout


def test_unknown_parts_are_refused():
    with pytest.raises(SystemExit):
        gpu_check.main(["--parts", "9"])


def test_the_gpu_budgets_fit_8_minutes_and_every_part_has_one():
    assert sum(p.cuda_s for p in gpu_check.PARTS) <= 480
    assert [p.number for p in gpu_check.PARTS] == list(range(1, len(gpu_check.PARTS) + 1))
    assert all(p.function.__doc__ for p in gpu_check.PARTS)  # the question each answers, in the JSON


def test_spread_predictions_gives_maps_of_many_classes():
    """A random model's maps are one or two classes; after spread_predictions, many (part 3's premise)."""
    import qshift
    from tiny import build_model, tiny_config
    torch.manual_seed(0)
    model = build_model(tiny_config(150, hidden_size=64, family="mask2former")).eval()
    frames = torch.randn(1, 3, 64, 64) + 0.1 * torch.randn(3, 3, 64, 64)
    gpu_check.spread_predictions(model, frames)
    with torch.no_grad():
        out = model(frames[None])
    maps = qshift.semantic_segmentation(out.class_queries_logits, out.masks_queries_logits, (64, 64))
    assert maps.unique().numel() > 3
    assert 0 <= gpu_check.near_ties(out.class_queries_logits, out.masks_queries_logits, (64, 64)) < 0.5
