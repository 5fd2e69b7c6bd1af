"""cli.py, the scripts' shared pieces: a path is a path (a mistyped local folder fails at once, never waiting on the
network as a hub id would), and the same rule in train.py, evaluate.py and predict.py."""
import os
import subprocess
import sys

import pytest

import cli
from test_train import ROOT


def test_a_name_is_local_when_it_starts_as_a_path_or_its_first_folder_is_here(tmp_path, monkeypatch):
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    for name in ("out/nosuch", "out", "./nosuch", "../nosuch", "/nosuch", "~/nosuch", "out/run/best"):
        assert cli.is_local(name), name
    for name in ("facebook/maskformer-swin-tiny-ade", "org/model", "nosuch"):  # only a hub id can mean these
        assert not cli.is_local(name), name


@pytest.mark.parametrize("script,flag", [("train.py", "--model"), ("evaluate.py", "--checkpoint"),
                                         ("predict.py", "--checkpoint")])
def test_a_mistyped_local_path_fails_in_one_line_before_torch_loads_and_asks_no_network(script, flag, tmp_path):
    """As a user types it: out/ exists, out/nosuch does not, and HF_HUB_OFFLINE is unset, so that a hub id would be
    looked up on the network (here a closed port: HF's retries would show). The script must say so at once: before
    torch and transformers load, which is what takes seconds."""
    (tmp_path / "out").mkdir()
    (tmp_path / "video.mp4").write_bytes(b"")  # predict.py's input; never opened, the checkpoint is checked first
    code = ("import runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules or 'transformers' in sys.modules)")
    inputs = ["video.mp4"] if script == "predict.py" else []
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code, str(ROOT / script), *inputs, flag, "out/nosuch"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    status, loaded = result.stdout.split()
    assert (status, loaded) == ("2", "False"), result.stderr
    assert result.stderr == f"error: {flag} out/nosuch: no such folder\n"
