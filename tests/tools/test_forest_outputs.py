"""tools/forest_outputs.py: where a GPU forest's run goes by where its outputs are bound. On a GPU, a short run prints
every binding's time and that the kernel computing in pinned memory gives the bits of a plain run; elsewhere it
stops with a clear message."""
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from gpu import gpu_skip_reason  # noqa: E402
from tools import forest_outputs  # noqa: E402


def test_on_a_gpu_every_binding_is_timed(capsys):
    reason = gpu_skip_reason()
    if reason:
        pytest.skip(reason)
    assert forest_outputs.main(["--hidden", "16", "--forests", "1,4", "--reps", "5"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        for name in ("pageable", "pinned_copy", "on_device", "in_pinned"):
            assert f"{name} " in line
        assert line.endswith("in_pinned's outputs equal pageable's: True")


def test_without_a_gpu_it_says_so():
    if gpu_skip_reason() is None:
        pytest.skip("this machine has a GPU")
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        forest_outputs.main(["--forests", "1", "--reps", "1"])
