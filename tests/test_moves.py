"""Placement before downgrade, the pure decision: move to the listed GPU with the most free
VRAM where the current model fits with headroom, or say why not; other fleets keep theirs."""

from __future__ import annotations

from remediator.config import MIB, FleetConfig
from remediator.domain.decisions import AlertRef
from remediator.domain.moves import Neighbour, choose_move
from remediator.domain.state import FleetState

NOW = 1_000_000.0
GIB = 1024 * MIB


def fleet(**kw: object) -> FleetConfig:
    base: dict[str, object] = {"gpus": ("0", "1", "2"), "placement": "move_first"}
    return FleetConfig(name="f", **{**base, **kw})  # type: ignore[arg-type]


def at(cfg: FleetConfig, index: int = 0, **kw: object) -> FleetState:
    return FleetState(current_model=cfg.ladder[index].name, index=index, **kw)  # type: ignore[arg-type]


def test_moves_to_the_listed_gpu_with_the_most_free_vram_keeping_its_model() -> None:
    cfg = fleet()  # llama3.2:3b, 2048 MiB + 512 MiB headroom
    d = choose_move(cfg, at(cfg), NOW, free_by_gpu={"0": 0, "1": 3 * GIB, "2": 5 * GIB})
    assert (d.target, d.gpu, d.reason) == (0, "2", "move")
    assert d.detail.startswith("llama3.2:3b: GPU 0 -> GPU 2; GPU 2: 5120 MiB free")


def test_a_gpu_where_the_model_fits_without_its_headroom_is_no_place() -> None:
    cfg = fleet(gpus=("0", "1"))
    d = choose_move(cfg, at(cfg), NOW, free_by_gpu={"0": 0, "1": 2559 * MIB})
    assert (d.target, d.gpu, d.reason) == (None, None, "no_gpu_fits")
    assert "GPU 1: 2559 MiB free, llama3.2:3b needs 2560 MiB (2048 MiB + 512 MiB" in d.detail
    fits = choose_move(cfg, at(cfg), NOW, free_by_gpu={"0": 0, "1": 2560 * MIB})
    assert fits.gpu == "1"


def test_the_current_rung_is_what_must_fit() -> None:
    cfg = fleet(gpus=("0", "1"))
    d = choose_move(cfg, at(cfg, 2), NOW, free_by_gpu={"0": 0, "1": 1200 * MIB})
    assert (d.target, d.gpu) == (2, "1")  # tinyllama 637 MiB + 512 fits in 1200


def test_after_a_move_the_fleet_judges_from_its_new_gpu() -> None:
    cfg = fleet(gpus=("0", "1"))
    d = choose_move(cfg, at(cfg, gpu="1"), NOW, free_by_gpu={"0": 8 * GIB, "1": 0})
    assert (d.gpu, d.detail.split(";")[0]) == ("0", "llama3.2:3b: GPU 1 -> GPU 0")


def test_another_fleets_headroom_is_kept() -> None:
    cfg = fleet(gpus=("0", "1"))
    other = Neighbour("g", "1", 2048)
    d = choose_move(cfg, at(cfg), NOW, free_by_gpu={"0": 0, "1": 4095 * MIB}, neighbours=[other])
    assert d.reason == "no_gpu_fits"
    assert "needs 4096 MiB (2048 MiB + 2048 MiB, fleet g's headroom)" in d.detail
    elsewhere = Neighbour("g", "0", 2048)
    d = choose_move(cfg, at(cfg), NOW, free_by_gpu={"0": 0, "1": 4 * GIB}, neighbours=[elsewhere])
    assert d.gpu == "1"


def test_no_live_figures_no_move() -> None:
    cfg = fleet()
    d = choose_move(cfg, at(cfg), NOW, free_by_gpu=None, vram_source="Prometheus unreachable")
    assert (d.gpu, d.reason) == (None, "no_vram_measurement")
    assert "Prometheus unreachable" in d.detail
    d = choose_move(cfg, at(cfg), NOW, free_by_gpu={"0": 0, "1": None, "2": None})
    assert d.reason == "no_gpu_fits"
    assert "GPU 1 has no free VRAM sample" in d.detail


def test_stay_never_moves_and_the_switch_gates_hold_a_move() -> None:
    cfg = fleet(placement="stay")
    assert choose_move(cfg, at(cfg), NOW, free_by_gpu={"1": 8 * GIB}).reason == "placement_stay"
    cfg = fleet()
    cooling = at(cfg, last_switch_at=NOW - 10)
    d = choose_move(cfg, cooling, NOW, free_by_gpu={"1": 8 * GIB})
    assert (d.gpu, d.reason) == (None, "cooldown")
    seen = at(cfg, processed_alerts={"k": NOW - 5})
    d = choose_move(cfg, seen, NOW, free_by_gpu={"1": 8 * GIB}, alert=AlertRef("k", NOW - 60))
    assert d.reason == "duplicate"


def test_a_move_is_recorded_and_the_state_keeps_the_gpu() -> None:
    cfg = fleet()
    fs = at(cfg, 1)
    record = fs.apply_move(cfg, "2", trigger="alert", reason="room", now=NOW, alert_key="k")
    assert (fs.gpu, fs.current_gpu(cfg), fs.index, fs.last_switch_at) == ("2", "2", 1, NOW)
    assert record.to_dict()["action"] == "move"
    assert (record.to_dict()["from_gpu"], record.to_dict()["to_gpu"]) == ("0", "2")
    again = FleetState.from_dict(fs.to_dict())
    assert (again.gpu, again.history[-1].action) == ("2", "move")
    old = fs.to_dict()
    del old["gpu"]  # a state file from before moves
    assert FleetState.from_dict(old).current_gpu(cfg) == "0"
