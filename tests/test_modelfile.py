"""The Modelfile parser: a file as Ollama's CLI reads it, into the create request's fields."""

from __future__ import annotations

import pytest

from remediator.config.modelfile import Modelfile, ModelfileError, looks_like_file, parse_modelfile

BRIEF = '''# a short-context assistant
FROM llama3.2:3b
parameter num_ctx 2048
PARAMETER temperature 0.2
PARAMETER stop "<|start_header_id|>"
PARAMETER stop <|eot_id|>
PARAMETER use_mmap true
System """
You answer in one sentence.
   Never more.
"""
TEMPLATE """{{ .System }} {{ .Prompt }}"""
LICENSE "MIT"
MESSAGE user Is the sky blue?
MESSAGE assistant "Yes."
'''


def test_every_instruction_becomes_its_request_field() -> None:
    assert parse_modelfile(BRIEF) == Modelfile(
        from_model="llama3.2:3b",
        parameters={
            "num_ctx": 2048,
            "temperature": 0.2,
            "stop": ["<|start_header_id|>", "<|eot_id|>"],
            "use_mmap": True,
        },
        system="You answer in one sentence.\n   Never more.",
        template="{{ .System }} {{ .Prompt }}",
        license="MIT",
        messages=(("user", "Is the sky blue?"), ("assistant", "Yes.")),
    )


def test_comments_blank_lines_and_case_do_not_matter() -> None:
    text = "\n  # comment\nfrom qwen2.5:0.5b\n\n  # PARAMETER num_ctx 1\nPaRaMeTeR NUM_CTX 512\n"
    assert parse_modelfile(text) == Modelfile("qwen2.5:0.5b", {"num_ctx": 512})


def test_a_modelfile_without_from_is_read_the_config_must_then_give_it() -> None:
    assert parse_modelfile("SYSTEM be brief\n").from_model is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM a\nRUN rm -rf /\n", "line 2: unknown instruction 'run'"),
        ("FROM a\nPARAMETER num_ctx\n", "line 2: PARAMETER needs a name and a value"),
        ("FROM\n", "line 1: FROM needs a value"),
        ('FROM a\nSYSTEM """never\nclosed\n', 'line 2: """ opened and never closed'),
        ('FROM a\nSYSTEM "half\n', "line 2: unterminated quote"),
        ("FROM a\nMESSAGE robot hi\n", "line 2: MESSAGE role must be one of"),
        ("FROM a\nADAPTER ./lora.gguf\n", "line 2: ADAPTER needs the adapter uploaded as a blob"),
        ("FROM ./weights.gguf\n", "FROM ./weights.gguf names weights on disk"),
        ("FROM /models/llama\n", "names weights on disk"),
    ],
)
def test_what_cannot_become_a_request_names_the_line(text: str, message: str) -> None:
    with pytest.raises(ModelfileError) as err:
        parse_modelfile(text)
    assert message in str(err.value)


def test_a_model_name_is_not_a_file() -> None:
    assert not looks_like_file("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M")
    assert not looks_like_file("llama3.2:3b-instruct-fp16")
    assert looks_like_file("~/models/x.safetensors") and looks_like_file("model.GGUF")
