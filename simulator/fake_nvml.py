"""Build the fake libnvidia-ml.so.1 and write the state it answers from.

The library (fake_nvml.c) lets the exporter run its real NVML code path, through pynvml's real
ctypes bindings, on machines without an NVIDIA GPU: the tests, and the live demo, which moves
the simulated GPU's used memory while the exporter runs. Run a process against it with
``env_for(lib_dir, state_file)`` added to its environment (LD_LIBRARY_PATH must be set when
the process starts).

Command line (for the demo)::

    python -m simulator.fake_nvml build DIR
    python -m simulator.fake_nvml init STATE [--gpus N] [--total-mib MIB] [--used-mib MIB]
    python -m simulator.fake_nvml set STATE [--gpu I] [--used-mib MIB] [--error CODE]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

SOURCE: Final = Path(__file__).with_name("fake_nvml.c")
LIB_NAME: Final = "libnvidia-ml.so.1"
STATE_ENV: Final = "MODEL_FLEET_FAKE_NVML_STATE"
MIB: Final = 1024 * 1024

# NVML return codes the tests and the demo use.
NVML_ERROR_NOT_SUPPORTED: Final = 3
NVML_ERROR_DRIVER_NOT_LOADED: Final = 9
NVML_ERROR_FUNCTION_NOT_FOUND: Final = 13
NVML_ERROR_GPU_IS_LOST: Final = 15


class BuildError(RuntimeError):
    """The C compiler is missing or failed."""


def build(out_dir: str | os.PathLike[str], *, cc: str | None = None) -> Path:
    """Compile the fake library into ``out_dir`` (if not already current); return the dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lib = out / LIB_NAME
    if lib.exists() and lib.stat().st_mtime >= SOURCE.stat().st_mtime:
        return out
    compiler = cc or os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not compiler:
        raise BuildError("no C compiler found: install gcc (scripts/bootstrap does)")
    tmp = out / f".{LIB_NAME}.{os.getpid()}"
    cmd = [compiler, "-shared", "-fPIC", "-O2", "-pthread", "-o", str(tmp), str(SOURCE)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"{' '.join(cmd)} failed:\n{result.stderr}")
    os.replace(tmp, lib)
    return out


def env_for(lib_dir: str | os.PathLike[str], state_file: str | os.PathLike[str]) -> dict[str, str]:
    """Environment entries that make a new process load the fake library and its state."""
    previous = os.environ.get("LD_LIBRARY_PATH")
    path = str(lib_dir) if not previous else f"{lib_dir}{os.pathsep}{previous}"
    return {"LD_LIBRARY_PATH": path, STATE_ENV: str(state_file)}


