"""Placement before downgrade through the remediator: a VRAM alert of a ``move_first`` fleet
moves its model server to the listed GPU with room, keeping the model, or steps it down.

The alert goes the webhook's whole way (``accept_alerts``, the journal, the commit); the free
VRAM per GPU comes from a Prometheus stand-in that answers the reader's queries as two GPUs'
NVML series would. The model server and the runtime are tests/support's in-memory ones (a
moved container cannot start without a GPU here); the last test moves a real busybox
container, whose start Docker refuses without a GPU, and finds it rolled back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import pytest
from prometheus_client import CollectorRegistry

from fleet_contract import metrics as m
from remediator.adapters.docker_engine import DockerRuntime
from remediator.adapters.prometheus import Sample
from remediator.app.remediator import Remediator
from remediator.config import MIB, Config, parse_config
from remediator.ports.runtime import ASIDE_SUFFIX, ROLE_APP, ROLE_SERVER
from remediator.report.metrics import FleetStateCollector
from remediator.report.queries import status
from remediator.store.state import StateStore
from remediator.switch.actions import FleetActions
from remediator.switch.journal import MOVE_PLANNED
from remediator.switch.live import LiveReader
from tests.support.docker_env import run_busybox
from tests.support.live_env import judge, webhook
from tests.support.memory_runtime import MemoryRuntime
from tests.support.memory_server import MemoryServer

GIB = 1024 * MIB
FLEET = "mem"
MODEL = "llama3.2:3b"  # 2048 MiB + the default 512 MiB headroom: 2560 MiB to fit


@dataclass
class FreeVRAM:
    """Prometheus as the reader asks it: each GPU's free bytes, sampled now; no error counts."""

    free: dict[str, int]
    url: str = "http://prometheus.test:9090"
    queries: list[str] = field(default_factory=list)

    def query(self, expr: str) -> list[Sample]:
        self.queries.append(expr)
        if m.GPU_MEMORY_FREE not in expr:
            return []
        if expr.startswith("min(timestamp("):
            return [Sample({}, 1.0e9)]
        wanted = re.search(r'gpu=~?"([^"]*)"', expr)
        assert wanted is not None, expr
        gpus = wanted.group(1).split("|")
        return [Sample({"gpu": g}, float(v)) for g, v in self.free.items() if g in gpus]


@dataclass
class Bench:
    config: Config
    server: MemoryServer
    runtime: MemoryRuntime
    prometheus: FreeVRAM

    def remediator(self) -> Remediator:
        fleet = self.config.fleets[FLEET]
        actions = FleetActions(fleet, self.server, self.runtime, app_probe=None)
        live = LiveReader(self.prometheus)
        return Remediator(self.config, StateStore(self.config), lambda fc: actions, live=live)

    def alert(self) -> tuple[list[Any], list[Any]]:
        return judge(self.remediator(), webhook(FLEET, "downgrade", value="5"))

    def state(self) -> Any:
        return StateStore(self.config).read().fleets[FLEET]

    def gpu_metric(self, gpu: str) -> float | None:
        registry = CollectorRegistry()
        registry.register(FleetStateCollector(self.config, StateStore(self.config)))
        return registry.get_sample_value(m.FLEET_GPU_INFO, {"fleet": FLEET, "gpu": gpu})


def make_config(
    tmp_path: Path, *, extra: dict[str, Any] | None = None, **others: dict[str, Any]
) -> Config:
    """The move_first fleet on GPUs 0 and 1 (with ``extra`` keys), and ``others`` fleets."""
    fleets: dict[str, Any] = {
        FLEET: {
            "gpus": [0, 1],
            "placement": "move_first",
            "containers": {"ready_timeout_seconds": 1},
            **(extra or {}),
        },
        **others,
    }
    return parse_config(
        {
            "state_file": str(tmp_path / "state.json"),
            "prometheus": {"url": "http://prometheus.test:9090"},
            "fleets": fleets,
        },
        "test",
    )


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    return make_bench(make_config(tmp_path), {"0": 0, "1": 8 * GIB})


