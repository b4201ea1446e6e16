"""Shell completion generated from the argparse parsers (bash run for real, zsh loaded by zsh's
own completion system), and the exit codes in ``--help``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from remediator.report.queries import EXIT_MEANINGS, ExitCode

BIN = Path(sys.executable).parent


def _script(command: str, shell: str) -> str:
    done = subprocess.run(
        [str(BIN / command), "completion", shell], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _bash_complete(script: str, line: str) -> list[str]:
    """What bash offers for ``line`` (the cursor at its end) with ``script`` loaded."""
    words = line.split(" ")
    probe = (
        f"{script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)}); "
        f"COMP_CWORD={len(words) - 1}; "
        f"$(complete -p {words[0]} | sed 's/.*-F \\([^ ]*\\) .*/\\1/'); "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_bash_completes_commands_options_and_choices() -> None:
    fleet = _script("model-fleet", "bash")
    assert _bash_complete(fleet, "model-fleet st") == ["status"]
    assert _bash_complete(fleet, "model-fleet status --f") == ["--fleet"]
    assert _bash_complete(fleet, "model-fleet history --") == sorted(
        _bash_complete(fleet, "model-fleet history --")
    ) and "--json" in _bash_complete(fleet, "model-fleet history --")
    assert _bash_complete(fleet, "model-fleet --log-format ") == ["text", "json"]
    # An option's value is not taken for the command.
    assert "--limit" in _bash_complete(fleet, "model-fleet --config c.yaml history --")
    exporter = _script("model-fleet-exporter", "bash")
    assert _bash_complete(exporter, "model-fleet-exporter serve --b") == ["--bind"]
    assert _bash_complete(exporter, "model-fleet-exporter s") == ["serve", "scan"]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed (scripts/bootstrap)")
def test_zsh_loads_the_completion_for_both_commands(tmp_path: Path) -> None:
    for command in ("model-fleet", "model-fleet-exporter"):
        path = tmp_path / f"_{command}"
        path.write_text(_script(command, "zsh"))
        assert subprocess.run(["zsh", "-n", str(path)], capture_output=True).returncode == 0
        probe = f"autoload -Uz compinit && compinit -u -d {tmp_path}/dump; source {path}; "
        probe += f"print -r -- ${{_comps[{command}]}}"
        done = subprocess.run(["zsh", "-f", "-c", probe], capture_output=True, text=True)
        assert done.stdout.strip() == "_" + command.replace("-", "_"), done.stderr


def test_help_lists_every_exit_code() -> None:
    assert set(EXIT_MEANINGS) == set(ExitCode)
    text = subprocess.run(
        [str(BIN / "model-fleet"), "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    for code, meaning in EXIT_MEANINGS.items():
        assert f"  {int(code)}  {meaning}" in text
    exporter = subprocess.run(
        [str(BIN / "model-fleet-exporter"), "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    assert "exit codes:" in exporter and "  2  bad arguments or configuration" in exporter
