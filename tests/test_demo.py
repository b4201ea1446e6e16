"""The README's main-job command (scripts/demo runs ``python -m simulator.demo``) works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[1]


def test_the_demo_steps_down_until_the_model_fits_and_prints_a_timeline() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_FLEET_")}
    result = subprocess.run(
        [sys.executable, "-m", "simulator.demo", "--exit", "--max-seconds", "180"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr[-3000:]}"
    # VRAM fills: llama3.2:3b no longer fits, phi3:mini (larger) fails too, tinyllama fits.
    order = [
        "model server logged VRAM error #3",
        "alert ModelFleetVRAMErrors fired",
        "switched llama3.2:3b -> phi3:mini (remediator,",
        "switched phi3:mini -> tinyllama:1.1b (remediator,",
        "settled: tinyllama:1.1b fits and runs without errors; app: 'app running tinyllama:1.1b'",
    ]
    positions = [out.find(line) for line in order]
    assert -1 not in positions, out
    assert positions == sorted(positions), out
    assert out.count("switched ") == 2, out
    # Each failed load prints two matching lines and counts as one error: by the third error,
    # at least the two lines of the first two and the first line of the third were counted.
    third = re.search(r"VRAM error #3 since it started \(exporter, one per failed load; (\d+)", out)
    assert third is not None and int(third.group(1)) >= 5, out
    for line in out.splitlines():
        if "switched" in line:
            assert line.lstrip().startswith("t+"), line