def make_bench(config: Config, free: dict[str, int]) -> Bench:
    server = MemoryServer({MODEL: 2048 * MIB}, registry={"phi3:mini": 2200 * MIB})
    server.load(MODEL)
    runtime = MemoryRuntime()
    runtime.add(FLEET, ROLE_SERVER, "mem-server", lambda: None)
    runtime.add(FLEET, ROLE_APP, "mem-app", lambda: None)
    return Bench(config, server, runtime, FreeVRAM(free))


def test_gpu_0_full_and_gpu_1_with_room_the_fleet_moves_and_keeps_its_model(bench: Bench) -> None:
    accepted, ignored = bench.alert()
    assert ignored == [] and len(accepted) == 1
    assert accepted[0]["detail"].startswith(f"{MODEL}: GPU 0 -> GPU 1; GPU 1: 8192 MiB free")
    assert bench.runtime.moves == [("mem-server", "1")]
    assert bench.runtime.containers["mem-server"].gpu == "1"
    assert "mem-server" + ASIDE_SUFFIX not in bench.runtime.containers  # removed once ready
    assert bench.runtime.restarts == []  # the app reaches the copy by the same name
    assert [s for s, _ in bench.server.calls if s in ("pull", "unload")] == []
    fs = bench.state()
    assert (fs.current_model, fs.gpu, fs.journal, fs.last_failure) == (MODEL, "1", None, None)
    [record] = fs.history
    entry = record.to_dict()
    assert (entry["action"], entry["from_gpu"], entry["to_gpu"]) == ("move", "0", "1")
    assert (entry["from"], entry["to"], entry["trigger"]) == (MODEL, MODEL, "alert")
    shown = status(bench.config, StateStore(bench.config), FLEET, live=LiveReader(None))
    assert (shown["gpu"], shown["gpus"], shown["current_model"]["name"]) == ("1", ["0", "1"], MODEL)
    assert (bench.gpu_metric("1"), bench.gpu_metric("0")) == (1.0, None)
    # The reader asked the free VRAM of both listed GPUs, on the fleet's GPU's own query too.
    assert any('gpu=~"0|1"' in q for q in bench.prometheus.queries)


def test_the_journal_of_a_move_names_its_gpus_and_its_steps(bench: Bench) -> None:
    entries: list[dict[str, Any]] = []

    def seen(step: str) -> None:
        journal = StateStore(bench.config).read().fleets[FLEET].journal
        assert journal is not None
        entries.append(journal.to_dict())

    remediator = bench.remediator()
    remediator.on_step = seen
    judge(remediator, webhook(FLEET, "downgrade", value="5"))
    last = entries[-1]
    assert (last["from_gpu"], last["to_gpu"], last["planned"]) == ("0", "1", list(MOVE_PLANNED))
    assert [d.split(" ")[0] for d in last["done"]] == list(MOVE_PLANNED)


def test_both_gpus_full_the_fleet_steps_down(tmp_path: Path) -> None:
    bench = make_bench(make_config(tmp_path), {"0": 0, "1": 2559 * MIB})
    accepted, _ = bench.alert()
    assert "no move (no_gpu_fits): llama3.2:3b fits on no other listed GPU" in accepted[0]["detail"]
    assert bench.runtime.moves == []
    fs = bench.state()
    assert (fs.current_model, fs.gpu) == ("phi3:mini", None)
    assert fs.history[-1].action == "switch"
    assert bench.gpu_metric("0") == 1.0


def test_without_live_figures_there_is_no_move(tmp_path: Path) -> None:
    bench = make_bench(make_config(tmp_path), {})  # Prometheus has no free VRAM series
    accepted, _ = bench.alert()
    assert "no move (no_vram_measurement)" in accepted[0]["detail"]
    assert bench.runtime.moves == [] and bench.state().current_model == "phi3:mini"


def test_a_move_never_takes_another_fleets_headroom(tmp_path: Path) -> None:
    """Fleet "big" runs on GPU 1 and keeps 8 GiB spare there: 8 GiB free is not room enough."""
    big = {"gpu": 1, "headroom_mb": 8192, "containers": {"ready_timeout_seconds": 1}}
    bench = make_bench(make_config(tmp_path, big=big), {"0": 0, "1": 8 * GIB})
    accepted, _ = bench.alert()
    assert "fleet big's headroom" in accepted[0]["detail"]
    assert bench.runtime.moves == [] and bench.state().current_model == "phi3:mini"


