"""The Ollama adapter against a fake Ollama on a real 127.0.0.1 port."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from remediator.adapters.ollama import OllamaError, OllamaServer, canonical_name, same_model
from remediator.ports.model_server import ModelServerError
from simulator.fake_ollama import FakeOllama

MIB = 1024 * 1024


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama({"llama3.2:3b": 2048 * MIB, "phi3:mini": 2200 * MIB}) as server:
        yield server


@pytest.fixture
def client(fake: FakeOllama) -> Iterator[OllamaServer]:
    c = OllamaServer(fake.url, timeout=5)
    yield c
    c.close()


def test_model_names_follow_ollamas_latest_tag() -> None:
    assert canonical_name("qwen2.5") == "qwen2.5:latest"
    assert canonical_name("library/qwen2.5:0.5b") == "library/qwen2.5:0.5b"
    assert (
        canonical_name("registry.local:5000/team/model") == "registry.local:5000/team/model:latest"
    )
    assert same_model("tinyllama", "tinyllama:latest")
    assert not same_model("tinyllama:1.1b", "tinyllama")


def test_list_and_has_model(fake: FakeOllama, client: OllamaServer) -> None:
    models = {m.name: m.size for m in client.list_models()}
    assert models == {"llama3.2:3b": 2048 * MIB, "phi3:mini": 2200 * MIB}
    assert client.has_model("phi3:mini")
    assert not client.has_model("qwen2.5:0.5b")
    fake.models["qwen2.5:latest"] = 1
    assert client.has_model("qwen2.5")
    assert [c.method for c in fake.calls_to("/api/tags")] == ["GET"] * 4


def test_pull_streams_progress_to_the_log(
    fake: FakeOllama, client: OllamaServer, caplog: pytest.LogCaptureFixture
) -> None:
    fake.progress_steps = 5
    caplog.set_level(logging.INFO, logger="remediator.adapters.ollama")
    result = client.pull("qwen2.5:0.5b", timeout=10, progress_interval=0)

    assert result.model == "qwen2.5:0.5b"
    assert result.total_bytes == result.completed_bytes > 0
    assert result.status_lines == 1 + 1 + 5 + 3  # manifest, first layer line, 5 steps, 3 final
    assert client.has_model("qwen2.5:0.5b")
    body = fake.calls_to("/api/pull")[0].body
    assert body["model"] == "qwen2.5:0.5b"
    assert body["stream"] is True
    messages = [r.getMessage() for r in caplog.records]
    assert any("pulling manifest" in m for m in messages)
    assert any(m.endswith("% (400.0/400.0 MiB)") and "100%" in m for m in messages)
    assert any("verifying sha256 digest" in m for m in messages)
    assert any(m.startswith("ollama: pulled qwen2.5:0.5b in") for m in messages)


def test_ensure_pulled_skips_a_local_model(fake: FakeOllama, client: OllamaServer) -> None:
    assert client.ensure_pulled("llama3.2:3b") is False
    assert fake.calls_to("/api/pull") == []
    assert client.ensure_pulled("tinyllama:1.1b") is True
    assert len(fake.calls_to("/api/pull")) == 1


def test_pull_refused_names_step_and_cause(fake: FakeOllama, client: OllamaServer) -> None:
    fake.refuse_pull("registry says no")
    with pytest.raises(OllamaError) as err:
        client.pull("tinyllama:1.1b", timeout=5)
    assert err.value.step == "pull"
    assert "HTTP 500: registry says no" in str(err.value)
    assert "'tinyllama:1.1b'" in str(err.value)
    assert not client.has_model("tinyllama:1.1b")


def test_pull_of_unknown_model_reports_ollamas_error(client: OllamaServer) -> None:
    with FakeOllama(registry={"qwen2.5:0.5b": 1}) as strict:
        c = OllamaServer(strict.url)
        with pytest.raises(OllamaError, match="pull model manifest: file does not exist"):
            c.pull("no-such-model:7b", timeout=5)
        c.close()


def test_pull_error_mid_stream(fake: FakeOllama, client: OllamaServer) -> None:
    fake.fail_pull_mid_stream("max retries exceeded: connection reset", after=3)
    with pytest.raises(OllamaError) as err:
        client.pull("tinyllama:1.1b", timeout=5)
    assert err.value.step == "pull"
    assert "Ollama reported: max retries exceeded" in err.value.cause
    assert "tinyllama:1.1b:latest" not in fake.models and "tinyllama:1.1b" not in fake.models


def test_stalled_pull_fails_within_its_bound(fake: FakeOllama, client: OllamaServer) -> None:
    fake.stall_pull(after=2)
    started = time.monotonic()
    with pytest.raises(OllamaError, match="stalled: no progress") as err:
        client.pull("tinyllama:1.1b", timeout=5, stall_timeout=0.5)
    elapsed = time.monotonic() - started
    assert err.value.step == "pull"
    assert 0.4 < elapsed < 3, elapsed


def test_pull_timeout_bounds_a_slow_stream(fake: FakeOllama, client: OllamaServer) -> None:
    fake.progress_steps = 50
    fake.line_delay = 0.05  # ~2.7 s in all, longer than the 0.5 s allowed
    started = time.monotonic()
    with pytest.raises(OllamaError, match=r"timed out after 0\.5 s"):
        client.pull("tinyllama:1.1b", timeout=0.5)
    assert time.monotonic() - started < 1.5


def test_ollama_down_is_an_error_naming_the_url(fake: FakeOllama, client: OllamaServer) -> None:
    fake.go_down()
    for call in (client.list_models, client.loaded, lambda: client.unload("phi3:mini")):
        with pytest.raises(OllamaError, match=f"Ollama unreachable at {fake.url}"):
            call()
    with pytest.raises(OllamaError, match="unreachable") as err:
        client.pull("tinyllama:1.1b", timeout=5)
    assert err.value.step == "pull"
    fake.come_back()
    assert client.has_model("phi3:mini")


def test_going_down_mid_pull_breaks_the_stream(fake: FakeOllama, client: OllamaServer) -> None:
    fake.stall_pull(after=3)
    fake.line_delay = 0
    timer = threading.Timer(0.3, fake.go_down)
    timer.start()
    with pytest.raises(OllamaError, match="stream broke after status 'pulling "):
        client.pull("tinyllama:1.1b", timeout=10, stall_timeout=5)
    timer.join()


def test_unload_with_keep_alive_zero(fake: FakeOllama, client: OllamaServer) -> None:
    fake.load("llama3.2:3b", size_vram=1500 * MIB)
    fake.load("phi3:mini")
    loaded = {m.name: m for m in client.loaded()}
    assert loaded["llama3.2:3b"].size == 2048 * MIB
    assert loaded["llama3.2:3b"].size_vram == 1500 * MIB
    assert loaded["llama3.2:3b"].offloaded_bytes == 548 * MIB
    assert loaded["phi3:mini"].offloaded_bytes == 0

    assert client.unload("llama3.2:3b") is True
    call = fake.calls_to("/api/generate")[-1]
    assert call.body["model"] == "llama3.2:3b"
    assert call.body["keep_alive"] == 0
    assert [m.name for m in client.loaded()] == ["phi3:mini"]


def test_generate_reports_ollamas_token_figures(fake: FakeOllama, client: OllamaServer) -> None:
    answer = client.generate("phi3:mini", "say ok", max_tokens=8)
    assert (answer.model, answer.text, answer.tokens, answer.prompt_tokens) == (
        "phi3:mini",
        "ok",
        1,
        2,
    )
    # The fake's timings: one token in 20 ms, 25 ms in all, 1 ms to load.
    assert (answer.eval_seconds, answer.total_seconds, answer.load_seconds) == (0.02, 0.025, 0.001)
    assert answer.tokens_per_second == pytest.approx(50.0)
    body = fake.calls_to("/api/generate")[-1].body
    assert body == {
        "model": "phi3:mini",
        "prompt": "say ok",
        "stream": False,
        "options": {"num_predict": 8},
    }
    assert [m.name for m in client.loaded()] == ["phi3:mini"]  # generating loaded it
    with pytest.raises(ModelServerError, match="ollama generate of 'nope:1b' failed: HTTP 404"):
        client.generate("nope:1b", "say ok")


def test_unload_of_unknown_model_is_not_an_error(fake: FakeOllama, client: OllamaServer) -> None:
    assert client.unload("never-pulled:1b") is False


def test_http_errors_and_garbage_are_ollama_errors(fake: FakeOllama, client: OllamaServer) -> None:
    fake.fail("/api/ps", 500, "runner crashed")
    with pytest.raises(OllamaError, match="ollama loaded failed: HTTP 500: runner crashed"):
        client.loaded()
    fake.fail("/api/generate", 503, "busy")
    with pytest.raises(OllamaError, match="unload of 'phi3:mini' failed: HTTP 503: busy"):
        client.unload("phi3:mini")


def test_a_server_that_is_not_ollama(client: OllamaServer) -> None:
    # A port that accepts and answers garbage: the client must say what it got.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        body = b"<html>proxy error</html>"
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), body)
        )
        conn.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    other = OllamaServer(f"http://127.0.0.1:{port}", timeout=5)
    with pytest.raises(OllamaError, match="invalid JSON: <html>proxy error</html>"):
        other.list_models()
    other.close()
    thread.join(timeout=5)
    listener.close()
