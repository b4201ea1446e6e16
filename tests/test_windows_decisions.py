"""Off-peak step up, what the windows change: the decision, the status and check-config, and
the whole remediator (the HTTP service, the CLI on the stand-in Ollama)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from remediator.app.service import create_app
from remediator.cli import main as cli
from remediator.config import MIB, AutoUpgrade, FleetConfig, parse_config, window_notes
from remediator.config.windows import parse_window
from remediator.domain.decisions import AlertRef, choose_upgrade
from remediator.domain.state import FleetState
from remediator.domain.stepup import choose_auto_upgrade
from remediator.report.queries import ExitCode
from remediator.store.state import StateStore
from simulator.fake_ollama import FakeOllama
from tests.test_service import TOKEN, RecordingActions, drain, payload, wait_for
from tests.test_windows import BERLIN, at

# --- the decision ----------------------------------------------------------------------------

FRIDAY_NOON = at("UTC", 2026, 11, 27, 12)
FRIDAY_NIGHT = at("UTC", 2026, 11, 27, 23)


def windowed(*windows: str, **kw: Any) -> FleetConfig:
    return FleetConfig(
        name="f",
        auto_upgrade=AutoUpgrade(
            enabled=True,
            quiet_seconds=600,
            failed_quiet_seconds=3600,
            headroom_mb=100,
            windows=tuple(parse_window(w) for w in windows),
            timezone="UTC",
        ),
        **kw,
    )


def on(cfg: FleetConfig, index: int) -> FleetState:
    return FleetState(current_model=cfg.ladder[index].name, index=index, last_switch_at=1.0)


def test_outside_every_window_the_automatic_step_up_never_happens() -> None:
    cfg = windowed("Mon-Fri 22:00-06:00")
    d = choose_auto_upgrade(cfg, on(cfg, 3), FRIDAY_NOON, free_vram_bytes=8000 * MIB)
    assert (d.target, d.reason) == (None, "outside_window")
    assert d.detail == (
        "outside the step-up windows (Mon-Fri 22:00-06:00); the next opens Fri 2026-11-27 22:00 UTC"
    )
    # A person is never held back by the windows.
    assert choose_upgrade(cfg, on(cfg, 3), FRIDAY_NOON).target == 2
    # An alert already handled is a duplicate first.
    fs = on(cfg, 3)
    fs.processed_alerts["k"] = 5.0
    ref = AlertRef("k", 2.0)
    assert choose_auto_upgrade(cfg, fs, FRIDAY_NOON, alert=ref).reason == "duplicate"


def test_inside_a_window_the_step_up_goes_as_high_as_the_free_vram_allows() -> None:
    cfg = windowed("Mon-Fri 22:00-06:00")
    # On qwen2.5 (397 MB): llama3.2 (2048) + 100 fits in 397 + 1800 -> the top at once.
    top = choose_auto_upgrade(cfg, on(cfg, 3), FRIDAY_NIGHT, free_vram_bytes=1800 * MIB)
    assert (top.target, top.reason) == (0, "step_up_fits")
    assert top.detail == (
        "qwen2.5:0.5b -> llama3.2:3b (3 rungs) inside a step-up window: 2048 MB + 100 MB "
        "headroom fits in 2197 MB"
    )
    # Room for tinyllama (637) only: one rung.
    one = choose_auto_upgrade(cfg, on(cfg, 3), FRIDAY_NIGHT, free_vram_bytes=400 * MIB)
    assert (one.target, one.reason) == (2, "step_up")
    # No measurement: one rung, as without windows.
    blind = choose_auto_upgrade(cfg, on(cfg, 3), FRIDAY_NIGHT)
    assert (blind.target, blind.reason) == (2, "step_up")
    # Not even the next rung fits.
    short = choose_auto_upgrade(cfg, on(cfg, 3), FRIDAY_NIGHT, free_vram_bytes=300 * MIB)
    assert (short.target, short.reason) == (None, "no_headroom")
    # On tinyllama, phi3:mini (2200) does not fit but llama3.2 (2048) above it does.
    skip = choose_auto_upgrade(cfg, on(cfg, 2), FRIDAY_NIGHT, free_vram_bytes=1520 * MIB)
    assert (skip.target, skip.reason) == (0, "step_up_fits")
    # The quiet period still holds inside a window.
    fs = on(cfg, 3)
    fs.last_switch_at = FRIDAY_NIGHT - 300  # past the cooldown, inside the quiet period
    assert choose_auto_upgrade(cfg, fs, FRIDAY_NIGHT).reason == "quiet_period"


def test_without_windows_the_step_up_is_one_rung_at_any_hour() -> None:
    cfg = windowed()
    for now in (FRIDAY_NOON, FRIDAY_NIGHT):
        d = choose_auto_upgrade(cfg, on(cfg, 3), now, free_vram_bytes=8000 * MIB)
        assert (d.target, d.reason) == (2, "step_up")


# --- status, check-config and the whole remediator -------------------------------------------


def service_config(tmp_path: Path, windows: list[str]) -> Any:
    return parse_config(
        {
            "state_file": str(tmp_path / "state.json"),
            "fleets": {
                "default": {
                    "cooldown_seconds": 0,
                    "auto_upgrade": {
                        "enabled": True,
                        "quiet_seconds": 60,
                        "failed_quiet_seconds": 120,
                        "windows": windows,
                        "timezone": "UTC",
                    },
                }
            },
        },
        "test",
    )


def test_the_upgrade_alert_waits_for_a_window_and_a_person_does_not(tmp_path: Path) -> None:
    config = service_config(tmp_path, ["Mon-Fri 22:00-06:00"])
    with StateStore(config).transaction() as state:
        state.fleets["default"].apply_switch(
            config.fleets["default"], 2, direction="down", trigger="manual", reason="", now=1.0
        )
    actions = RecordingActions()
    auth = {"Authorization": f"Bearer {TOKEN}"}

    apps = []

    def app_at(now: float) -> Any:
        app = create_app(config, token=TOKEN, actions_for=actions.for_fleet, clock=lambda: now)
        apps.append(app)
        return app.test_client()

    client = app_at(FRIDAY_NOON)
    resp = client.post(
        "/webhook/alertmanager", json=payload("alertmanager_upgrade.json"), headers=auth
    )
    # Deferred until the window opens: judged again then, if it still fires.
    [deferred] = resp.get_json()["deferred"]
    assert deferred["reason"] == "outside_window"
    assert deferred["detail"].endswith("the next opens Fri 2026-11-27 22:00 UTC")
    assert deferred["acts_at"] == "2026-11-27T22:00:00+00:00"
    [shown] = client.get("/status").get_json()["deferred_alerts"]
    assert (shown["direction"], shown["trigger"], shown["reason"]) == (
        "up",
        "auto",
        "outside_window",
    )
    step_up = client.get("/status").get_json()["auto_upgrade"]
    assert step_up == {
        "enabled": True,
        "allowed_now": False,
        "windows": ["Mon-Fri 22:00-06:00"],
        "timezone": "UTC",
        "window_open": False,
        "window_closes_at": None,
        "next_window_at": "2026-11-27T22:00:00+00:00",
    }
    assert actions.plans == []

    # Alertmanager delivers the same alert again once the window is open: it acts now.
    client = app_at(FRIDAY_NIGHT)
    assert client.get("/status").get_json()["auto_upgrade"]["window_closes_at"] == (
        "2026-11-28T06:00:00+00:00"
    )
    resp = client.post(
        "/webhook/alertmanager", json=payload("alertmanager_upgrade.json"), headers=auth
    )
    assert resp.get_json()["outcome"] == "accepted"
    wait_for(lambda: StateStore(config).read().fleets["default"].index == 1)
    record = StateStore(config).read().fleets["default"].history[-1]
    assert (record.direction, record.trigger) == ("up", "auto")

    # A person steps up outside every window.
    client = app_at(FRIDAY_NOON + 7 * 86400)
    resp = client.post("/upgrade", headers=auth)
    assert resp.status_code == 200 and resp.get_json()["to"] == "llama3.2:3b"
    for app in apps:
        drain(app)


def test_cli_status_and_check_config_show_the_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("MODEL_FLEET_CONFIG", "MODEL_FLEET_STATE_FILE", "MODEL_FLEET_URL"):
        monkeypatch.delenv(var, raising=False)
    # A one-minute window twelve hours from now: closed while the test runs.
    opens = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(hours=12)
    window = f"{opens:%H:%M}-{opens + timedelta(minutes=1):%H:%M}"
    with FakeOllama() as ollama:
        fleet = {
            "server": {"url": ollama.url},
            "containers": {"use_labels": False},
            "app_config": [{"path": str(tmp_path / "app.env"), "format": "env"}],
            "auto_upgrade": {"enabled": True, "windows": [window], "timezone": "UTC"},
        }
        (tmp_path / "model-fleet.yaml").write_text(yaml.safe_dump({"fleets": {"gpu0": fleet}}))
        assert cli.main(["check-config"]) == ExitCode.OK
        out, err = capsys.readouterr()
        assert json.loads(out)["fleets"]["gpu0"]["auto_upgrade"]["windows"] == [window]
        when = opens.strftime("%a %Y-%m-%d %H:%M UTC")
        assert (
            f"note: fleet gpu0: automatic step up only inside {window} (UTC): closed now; "
            f"next opening {when}"
        ) in err
        assert cli.main(["downgrade"]) == ExitCode.OK
        capsys.readouterr()
        assert cli.main(["status"]) == ExitCode.OK
        step_up = json.loads(capsys.readouterr().out)["auto_upgrade"]
        assert (step_up["allowed_now"], step_up["next_window_at"]) == (
            False,
            opens.isoformat(timespec="seconds"),
        )
        # The windows never hold a person back: a real switch on the stand-in Ollama.
        assert cli.main(["upgrade"]) == ExitCode.OK
        assert json.loads(capsys.readouterr().out)["to"] == "llama3.2:3b"


def test_check_config_notes_say_whether_a_window_is_open() -> None:
    config = parse_config(
        {
            "fleets": {
                "a": {"auto_upgrade": {"windows": ["Mon-Fri 22:00-06:00"], "timezone": BERLIN}},
                "b": {"auto_upgrade": {"windows": ["00:00-24:00"], "timezone": "UTC"}},
                "c": {},
            }
        }
    )
    assert window_notes(config, at(BERLIN, 2026, 11, 27, 23)) == [
        "fleet a: automatic step up only inside Mon-Fri 22:00-06:00 (Europe/Berlin): open now "
        "until Sat 2026-11-28 06:00 CET; next opening Mon 2026-11-30 22:00 CET",
        "fleet b: automatic step up only inside 00:00-24:00 (UTC): open now, and for good; "
        "next opening none found",
    ]


def test_metrics_say_whether_the_window_is_open(tmp_path: Path) -> None:
    """ModelFleetCanStepUp waits for model_fleet_step_up_window_open (alert_rules/)."""
    opens = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(hours=12)
    closed = f"{opens:%H:%M}-{opens + timedelta(minutes=1):%H:%M}"
    config = parse_config(
        {
            "state_file": str(tmp_path / "state.json"),
            "fleets": {
                "night": {"auto_upgrade": {"windows": [closed], "timezone": "UTC"}},
                "always": {},
            },
        }
    )
    app = create_app(config, token=TOKEN, actions_for=RecordingActions().for_fleet)
    text = app.test_client().get("/metrics").get_data(as_text=True)
    host = f'host="{config.host}"'
    assert f'model_fleet_step_up_window_open{{fleet="night",{host}}} 0.0' in text
    assert f'model_fleet_step_up_window_open{{fleet="always",{host}}} 1.0' in text