def test_a_person_stepping_down_gets_a_smaller_model_not_a_move(bench: Bench) -> None:
    outcome = bench.remediator().request(FLEET, "down", reason="test")
    assert outcome.switched and bench.runtime.moves == []
    assert bench.state().current_model == "phi3:mini"


def test_a_switch_leaves_a_container_a_move_put_aside_alone(bench: Bench) -> None:
    # Left behind when its removal failed after a move: still labelled as the model server.
    bench.runtime.add(FLEET, ROLE_SERVER, "mem-server" + ASIDE_SUFFIX, lambda: None)
    outcome = bench.remediator().request(FLEET, "down", reason="test")
    assert outcome.switched and bench.state().current_model == "phi3:mini"
    assert bench.runtime.restarts == ["mem-server", "mem-app"]


def test_a_copy_that_will_not_start_is_rolled_back_like_a_failed_switch(bench: Bench) -> None:
    bench.runtime.fail("move_start", "could not select device driver nvidia")
    bench.alert()
    server = bench.runtime.containers["mem-server"]
    assert (server.ref.id, server.status, server.gpu) == ("id-mem-server", "running", None)
    fs = bench.state()
    assert (fs.gpu, fs.current_model, fs.journal, fs.history) == (None, MODEL, None, [])
    assert fs.last_failure is not None and fs.last_failure["step"] == "move"
    assert "could not select device driver nvidia" in fs.last_failure["message"]


def test_a_copy_that_is_not_ready_is_taken_back(bench: Bench) -> None:
    crashes = [3]  # the copy's first start exits 3; the old container starts fine again
    bench.runtime.containers["mem-server"].start = lambda: crashes.pop() if crashes else None
    bench.alert()
    assert bench.runtime.containers["mem-server"].ref.id == "id-mem-server"
    assert set(bench.runtime.containers) == {"mem-server", "mem-app"}
    fs = bench.state()
    assert fs.gpu is None and fs.last_failure is not None and fs.last_failure["step"] == "verify"


def with_gpu_env(tmp_path: Path, free: dict[str, int]) -> tuple[Bench, Path]:
    """A bench whose fleet names compose's .env (MODEL_FLEET_GPU=0) in its gpu_config."""
    env = tmp_path / "compose" / ".env"
    env.parent.mkdir()
    env.write_text("DOCKER_GID=999\nMODEL_FLEET_GPU=0\nOLLAMA_VERSION=0.12.6\n")
    env.chmod(0o600)
    config = make_config(tmp_path, extra={"gpu_config": [{"path": str(env)}]})
    return make_bench(config, free), env


def test_a_move_writes_the_new_gpu_into_the_gpu_config(tmp_path: Path) -> None:
    bench, env = with_gpu_env(tmp_path, {"0": 0, "1": 8 * GIB})
    bench.alert()
    assert bench.state().gpu == "1"
    # Only the GPU's line changed; the file keeps its other lines and its mode.
    assert env.read_text() == "DOCKER_GID=999\nMODEL_FLEET_GPU=1\nOLLAMA_VERSION=0.12.6\n"
    assert env.stat().st_mode & 0o777 == 0o600
    entry = bench.state().history[-1].to_dict()
    assert entry["action"] == "move"


def test_a_move_taken_back_leaves_the_gpu_config_as_it_was(tmp_path: Path) -> None:
    bench, env = with_gpu_env(tmp_path, {"0": 0, "1": 8 * GIB})
    before = env.read_bytes()
    bench.runtime.fail("move_start", "could not select device driver nvidia")
    bench.alert()
    assert bench.state().last_failure is not None
    assert env.read_bytes() == before


def test_a_gpu_config_that_cannot_be_written_stops_the_move_before_any_container(
    tmp_path: Path,
) -> None:
    bench, env = with_gpu_env(tmp_path, {"0": 0, "1": 8 * GIB})
    env.unlink()
    env.mkdir()  # not a file: neither read nor replaced (a permission would not stop root)
    bench.alert()
    fs = bench.state()
    assert fs.last_failure is not None and fs.last_failure["step"] == "write_gpu_config"
    assert str(env) in fs.last_failure["message"]
    assert bench.runtime.moves == [] and fs.gpu is None
    assert env.is_dir()


