"""Pure decisions: every reason a switch is refused, and the three downgrade policies."""

from __future__ import annotations

from remediator.config import MIB, AutoUpgrade, FleetConfig, Ladder, Rung
from remediator.domain.decisions import (
    HOUR,
    AlertRef,
    cap_clears_at,
    choose_downgrade,
    choose_reset,
    choose_upgrade,
    upgrade_failed,
)
from remediator.domain.records import SwitchRecord
from remediator.domain.state import FleetState
from remediator.domain.stepup import choose_auto_upgrade

NOW = 1_000_000.0


def fleet(**kw: object) -> FleetConfig:
    return FleetConfig(name="f", **kw)  # type: ignore[arg-type]


def at(cfg: FleetConfig, index: int, **kw: object) -> FleetState:
    return FleetState(current_model=cfg.ladder[index].name, index=index, **kw)  # type: ignore[arg-type]


def test_next_policy_takes_the_next_rung_even_when_it_is_larger() -> None:
    cfg = fleet()
    d = choose_downgrade(cfg, at(cfg, 0), NOW)
    assert (d.target, d.reason) == (1, "next")
    assert "phi3:mini" in d.detail


def test_next_smaller_skips_rungs_that_free_no_vram() -> None:
    cfg = fleet(policy="next-smaller")
    d = choose_downgrade(cfg, at(cfg, 0), NOW)
    assert (d.target, d.reason) == (2, "next_smaller")
    assert "skipping 1 rung" in d.detail
    assert choose_downgrade(cfg, at(cfg, 1), NOW).target == 2


def test_next_smaller_with_no_smaller_rung() -> None:
    cfg = fleet(
        policy="next-smaller", ladder=Ladder((Rung("a", 100), Rung("b", 100), Rung("c", 200)))
    )
    d = choose_downgrade(cfg, at(cfg, 0), NOW)
    assert (d.target, d.reason) == (None, "no_smaller_rung")


def test_fits_takes_the_largest_lower_rung_that_fits_free_vram_plus_headroom() -> None:
    cfg = fleet(policy="fits", headroom_mb=100)
    # On llama (2048) with 0 free: 2048 available after unloading it.
    # phi3 2200+100 does not fit; tinyllama 637+100 fits; qwen fits too but is smaller.
    d = choose_downgrade(cfg, at(cfg, 0), NOW, free_vram_bytes=0)
    assert (d.target, d.reason) == (2, "fits")
    # With 300 MB free, 2348 MB are available: phi3 (2300 with headroom) fits.
    d = choose_downgrade(cfg, at(cfg, 0), NOW, free_vram_bytes=300 * MIB)
    assert (d.target, d.reason) == (1, "fits")


def test_fits_takes_the_smallest_when_nothing_fits_and_falls_back_without_a_measurement() -> None:
    cfg = fleet(policy="fits", headroom_mb=4000)
    d = choose_downgrade(cfg, at(cfg, 0), NOW, free_vram_bytes=0)
    assert (d.target, d.reason) == (3, "nothing_fits")
    d = choose_downgrade(cfg, at(cfg, 0), NOW, free_vram_bytes=None)
    assert (d.target, d.reason) == (2, "no_vram_measurement")


def test_at_smallest_and_unknown_fleet() -> None:
    cfg = fleet()
    assert choose_downgrade(cfg, at(cfg, 3), NOW).reason == "at_smallest"
    assert choose_downgrade(None, None, NOW).reason == "unknown_fleet"
    assert choose_upgrade(None, None, NOW).reason == "unknown_fleet"
    assert choose_reset(None, None).reason == "unknown_fleet"


def test_cooldown_holds_automatic_switches_but_not_a_person() -> None:
    cfg = fleet(cooldown_seconds=60)
    fs = at(cfg, 1, last_switch_at=NOW - 30)
    d = choose_downgrade(cfg, fs, NOW, trigger="alert", alert=AlertRef("k", NOW - 5))
    assert (d.target, d.reason) == (None, "cooldown")
    assert "30 s left" in d.detail
    assert d.retry_at == NOW + 30  # the refusal passes by itself: when the cooldown ends
    assert choose_downgrade(cfg, fs, NOW, trigger="manual").target == 2
    assert (
        choose_downgrade(cfg, fs, NOW + 31, trigger="alert", alert=AlertRef("k", NOW)).target == 2
    )


