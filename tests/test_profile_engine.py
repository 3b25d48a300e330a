"""benchmarks/profile_engine.py reports every op the engine runs, prepared calls included."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import profile_engine  # noqa: E402


def test_profile_names_every_op_and_conv_shape(capsys):
    import numba

    threads = str(numba.get_num_threads())  # the script sets Numba's threads: leave them as they are
    assert profile_engine.main(["--batch", "4", "--repeat", "1", "--threads", threads]) == 0
    text = capsys.readouterr().out
    ops = {line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ") and "%" in line}
    assert {"conv2d", "add_round_half_up", "avg_pool_round_half_up", "linear", "argmax"} <= ops
    conv_rows = [line for line in text.splitlines() if line.startswith("| (")]
    assert len(conv_rows) == 8  # ResNet-20's eight distinct conv shapes
    assert sum(int(r.split("|")[4]) for r in conv_rows) == 21  # layers