class Crash(BaseException):
    """Stands for the process dying at a journal step (past the switch thread's own catch)."""


def move_dying_at(bench: Bench, step: str) -> None:
    """An alert's move that dies once its journal records ``step``."""

    def die(done: str) -> None:
        if done == step:
            raise Crash(done)

    remediator = bench.remediator()
    remediator.on_step = die
    with pytest.raises(Crash):
        remediator.accept_alerts(webhook(FLEET, "downgrade", value="5")).pending[0].run()


@pytest.mark.parametrize(
    ("step", "outcome", "gpu"),
    [("moved_ollama", "rolled_back", None), ("verified_ollama", "rolled_forward", "1")],
)
def test_an_interrupted_move_is_resolved(
    bench: Bench, step: str, outcome: str, gpu: str | None
) -> None:
    move_dying_at(bench, step)
    assert "mem-server" + ASIDE_SUFFIX in bench.runtime.containers
    assert bench.remediator().resolve_open(bench.config.fleets[FLEET]) == outcome
    fs = bench.state()
    assert (fs.journal, fs.gpu, fs.current_model) == (None, gpu, MODEL)
    assert fs.history[-1].action == "move" and fs.history[-1].recovery == outcome
    assert set(bench.runtime.containers) == {"mem-server", "mem-app"}
    assert bench.runtime.containers["mem-server"].status == "running"
    assert bench.runtime.containers["mem-server"].gpu == gpu


@pytest.mark.parametrize(
    ("step", "gpu"), [("moved_ollama", "0"), ("verified_ollama", "1"), ("move_finished", "1")]
)
def test_an_interrupted_move_leaves_the_gpu_config_naming_where_the_server_runs(
    tmp_path: Path, step: str, gpu: str
) -> None:
    bench, env = with_gpu_env(tmp_path, {"0": 0, "1": 8 * GIB})

    move_dying_at(bench, step)
    assert "MODEL_FLEET_GPU=1" in env.read_text()  # written before the containers moved
    bench.remediator().resolve_open(bench.config.fleets[FLEET])
    assert f"MODEL_FLEET_GPU={gpu}\n" in env.read_text()
    assert (bench.state().gpu or "0") == gpu


def test_a_real_container_whose_move_docker_refuses_runs_again_under_its_name(
    docker_client: docker.DockerClient, busybox_image: str, tmp_path: Path
) -> None:
    """No GPU here: Docker refuses the copy's start; the old container is back and running."""
    old = run_busybox(docker_client, "sleep 600", labels={"model-fleet.role": "ollama"})
    config = parse_config(
        {
            "state_file": str(tmp_path / "state.json"),
            "prometheus": {"url": "http://prometheus.test:9090"},
            "fleets": {
                FLEET: {
                    "gpus": [0, 1],
                    "placement": "move_first",
                    # busybox's sh ignores SIGTERM: a 1 s stop timeout (not the shipped 10 s).
                    "containers": {
                        "use_labels": False,
                        "server": [old.name],
                        "stop_timeout_seconds": 1,
                    },
                }
            },
        },
        "test",
    )
    server = MemoryServer({MODEL: 2048 * MIB})
    runtime = DockerRuntime()
    try:
        bench = Bench(config, server, MemoryRuntime(), FreeVRAM({"0": 0, "1": 8 * GIB}))
        actions = FleetActions(config.fleets[FLEET], server, runtime, app_probe=None)
        remediator = Remediator(
            config, StateStore(config), lambda fc: actions, live=LiveReader(bench.prometheus)
        )
        judge(remediator, webhook(FLEET, "downgrade", value="5"))
        old.reload()
        assert (old.name, old.status) == (old.name, "running")
        names = [c.name for c in docker_client.containers.list(all=True)]
        assert names.count(old.name) == 1 and old.name + ASIDE_SUFFIX not in names
        fs = bench.state()
        assert (fs.gpu, fs.history, fs.journal) == (None, [], None)
        assert fs.last_failure is not None and fs.last_failure["step"] == "move"
        assert "could not select device driver" in fs.last_failure["message"]
    finally:
        runtime.close()
        old.remove(force=True)