def test_stale_and_duplicate_alerts() -> None:
    cfg = fleet(cooldown_seconds=0)
    fs = at(cfg, 1, last_switch_at=NOW - 100, processed_alerts={"seen": NOW - 200})
    stale = choose_downgrade(cfg, fs, NOW, trigger="alert", alert=AlertRef("new", NOW - 101))
    assert stale.reason == "stale_alert"
    dup = choose_downgrade(cfg, fs, NOW, trigger="alert", alert=AlertRef("seen", NOW - 50))
    assert dup.reason == "duplicate"
    fresh = choose_downgrade(cfg, fs, NOW, trigger="alert", alert=AlertRef("new", NOW - 99))
    assert fresh.target == 2


def test_hourly_cap_counts_switches_in_the_last_hour_only() -> None:
    cfg = fleet(cooldown_seconds=0, max_switches_per_hour=2)

    def rec(t: float) -> SwitchRecord:
        return SwitchRecord(t, "f", "a", "b", "down", "alert", "")

    fs = at(
        cfg, 1, last_switch_at=NOW - 10, history=[rec(NOW - 4000), rec(NOW - 1000), rec(NOW - 10)]
    )
    d = choose_downgrade(cfg, fs, NOW, trigger="alert", alert=AlertRef("k", NOW))
    assert (d.target, d.reason) == (None, "rate_limited")
    # The cap clears once the older of the hour's two switches has aged out of the hour.
    assert d.retry_at is not None and NOW - 1000 + HOUR < d.retry_at < NOW - 1000 + HOUR + 0.01
    assert "the next is allowed in 2600 s" in d.detail
    later = d.retry_at
    assert choose_downgrade(cfg, fs, later, trigger="alert", alert=AlertRef("k", NOW)).target == 2
    assert choose_downgrade(
        cfg, fs, later - 0.01, trigger="alert", alert=AlertRef("k", NOW)
    ).reason == ("rate_limited")
    fs.history.pop()
    assert choose_downgrade(cfg, fs, NOW, trigger="alert", alert=AlertRef("k", NOW)).target == 2


def rec(t: float, recovery: str | None = None) -> SwitchRecord:
    return SwitchRecord(t, "f", "a", "b", "down", "alert", "", recovery=recovery)


def test_the_cap_clears_when_enough_of_the_hours_oldest_switches_have_aged_out() -> None:
    cfg = fleet(cooldown_seconds=60, max_switches_per_hour=6)
    # Six switches in the hour, the oldest 30 s from leaving it; one rolled back (it never was).
    times = [NOW - HOUR + 30, NOW - HOUR + 40, NOW - 900, NOW - 600, NOW - 300, NOW - 120]
    history = [rec(t) for t in times] + [rec(NOW - 100, "rolled_back")]
    fs = at(cfg, 1, last_switch_at=NOW - 120, history=history)
    assert cap_clears_at(cfg, fs, NOW) == NOW + 30 + 0.001
    # One more switch in the hour: the two oldest must age out.
    fs.history.append(rec(NOW - 90))
    assert cap_clears_at(cfg, fs, NOW) == NOW + 40 + 0.001
    # Under the cap: now.
    assert cap_clears_at(cfg, at(cfg, 1, history=[rec(NOW - 5)]), NOW) == NOW


def test_a_cooldown_that_ends_over_the_cap_retries_when_both_allow() -> None:
    cfg = fleet(cooldown_seconds=60, max_switches_per_hour=2)
    fs = at(cfg, 1, last_switch_at=NOW - 10, history=[rec(NOW - HOUR + 200), rec(NOW - 10)])
    d = choose_downgrade(cfg, fs, NOW, trigger="alert", alert=AlertRef("k", NOW))
    assert d.reason == "cooldown"
    assert d.retry_at == NOW + 200 + 0.001  # the cap, later than the cooldown's end (NOW + 50)
    assert choose_downgrade(cfg, fs, d.retry_at, trigger="alert", alert=AlertRef("k", NOW)).switch