@dataclass(frozen=True)
class FakeGpu:
    """One simulated GPU; memory in bytes, processes as {pid: bytes}."""

    name: str = "NVIDIA GeForce RTX 3060"
    uuid: str = "GPU-5f2b6c1e-8a43-4d0e-9b7a-000000000000"
    total: int = 12 * 1024 * MIB
    used: int = 0
    reserved: int = 300 * MIB
    free: int | None = None
    error: int = 0
    processes: Mapping[int, int] = field(default_factory=dict)
    graphics_processes: Mapping[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FakeNvmlState:
    """Everything the fake library answers."""

    gpus: Sequence[FakeGpu] = (FakeGpu(),)
    init_error: int = 0
    driver_version: str = "550.54.15"
    function_errors: Mapping[str, int] = field(default_factory=dict)

    def render(self) -> str:
        """The state file's text."""
        lines = [
            "# fake NVML state (simulator/fake_nvml.c)",
            f"init_error={self.init_error}",
            f"driver_version={self.driver_version}",
        ]
        for i, g in enumerate(self.gpus):
            lines += [
                f"gpu.{i}.name={g.name}",
                f"gpu.{i}.uuid={g.uuid}",
                f"gpu.{i}.total={g.total}",
                f"gpu.{i}.reserved={g.reserved}",
                f"gpu.{i}.used={g.used}",
                f"gpu.{i}.error={g.error}",
                f"gpu.{i}.processes={_procs(g.processes)}",
                f"gpu.{i}.graphics_processes={_procs(g.graphics_processes)}",
            ]
            if g.free is not None:
                lines.append(f"gpu.{i}.free={g.free}")
        lines += [f"error.{fn}={code}" for fn, code in self.function_errors.items()]
        return "\n".join(lines) + "\n"

    def write(self, path: str | os.PathLike[str]) -> None:
        """Replace the state file atomically, so the library never reads half of it."""
        target = Path(path)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        with os.fdopen(fd, "w") as f:
            f.write(self.render())
        os.replace(tmp, target)


def _procs(procs: Mapping[int, int]) -> str:
    return ",".join(f"{pid}:{used}" for pid, used in procs.items())


def read_state(path: str | os.PathLike[str]) -> FakeNvmlState:
    """Parse a state file written by ``FakeNvmlState.write``."""
    values: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key] = value
    gpus: list[FakeGpu] = []
    while f"gpu.{len(gpus)}.name" in values:
        p = f"gpu.{len(gpus)}."
        gpus.append(
            FakeGpu(
                name=values[p + "name"],
                uuid=values.get(p + "uuid", ""),
                total=int(values.get(p + "total", "0")),
                used=int(values.get(p + "used", "0")),
                reserved=int(values.get(p + "reserved", "0")),
                free=int(values[p + "free"]) if p + "free" in values else None,
                error=int(values.get(p + "error", "0")),
                processes=_parse_procs(values.get(p + "processes", "")),
                graphics_processes=_parse_procs(values.get(p + "graphics_processes", "")),
            )
        )
    return FakeNvmlState(
        gpus=tuple(gpus),
        init_error=int(values.get("init_error", "0")),
        driver_version=values.get("driver_version", "550.54.15"),
        function_errors={k[6:]: int(v) for k, v in values.items() if k.startswith("error.")},
    )


def _parse_procs(text: str) -> dict[int, int]:
    procs: dict[int, int] = {}
    for item in filter(None, text.split(",")):
        pid, _, used = item.partition(":")
        procs[int(pid)] = int(used)
    return procs


def fleet_of_gpus(count: int, *, total_mib: int = 12 * 1024, used_mib: int = 0) -> FakeNvmlState:
    """``count`` identical GPUs with distinct UUIDs."""
    return FakeNvmlState(
        gpus=tuple(
            FakeGpu(
                name="NVIDIA GeForce RTX 3060",
                uuid=f"GPU-5f2b6c1e-8a43-4d0e-9b7a-{i:012d}",
                total=total_mib * MIB,
                used=used_mib * MIB,
            )
            for i in range(count)
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The demo's command line: build the library, write or change the state."""
    parser = argparse.ArgumentParser(prog="python -m simulator.fake_nvml", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile the fake libnvidia-ml.so.1 into DIR")
    b.add_argument("dir")
    i = sub.add_parser("init", help="write a fresh state file")
    i.add_argument("state")
    i.add_argument("--gpus", type=int, default=1)
    i.add_argument("--total-mib", type=int, default=12 * 1024)
    i.add_argument("--used-mib", type=int, default=0)
    s = sub.add_parser("set", help="change one GPU of an existing state file")
    s.add_argument("state")
    s.add_argument("--gpu", type=int, default=0)
    s.add_argument("--used-mib", type=int)
    s.add_argument("--error", type=int, help="NVML return code for this GPU (15: GPU lost)")
    s.add_argument("--init-error", type=int, help="NVML return code for nvmlInit (9: no driver)")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build(args.dir) / LIB_NAME)
    elif args.command == "init":
        fleet_of_gpus(args.gpus, total_mib=args.total_mib, used_mib=args.used_mib).write(args.state)
    else:
        state = read_state(args.state)
        gpus = list(state.gpus)
        if not 0 <= args.gpu < len(gpus):
            parser.error(f"no GPU {args.gpu} in {args.state} ({len(gpus)} GPUs)")
        g = gpus[args.gpu]
        if args.used_mib is not None:
            g = replace(g, used=args.used_mib * MIB)
        if args.error is not None:
            g = replace(g, error=args.error)
        gpus[args.gpu] = g
        state = replace(state, gpus=tuple(gpus))
        if args.init_error is not None:
            state = replace(state, init_error=args.init_error)
        state.write(args.state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
