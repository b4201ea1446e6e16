"""A custom model made through /api/create: the Ollama adapter against the stand-in on a real
127.0.0.1 port, which answers as Ollama's CreateHandler does."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from remediator.adapters.ollama import OllamaError, OllamaServer
from remediator.ports.model_server import CreateSpec
from simulator.fake_ollama import FakeOllama

MIB = 1024 * 1024
FP16 = "llama3.2:3b-instruct-fp16"


@pytest.fixture
def fake() -> Iterator[FakeOllama]:
    with FakeOllama(
        {"llama3.2:3b": 2048 * MIB, FP16: 6144 * MIB}, registry={"qwen2.5:0.5b": 397 * MIB}
    ) as server:
        yield server


@pytest.fixture
def client(fake: FakeOllama) -> Iterator[OllamaServer]:
    c = OllamaServer(fake.url, timeout=5)
    yield c
    c.close()


def test_create_sends_the_fields_and_logs_ollamas_status_lines(
    fake: FakeOllama, client: OllamaServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="remediator.adapters.ollama")
    spec = CreateSpec(
        FP16,
        parameters=(("num_ctx", 2048), ("stop", ("<|eot_id|>",))),
        system="Answer in one sentence.",
        messages=(("user", "hi"), ("assistant", "hello")),
        quantize="q4_K_M",
    )
    result = client.create("acme-brief:3b-ctx2k", spec, timeout=10, progress_interval=0)

    assert result.model == "acme-brief:3b-ctx2k" and result.status_lines == 7
    assert fake.calls_to("/api/create")[0].body == {
        "model": "acme-brief:3b-ctx2k",
        "from": FP16,
        "parameters": {"num_ctx": 2048, "stop": ["<|eot_id|>"]},
        "system": "Answer in one sentence.",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
        "quantize": "q4_K_M",
        "stream": True,
    }
    sizes = {m.name: m.size for m in client.list_models()}
    assert sizes["acme-brief:3b-ctx2k"] == round(6144 * MIB * 4.85 / 16)  # Q4_K_M from F16
    messages = [r.getMessage() for r in caplog.records]
    assert "ollama create acme-brief:3b-ctx2k: quantizing F16 model to Q4_K_M" in messages
    assert any(
        m.startswith("ollama create acme-brief:3b-ctx2k: creating new layer") for m in messages
    )
    assert any(m.startswith("ollama: created acme-brief:3b-ctx2k in") for m in messages)


def test_a_base_ollama_pulls_itself_ends_at_the_creates_own_success(
    fake: FakeOllama, client: OllamaServer
) -> None:
    # Ollama pulls a missing base inside the create and streams that pull's "success" first.
    client.create("tiny-brief:0.5b", CreateSpec("qwen2.5:0.5b", system="Be brief."), timeout=10)
    assert {"qwen2.5:0.5b", "tiny-brief:0.5b"} <= {m.name for m in client.list_models()}


@pytest.mark.parametrize(
    ("spec", "cause"),
    [
        (
            CreateSpec(FP16, quantize="q2_K"),
            "HTTP 500: unsupported quantization type Q2_K - supported types are F32, F16, "
            "Q4_K_S, Q4_K_M, Q8_0",
        ),
        (
            CreateSpec("llama3.2:3b", quantize="q8_0"),
            "HTTP 500: quantization is only supported for F16 and F32 models",
        ),
        (CreateSpec("nope:1b"), "Ollama reported: pull model manifest: file does not exist"),
    ],
)
def test_ollamas_refusals_name_the_step_and_keep_its_words(
    fake: FakeOllama, client: OllamaServer, spec: CreateSpec, cause: str
) -> None:
    with pytest.raises(OllamaError) as err:
        client.create("custom:1", spec, timeout=10)
    assert err.value.step == "create" and err.value.cause == cause
    assert str(err.value).startswith("ollama create of 'custom:1' failed: ")
    assert not client.has_model("custom:1")


def test_an_error_mid_stream_and_a_refused_request(fake: FakeOllama, client: OllamaServer) -> None:
    fake.fail_create_mid_stream("write /root/.ollama/models/blobs: no space left on device")
    with pytest.raises(OllamaError, match=r"Ollama reported: write .*no space left on device"):
        client.create("custom:1", CreateSpec("llama3.2:3b", system="x"), timeout=10)
    fake.heal()
    fake.fail("/api/create", 503, "busy")
    with pytest.raises(OllamaError, match="ollama create of 'custom:1' failed: HTTP 503: busy"):
        client.create("custom:1", CreateSpec("llama3.2:3b"), timeout=10)
    assert not client.has_model("custom:1")


def test_ollama_down_names_the_url(fake: FakeOllama, client: OllamaServer) -> None:
    fake.go_down()
    with pytest.raises(OllamaError, match=r"create .*Ollama unreachable at http://127.0.0.1"):
        client.create("custom:1", CreateSpec("llama3.2:3b"), timeout=10)
