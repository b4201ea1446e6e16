"""The per-host series budget docs/scale.md states, checked on a real exporter and remediator.

The bounded version of bench/bench_scale.py: two small host shapes (busybox containers on the
real Docker engine, the exporter against the fake NVML, the remediator under gunicorn), whose
scraped series must match the formula the docs give. A new metric, label value or default
that changes the count fails here until docs/scale.md and the benchmark say so.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_scale import Host, Shape, measure
from bench.bench_scale_prom import ALERT_SCOPE, alert_bound_row
from bench.common import solve_least_squares

DOC = Path(__file__).resolve().parents[1] / "docs" / "scale.md"


def exporter_series(shape: Shape) -> int:
    """docs/scale.md: 17 + 3 per GPU + 6 per fleet + 16 per watched container."""
    return 17 + 3 * shape.gpus + 6 * shape.fleets + 16 * shape.containers


def remediator_series(shape: Shape) -> int:
    """docs/scale.md: 10 + 35 per fleet + 1 per ladder rung."""
    return 10 + 35 * shape.fleets + shape.models


def test_the_docs_state_the_formulas_this_test_checks() -> None:
    text = DOC.read_text()
    assert "17 + 3 per GPU + 6 per fleet + 16 per watched container" in text
    assert "10 + 35 per fleet + 1 per ladder rung" in text
    assert "3 + 2 per GPU + 21 per fleet + 3\nper watched container" in text


def test_least_squares_recovers_an_exact_linear_model() -> None:
    rows = [[1.0, g, f] for g in (1, 2, 4) for f in (1, 3)]
    ys = [5 + 3 * r[1] + 44 * r[2] for r in rows]
    coef = solve_least_squares(rows, ys)
    assert [round(c, 6) for c in coef] == [5, 3, 44]


def test_alert_scope_covers_exactly_the_shipped_rules() -> None:
    row = alert_bound_row()  # raises when a rule is missing from ALERT_SCOPE or extra there
    assert row.value.startswith("3 + 2*GPU + 21*fleet + 3*container")
    assert len(ALERT_SCOPE) == 15


@pytest.mark.docker
@pytest.mark.slow
def test_real_services_export_the_documented_series(tmp_path: Path) -> None:
    host = Host(tmp_path, fleets=2)
    try:
        host.start()
        shapes = [Shape(1, 1), Shape(2, 2, servers=2, rungs=2)]
        for m in measure(host, shapes):
            assert m.exporter.series == exporter_series(m.shape), m
            assert m.remediator.series == remediator_series(m.shape), m
            assert m.exporter.series == m.exporter.ours  # no runtime collectors either
    finally:
        host.close()
    assert not host.client.containers.list(
        all=True, filters={"label": f"model-fleet.bench-scale={host.run}"}
    )
