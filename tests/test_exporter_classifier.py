"""LogClassifier on Ollama's real log lines: exact counts; the fast path agrees with the slow."""

from __future__ import annotations

import io
import random

import pytest

from exporter.classifier import (
    DEFAULT_PATTERNS,
    LogClassifier,
    PatternError,
    required_literal,
    scan_stream,
)
from tests.support.exporter_env import DATA

# Counted by hand from the files (each matching line once, for the first kind that matches).
EXPECTED = {
    "ollama_load_oom.log": {
        "oom": 5,
        "system_memory": 0,
        "vram_recovery_timeout": 0,
    },
    "ollama_cuda_error.log": {
        "oom": 3,
        "system_memory": 0,
        "vram_recovery_timeout": 0,
    },
    "ollama_runtime_oom.log": {
        "oom": 1,
        "system_memory": 0,
        "vram_recovery_timeout": 0,
    },
    "ollama_vram_timeout.log": {
        "oom": 0,
        "system_memory": 0,
        "vram_recovery_timeout": 4,
    },
    "ollama_normal.log": {"oom": 0, "system_memory": 0, "vram_recovery_timeout": 0},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_ollama_logs_are_counted_exactly(name: str) -> None:
    data = (DATA / name).read_bytes()
    assert LogClassifier().count(data) == EXPECTED[name]


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (
            "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 3257.82 MiB on device 0: "
            "cudaMalloc failed: out of memory",
            "oom",
        ),
        ("CUDA error: out of memory", "oom"),
        (
            'level=ERROR source=sched.go:456 msg="error loading llama server" '
            'error="llama runner process has terminated: exit status 2 out of memory"',
            "oom",
        ),
        ('level=WARN msg="runtime OOM detected; expiring loaded models"', "oom"),
        ("torch: CUDA out of memory. Tried to allocate 20.00 MiB", "oom"),
        ("worker: gpu memory exhausted", "oom"),
        ("GPU memory allocation failed (seed pattern)", "oom"),
        (
            'msg="gpu VRAM usage didn\'t recover within timeout" seconds=5.2',
            "vram_recovery_timeout",
        ),
        ("GPU MEMORY EXHAUSTED", "oom"),  # the seed compared lower-cased text
        ('msg="error loading llama server" error="GGML_ASSERT(hparams.n_swa > 0) failed"', None),
        (
            'msg="Load failed" error="model requires more system memory (12.8 GiB) than is '
            'available (9.3 GiB)"',
            "system_memory",
        ),
        (
            'level=WARN msg="model request too large for system" requested="12.8 GiB"',
            "system_memory",
        ),
        (
            'msg="model requires more system memory than is currently available, evicting a '
            'model to make space"',
            None,
        ),
        (
            'msg="model requires more gpu memory than is currently available, evicting a model '
            'to make space" "loaded layers"=12',
            None,
        ),
        ("alloc_tensor_range: failed to allocate CUDA0 buffer of size 1610612736", "oom"),
        ("llama_model_load: error loading model: unable to allocate CUDA0 buffer", "oom"),
        ("alloc_tensor_range: failed to allocate CPU buffer of size 437944320", None),
        ('level=WARN source=server.go:800 msg="memory layout cannot be allocated"', "oom"),
        ('msg="Load failed" error="memory layout cannot be allocated with num_gpu = 33"', "oom"),
        ('level=INFO msg="model layout did not fit, applying backoff" backoff=0.10', None),
        ("llama_init_from_model: failed to allocate buffer for kv cache", "oom"),
        ("ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer", None),
        ('msg="gpu VRAM free memory converged after 5.00 seconds"', None),
    ],
)
def test_single_lines(line: str, kind: str | None) -> None:
    assert LogClassifier().classify(line) == kind


def test_the_first_kind_that_matches_wins_and_a_line_counts_once() -> None:
    classifier = LogClassifier({"a": ["out of memory"], "b": ["CUDA error"]})
    assert classifier.count(b"CUDA error: out of memory\nCUDA error: launch failed\n") == {
        "a": 1,
        "b": 1,
    }


def test_case_sensitive_patterns_when_configured() -> None:
    strict = LogClassifier(DEFAULT_PATTERNS, case_sensitive=True)
    assert strict.classify("GPU MEMORY EXHAUSTED") is None
    assert strict.classify("gpu memory exhausted") == "oom"


@pytest.mark.parametrize(
    ("pattern", "literal"),
    [
        ("cudaMalloc failed: out of memory", "cudaMalloc failed: out of memory"),
        ("error loading llama server.*out of memory", "error loading llama server"),
        (r"allocating \d+\.\d+ MiB on device", " MiB on device"),
        (r"VRAM usage didn't recover", "VRAM usage didn't recover"),
        ("colou?r failure", "r failure"),  # the optional 'u' is not required
        ("(cuda|rocm) error: out of memory", " error: out of memory"),
        (r"ab\d+cd", None),  # runs too short to be worth a prefilter
        ("cuda oom|rocm oom", None),  # an alternative at the top: no single literal
        ("(?x) cuda  oom", None),  # verbose mode changes what the characters mean
        ("[oO]ut of memory", "ut of memory"),
    ],
)
def test_required_literal(pattern: str, literal: str | None) -> None:
    assert required_literal(pattern) == literal


def _naive(classifier: LogClassifier, data: bytes) -> list[tuple[int, str]]:
    found = []
    start = 0
    for line in data.split(b"\n"):
        kind = classifier.classify(line)
        if kind is not None:
            found.append((start, kind))
        start += len(line) + 1
    return found


def test_fast_path_agrees_with_line_by_line_classification() -> None:
    # Real lines, some re-cased, mixed at random with noise that shares words with the needles.
    rng = random.Random(4)
    real = [ln for f in EXPECTED for ln in (DATA / f).read_bytes().splitlines()]
    noise = [
        b"out of memo",
        b"memory out of memory-ish? no: out of  memory",
        b"gpu memory",
        b"error loading llama",
        b"",
        b"VRAM usage did recover",
    ]
    lines = []
    for _ in range(3000):
        line = rng.choice(real) if rng.random() < 0.5 else rng.choice(noise)
        if rng.random() < 0.2:
            line = line.upper()
        lines.append(line)
    data = b"\n".join(lines)
    patterns = {
        **DEFAULT_PATTERNS,
        "assert": (r"GGML_ASSERT\(.*\) failed",),
        "any_digit_pool": (r"pool_malloc_\w+ at",),
    }
    for classifier in (LogClassifier(patterns), LogClassifier(patterns, case_sensitive=True)):
        assert classifier.matches(data) == _naive(classifier, data)
    # and a pattern without a usable literal takes the line-by-line path, with the same result
    slow = LogClassifier({**patterns, "short": ["a|b"]})
    assert slow.matches(data) == _naive(slow, data)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 4096])
def test_scan_gives_the_same_counts_for_any_chunk_size(chunk_size: int) -> None:
    data = (
        b"".join((DATA / f).read_bytes() for f in sorted(EXPECTED)) + b"CUDA error: out of memory"
    )
    result = scan_stream(LogClassifier(), io.BytesIO(data).read, chunk_size)
    assert result.lines == data.count(b"\n") + 1  # the last line has no newline
    assert result.counts == {
        kind: sum(e[kind] for e in EXPECTED.values()) + (kind == "oom") for kind in DEFAULT_PATTERNS
    }


def test_an_invalid_pattern_names_its_kind_and_index() -> None:
    with pytest.raises(PatternError, match=r"oom\[1\]"):
        LogClassifier({"oom": ["fine", "broken("]})
