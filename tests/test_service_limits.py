"""Bounded work per request (issue 13): body, depth and alert-count limits, one switch per
fleet per delivery, and reads that never wait on a switch's lock or the state lock; a client
that stalls half-way through a request is dropped after the read timeout and holds no thread
meanwhile (issue 18).

The in-process tests use Flask's test client with the recording actions of test_service.py;
the last ones run the real service under gunicorn (simulator/services.py) on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import copy
import json
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from remediator.app.service import create_app
from remediator.config import HttpLimits, parse_config
from remediator.http.body import BadBody, json_body, json_depth
from remediator.http.worker import READ_TIMEOUT_SECONDS, request_is_whole
from remediator.store.locks import file_lock
from remediator.store.state import StateStore
from simulator.fake_ollama import FakeOllama
from simulator.services import start_remediator
from tests.test_service import AUTH, TOKEN, RecordingActions, drain, payload, wait_for


def delivery(n: int, fleet: str = "default") -> dict[str, Any]:
    """One Alertmanager delivery of ``n`` distinct firing step-down alerts for ``fleet``."""
    body = payload("alertmanager_firing.json")
    one = body["alerts"][0]
    one["labels"]["fleet"] = fleet
    body["alerts"] = []
    for i in range(n):
        alert = copy.deepcopy(one)
        alert["fingerprint"] = f"{i:016x}"
        body["alerts"].append(alert)
    return body


def deep(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def test_json_depth_counts_brackets_outside_strings() -> None:
    assert json_depth(b'{"a": [1, {"b": "[[[{{{"}]}') == 3
    assert json_depth(b'"\\"[[["') == 0
    assert json_depth(deep(100_000)) == 100_000
    assert json_depth(b"[]" * 1000) == 1


def test_json_body_refuses_depth_over_the_limit_whether_or_not_it_scans() -> None:
    # A body with no more opening brackets than the limit is not scanned (it cannot be too
    # deep); one with more is, and brackets inside strings count only in the cheap test.
    app = create_app(parse_config({}, "test"), token=TOKEN)
    for body, parsed in (
        (deep(8), [[[[[[[[]]]]]]]]),
        (b'{"a": "[[[[[[[[[[[[", "b": [1, {"c": 2}]}', {"a": "[[[[[[[[[[[[", "b": [1, {"c": 2}]}),
        (b"[" + b"[]," * 20 + b"[]]", [[]] * 21),
    ):
        with app.test_request_context(method="POST", data=body, content_type="application/json"):
            assert json_body(8) == parsed
    for body in (deep(9), b"[" + b"[]," * 20 + deep(8) + b"]"):
        with (
            app.test_request_context(method="POST", data=body, content_type="application/json"),
            pytest.raises(BadBody, match="9 levels deep"),
        ):
            json_body(8)


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[tuple[Any, RecordingActions, StateStore]]:
    config = parse_config(
        {
            "state_file": str(tmp_path / "state.json"),
            "http": {"max_body_bytes": 65536, "max_alerts": 20, "max_json_depth": 8},
            "fleets": {"default": {"cooldown_seconds": 0}},
        },
        "test",
    )
    actions = RecordingActions()
    app = create_app(config, token=TOKEN, actions_for=actions.for_fleet)
    yield app, actions, StateStore(config)
    drain(app)


@pytest.mark.parametrize("path", ["/webhook/alertmanager", "/webhook/notify", "/downgrade"])
def test_bad_bodies_answer_413_or_400_never_500(limited: Any, path: str) -> None:
    app, actions, _ = limited
    client = app.test_client()
    headers = {**AUTH, "Content-Type": "application/json"}
    big = client.post(path, data=b" " * 70_000, headers=headers)
    assert big.status_code == 413
    assert "max_body_bytes" in big.get_json()["error"]
    for body in (deep(9), deep(30_000), b'{"a":' * 10_000):
        resp = client.post(path, data=body, headers=headers)
        assert resp.status_code == 400, (body[:20], resp.get_data()[:200])
    too_deep = client.post(path, data=deep(9), headers=headers).get_json()["error"]
    assert "max_json_depth" in too_deep
    assert actions.plans == []


def test_too_many_alerts_answer_400_and_switch_nothing(limited: Any) -> None:
    app, actions, _ = limited
    client = app.test_client()
    resp = client.post("/webhook/alertmanager", json=delivery(21), headers=AUTH)
    assert resp.status_code == 400 and "max_alerts" in resp.get_json()["error"]
    assert client.post("/webhook/alertmanager", json=delivery(20), headers=AUTH).status_code == 202
    wait_for(lambda: len(actions.plans) == 1)


def test_ten_thousand_alerts_for_one_fleet_make_one_switch_and_answer_quickly(
    tmp_path: Path,
) -> None:
    config = parse_config(
        {"state_file": str(tmp_path / "s.json"), "fleets": {"default": {"cooldown_seconds": 0}}},
        "test",
    )
    assert config.http == HttpLimits()  # the defaults take the 10,000-alert payload
    actions = RecordingActions()
    app = create_app(config, token=TOKEN, actions_for=actions.for_fleet)
    body = delivery(10_000)
    started = time.monotonic()
    resp = app.test_client().post("/webhook/alertmanager", json=body, headers=AUTH)
    answered = time.monotonic() - started
    assert resp.status_code == 202
    assert len(resp.get_json()["accepted"]) == 1
    assert answered < 5.0, answered
    drain(app)
    assert len(actions.plans) == 1
    state = StateStore(config).read()
    assert len(state.fleets["default"].history) == 1


def test_health_and_status_answer_while_the_locks_are_held(limited: Any) -> None:
    app, _, store = limited
    client = app.test_client()
    with store.transaction() as state:
        state.fleets["default"].vram_error_count = 2  # a state file to read
    with store.switch_lock("default"), file_lock(store.lock_path, 1.0):
        for path in ("/healthz", "/status", "/metrics"):
            started = time.monotonic()
            resp = client.get(path)
            elapsed = time.monotonic() - started
            assert resp.status_code == 200, path
            assert elapsed < 0.1, (path, elapsed)


# -- under gunicorn ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("limits")
    with FakeOllama(models={"llama3.2:3b": 2048 << 20}) as ollama:
        remediator = start_remediator(tmp, ollama.url, TOKEN, workers=2)
        try:
            yield remediator.url
        finally:
            remediator.stop()


def raw_request(url: str, head: str, body: bytes, until: bytes, timeout: float = 10.0) -> bytes:
    """Send a raw HTTP/1.1 request; return the answer once it holds ``until`` (or is closed)."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while until not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    return answer


