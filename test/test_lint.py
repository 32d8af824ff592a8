"""The code base passes ruff (config: ruff.toml) over the package, training and tests."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_finds_no_problems():
    targets = [p for p in ("hrpose_ros", "training", "test", "benchmarks", "scripts") if (REPO / p).is_dir()]
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", *targets],
        cwd=REPO, capture_output=True, text=True,
    )
    assert result.returncode == 0, f"ruff found problems:\n{result.stdout}{result.stderr}"