def test_final_refusals_never_say_when_to_retry() -> None:
    cfg = fleet(cooldown_seconds=0)
    fs = at(cfg, 1, last_switch_at=NOW - 100, processed_alerts={"seen": NOW - 200})
    for d in (
        choose_downgrade(cfg, fs, NOW, trigger="alert", alert=AlertRef("new", NOW - 101)),
        choose_downgrade(cfg, fs, NOW, trigger="alert", alert=AlertRef("seen", NOW - 50)),
        choose_downgrade(cfg, at(cfg, 3), NOW, trigger="alert"),
        choose_upgrade(cfg, at(cfg, 0), NOW, trigger="auto"),
    ):
        assert not d.switch and d.retry_at is None, d


def test_upgrade_one_rung_and_reset_to_the_top() -> None:
    cfg = fleet()
    assert choose_upgrade(cfg, at(cfg, 2), NOW).target == 1
    assert choose_upgrade(cfg, at(cfg, 0), NOW).reason == "at_largest"
    assert choose_reset(cfg, at(cfg, 3)).target == 0
    assert choose_reset(cfg, at(cfg, 0)).reason == "at_largest"


def auto(**kw: object) -> FleetConfig:
    return fleet(
        cooldown_seconds=0,
        auto_upgrade=AutoUpgrade(
            enabled=True, quiet_seconds=600, failed_quiet_seconds=3600, headroom_mb=100
        ),
        **kw,
    )


def test_auto_upgrade_needs_quiet_period_since_switch_and_last_error() -> None:
    cfg = auto()
    fs = at(cfg, 2, last_switch_at=NOW - 700)
    assert choose_auto_upgrade(cfg, fs, NOW).target == 1
    d = choose_auto_upgrade(cfg, fs, NOW, last_error_at=NOW - 100)
    assert (d.target, d.reason) == (None, "quiet_period")
    assert d.retry_at == NOW - 100 + cfg.auto_upgrade.quiet_seconds  # when the quiet is long enough
    assert (
        choose_auto_upgrade(cfg, at(cfg, 2, last_switch_at=NOW - 100), NOW).reason == "quiet_period"
    )


def test_auto_upgrade_needs_headroom_for_the_larger_model() -> None:
    cfg = auto()
    fs = at(cfg, 2, last_switch_at=NOW - 700)  # on tinyllama (637), next up is phi3 (2200)
    # 637 + free must reach 2200 + 100.
    short = choose_auto_upgrade(cfg, fs, NOW, free_vram_bytes=(2300 - 637 - 1) * MIB)
    assert (short.target, short.reason) == (None, "no_headroom")
    enough = choose_auto_upgrade(cfg, fs, NOW, free_vram_bytes=(2300 - 637) * MIB)
    assert enough.target == 1


def test_auto_upgrade_hysteresis_after_a_failed_step_up() -> None:
    cfg = auto()
    fs = at(cfg, 2, last_switch_at=NOW - 700, last_upgrade_failed_at=NOW - 700)
    d = choose_auto_upgrade(cfg, fs, NOW)
    assert (d.target, d.reason) == (None, "quiet_period")
    assert "failed recently" in d.detail
    fs.last_switch_at = NOW - 3700
    fs.last_upgrade_failed_at = NOW - 3700
    assert choose_auto_upgrade(cfg, fs, NOW).target == 1


def test_upgrade_failed_means_a_step_down_inside_the_quiet_period_after_a_step_up() -> None:
    cfg = auto()
    assert upgrade_failed(cfg, at(cfg, 1, last_upgrade_at=NOW - 100), NOW)
    assert not upgrade_failed(cfg, at(cfg, 1, last_upgrade_at=NOW - 601), NOW)
    assert not upgrade_failed(cfg, at(cfg, 1), NOW)


def test_auto_upgrade_refused_when_disabled_or_at_top() -> None:
    cfg = fleet()
    assert choose_auto_upgrade(cfg, at(cfg, 2), NOW).reason == "auto_upgrade_disabled"
    cfg = auto()
    assert choose_auto_upgrade(cfg, at(cfg, 0), NOW).reason == "at_largest"
