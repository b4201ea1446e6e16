"""Is there a real NVIDIA GPU here? The `gpu` tests skip when there is not."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

_PROBE = (
    "import pynvml\n"
    "pynvml.nvmlInit()\n"
    "n = pynvml.nvmlDeviceGetCount()\n"
    "print(n)\n"
    "raise SystemExit(0 if n else 3)\n"
)


@functools.cache
def real_nvml_problem() -> str | None:
    """None when NVML answers with at least one GPU; else why not (no driver, no GPU...)."""
    # In a fresh process: loading NVML in the test process would pin whichever library it
    # found first, and the fake one must stay out of the probe.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_FLEET_")}
    env.pop("LD_LIBRARY_PATH", None)
    try:
        result = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "NVML did not answer within 60 s"
    if result.returncode == 3:
        return "NVML reports no GPU"
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return lines[-1] if lines else f"probe exited with {result.returncode}"
    return None