def test_gunicorn_refuses_an_oversized_body_unread(served: str) -> None:
    # 500 MB announced, 1 KB sent: the answer comes without the rest.
    head = (
        "POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Length: 500000000\r\n\r\n"
    )
    started = time.monotonic()
    answer = raw_request(served, head, b"{" + b" " * 1023, until=b"max_body_bytes")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"max_body_bytes" in answer
    assert time.monotonic() - started < 2


def test_gunicorn_cuts_a_chunked_body_off_at_the_limit(served: str) -> None:
    chunk = b" " * 1048576

    def chunks() -> Iterator[bytes]:
        yield b"["
        for _ in range(20):  # 20 MiB, over the default 16 MiB
            yield chunk

    resp = requests.post(
        served + "/webhook/alertmanager",
        data=chunks(),
        headers={**AUTH, "Content-Type": "application/json"},
        timeout=30,
    )
    assert resp.status_code == 413, resp.text[:200]


@pytest.mark.parametrize("path", ["/webhook/alertmanager", "/webhook/notify", "/downgrade"])
def test_gunicorn_answers_400_for_deep_json_and_too_many_alerts(served: str, path: str) -> None:
    headers = {**AUTH, "Content-Type": "application/json"}
    bodies = [deep(33), deep(1_000_000), b'{"a":' * 1_000_000]
    if path.startswith("/webhook"):  # a manual switch reads no alerts
        bodies.append(json.dumps(delivery(10_001)).encode())
    for body in bodies:
        resp = requests.post(served + path, data=body, headers=headers, timeout=30)
        assert resp.status_code == 400, (path, resp.status_code, resp.text[:200])


