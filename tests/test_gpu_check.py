"""experiments/gpu_check.py in its CPU mode, where every part runs at tiny sizes (the device's own figures come from
a GPU machine): what each part says, and that a part that fails keeps its own figures and those before it."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import gpu_check  # noqa: E402


def test_cpu_mode_runs_every_part_and_a_failing_part_keeps_the_figures(tmp_path):
    """Every part on the CPU, the last one (bench) made to raise by --fail right after its first figure. Parts that
    wait for interfaces not merged yet (train.py --estimate-memory, bench.py --json-out, streaming by masks under
    autocast) are only checked to be recorded, with their reason."""
    result = subprocess.run(["bash", ROOT / "experiments" / "gpu_check.sh", "--cpu", "--fail", "bench", tmp_path],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 1, result.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert list(parts) == list(gpu_check.PARTS) and report["mode"] == "cpu"
    assert report["not_ok"] == [name for name, entry in parts.items() if entry["status"] != "ok"]
    for name, entry in parts.items():  # a status that skips or fails something says what
        assert entry["status"] in ("ok", "partial", "failed", "error"), (name, entry)
        assert entry["status"] != "ok" or not entry["failed"] and not entry["skipped"], (name, entry)
        assert all(f"skipped {s}" in entry["why"] for s in entry["skipped"]) and " because " in entry["why"] \
            or not entry["skipped"], (name, entry)
    bench = parts["bench"]  # saved before it raised; the error named
    assert bench["status"] == "error" and list(bench["figures"]) == ["flags"] and "forced by --fail" in bench["why"]
    assert parts["host_waits"]["status"] == "partial" and "CUDA only" in parts["host_waits"]["why"]
    assert parts["cuda_tests"]["status"] == "partial" and "needs a GPU" in parts["cuda_tests"]["why"]
    for name in ("match_share", "equivalence", "predict"):
        assert parts[name]["status"] == "ok", (name, parts[name])
    shares = parts["match_share"]["figures"]
    assert all(shares[f"{f}/{m}"]["loss_matcher"]["calls"] >= 1 for f in gpu_check.FAMILIES for m in ("hf", "ours"))
    assert all(f["classes_in_maps"] > 2 for f in parts["equivalence"]["figures"].values())  # maps a pixel can flip in
    streaming = parts["streaming"]
    assert not [key for key in streaming["failed"] if "/queries/" in key] and "TF32" in streaming["why"]
    training = parts["training"]["figures"]
    assert (training["fp16_stopped"]["last_step"], training["fp16_resumed"]["last_step"]) == (2, 4)
    assert "training" not in report["not_ok"] or "bf16" in parts["training"]["why"]
    assert f"{9 - len(report['not_ok'])} of 9 parts ok" in result.stdout


def test_bad_flags_and_no_gpu_answer_in_one_line():
    for flags in (["--parts", "10"], ["--parts", "1", "--fail", "bench"]):
        result = subprocess.run([sys.executable, ROOT / "experiments" / "gpu_check.py", *flags], capture_output=True,
                                text=True)
        assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    if not torch.cuda.is_available():
        result = subprocess.run([sys.executable, ROOT / "experiments" / "gpu_check.py"], capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.startswith("error: no CUDA device")


def test_the_gpu_budgets_fit_8_minutes():
    assert sum(cuda_s for _, cuda_s, _ in gpu_check.PARTS.values()) <= 480


@pytest.mark.parametrize("code, failed, skipped, expected", [
    (None, [], [], "timeout"), (1, [], [], "error"), (0, ["x"], ["y because z"], "failed"),
    (0, [], ["y because z"], "partial"), (0, [], [], "ok")])
def test_a_part_is_ok_only_when_it_skipped_and_failed_nothing(code, failed, skipped, expected):
    status, why = gpu_check.status(code, {"failed": failed, "skipped": skipped}, "Traceback\nValueError: x\n")
    assert status == expected
    assert ("skipped y because z" in why) == bool(skipped) and (status != "error" or why == "ValueError: x")
