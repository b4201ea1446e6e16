"""A custom rung in the whole loop's timeline (simulator/loop.py, real Prometheus, Alertmanager,
containers and the remediator under gunicorn): three VRAM errors on the first model step the
fleet down to a model that does not exist yet and is made through Ollama's ``/api/create``
(the stand-in's, answering as Ollama does) from its base, which the remediator pulls first;
then the app runs on the created model.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from simulator.loop import Loop, LoopOptions
from tests.test_e2e import one_round

pytestmark = [pytest.mark.e2e, pytest.mark.docker]

CUSTOM = "tinyllama:1.1b-ctx2k"
BASE = "tinyllama:1.1b"
LADDER = [
    {"name": "llama3.2:3b", "size_mb": 2048},
    {
        "name": CUSTOM,
        "size_mb": 700,
        "create": {
            "from": BASE,
            "parameters": {"num_ctx": 2048},
            "system": "Answer in one sentence.",
        },
    },
    {"name": "qwen2.5:0.5b", "size_mb": 397},
]


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    # The cooldown is the loop's usual 5 s (one switch here: it is never reached).
    with Loop(tmp_path_factory.mktemp("e2e-custom"), LoopOptions(ladder=LADDER)) as running:
        yield running


def test_three_errors_step_down_to_a_rung_created_from_its_base(loop: Loop) -> None:
    assert CUSTOM not in loop.ollama.models and BASE not in loop.ollama.models
    one_round(loop, CUSTOM, 0)
    # The base was pulled, then the rung created with the configured fields, before any restart.
    pulls = [c.body["model"] for c in loop.ollama.calls_to("/api/pull", "POST")]
    [create] = loop.ollama.calls_to("/api/create", "POST")
    assert BASE in pulls
    assert (create.body["model"], create.body["from"]) == (CUSTOM, BASE)
    assert create.body["parameters"] == {"num_ctx": 2048}
    assert create.body["system"] == "Answer in one sentence."
    assert CUSTOM in loop.ollama.models
    record = loop.history()[-1]
    assert (record["from"], record["to"]) == ("llama3.2:3b", CUSTOM)