# -- slow clients: the read timeout (remediator/http/worker.py) --------------------------


def test_a_request_is_whole_when_its_head_and_declared_body_are_here() -> None:
    head = b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n"
    assert not request_is_whole(b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\n")
    assert not request_is_whole(head + b"{}")
    assert request_is_whole(head + b"{}{}")
    assert request_is_whole(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert request_is_whole(b"")  # closed: gunicorn reads the end
    assert request_is_whole(b"x" * 100, window=100)  # more than we look at: gunicorn's limits
    big = b"POST / HTTP/1.1\r\ncontent-length: 1000000\r\n\r\n"
    assert request_is_whole(big)  # too large to wait for: a thread reads it under the timeout


def stalled(url: str, data: bytes) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    sock.sendall(data)
    return sock


def test_a_stalled_half_request_is_closed_after_the_read_timeout(served: str) -> None:
    half_head = stalled(served, b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\n")
    head = (
        f"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    half_body = stalled(served, head.encode() + b'{"alerts": [')
    started = time.monotonic()
    for sock in (half_head, half_body):
        # The service closes it without an answer: the client gets the end of the stream (or
        # a reset), well within the socket's own 30 s.
        with sock, contextlib.suppress(ConnectionResetError):
            assert sock.recv(4096) == b""
    # The shipped limits: 2 s of silence (keepalive), 10 s without a whole request. Generous
    # bound for a loaded machine; the bench measures the actual figure.
    assert time.monotonic() - started < READ_TIMEOUT_SECONDS + 10


def test_a_request_sent_in_pieces_or_two_at_once_is_answered_whole(served: str) -> None:
    body = json.dumps(payload("alertmanager_firing.json")).encode()
    head = (
        f"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with stalled(served, head[:20]) as sock:
        for piece in (head[20:], body[:10], body[10:]):  # what came early is not lost
            time.sleep(0.3)
            sock.sendall(piece)
        answer = b""
        while b"outcome" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 202"), answer[:200]
    twice = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2
    with stalled(served, twice) as sock:
        answer = b""
        while answer.count(b"HTTP/1.1 200") < 2 and (chunk := sock.recv(65536)):
            answer += chunk
        assert answer.count(b"HTTP/1.1 200") == 2, answer[:400]


def test_a_client_that_hangs_up_half_way_is_let_go(served: str) -> None:
    with stalled(served, b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\n") as sock:
        sock.shutdown(socket.SHUT_WR)
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(4096) == b""
        assert time.monotonic() - started < READ_TIMEOUT_SECONDS  # not left to time out


def test_a_trickling_half_request_is_closed_after_the_read_timeout(served: str) -> None:
    sock = stalled(served, b"POST /webhook/alertmanager HTTP/1.1\r\n")
    started = time.monotonic()
    closed = None
    with sock:
        while time.monotonic() - started < READ_TIMEOUT_SECONDS + 20:
            try:
                sock.sendall(b"X-Slow: 1\r\n")  # a byte now and then: never silent for long
            except OSError:
                closed = time.monotonic() - started
                break
            time.sleep(1.0)
    assert closed is not None and closed >= READ_TIMEOUT_SECONDS - 1, closed


def test_health_and_a_delivery_are_served_while_more_clients_stall_than_threads(
    served: str,
) -> None:
    threads = 2 * 64  # the fixture's 2 workers with the shipped threads per worker
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    count = min(3 * threads, soft - 200)
    assert count > threads, f"ulimit -n {soft} is too low for this test"
    socks = [
        stalled(served, b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\n") for _ in range(count)
    ]
    try:
        for _ in range(20):
            resp = requests.get(served + "/healthz", timeout=5)
            assert resp.status_code == 200
        body = payload("alertmanager_firing.json")
        body["alerts"][0]["startsAt"] = time.strftime("%Y-%m-%dT%H:%M:%S.000000000Z", time.gmtime())
        resp = requests.post(served + "/webhook/alertmanager", json=body, headers=AUTH, timeout=10)
        assert resp.status_code == 202, resp.text
    finally:
        for sock in socks:
            sock.close()
