"""App-config writers: every format, nested key paths, atomic writes, snapshot and restore."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from remediator.appconfig import (
    FORMATS,
    AppConfigError,
    AppConfigFormat,
    AppConfigTarget,
    register_format,
    snapshot,
    write_all,
)

ROOT = Path(__file__).resolve().parents[1]


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_env_file_keeps_everything_but_the_value(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_bytes(
        b"# application settings\r\n"
        b"export OLLAMA_MODEL='llama3.2:3b'  # first\r\n"
        b"OLLAMA_HOST=http://ollama:11434\r\n"
        b'OLLAMA_MODEL = "llama3.2:3b" # managed by model-fleet\r\n'
        b"OLLAMA_MODEL_FALLBACK=phi3:mini"
    )
    target = AppConfigTarget(path, "env")
    assert target.key == "OLLAMA_MODEL"
    assert target.read_model() == "llama3.2:3b"

    assert target.write_model("qwen2.5:0.5b") is True
    assert path.read_bytes() == (
        b"# application settings\r\n"
        b"export OLLAMA_MODEL='qwen2.5:0.5b'  # first\r\n"
        b"OLLAMA_HOST=http://ollama:11434\r\n"
        b'OLLAMA_MODEL = "qwen2.5:0.5b" # managed by model-fleet\r\n'
        b"OLLAMA_MODEL_FALLBACK=phi3:mini"
    )
    assert target.read_model() == "qwen2.5:0.5b"


def test_env_key_is_appended_or_the_file_created(tmp_path: Path) -> None:
    existing = tmp_path / "existing.env"
    existing.write_text("APP_PORT=8000")
    target = AppConfigTarget(existing, "env", "LLM_MODEL")
    assert target.read_model() is None
    target.write_model("tinyllama:1.1b")
    assert existing.read_text() == "APP_PORT=8000\nLLM_MODEL=tinyllama:1.1b\n"

    new = AppConfigTarget(tmp_path / "new.env", "env")
    assert new.read_model() is None
    new.write_model("phi3:mini")
    assert (tmp_path / "new.env").read_text() == "OLLAMA_MODEL=phi3:mini\n"
    assert (tmp_path / "new.env").stat().st_mode & 0o777 == 0o644


def test_json_nested_key_path(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    original = {"server": {"port": 8000}, "llm": {"backends": [{"model": "llama3.2:3b"}]}}
    path.write_text(json.dumps(original, indent=4) + "\n")
    target = AppConfigTarget(path, "json", "llm.backends.0.model")
    assert target.read_model() == "llama3.2:3b"

    target.write_model("phi3:mini")
    text = path.read_text()
    assert json.loads(text) == {
        "server": {"port": 8000},
        "llm": {"backends": [{"model": "phi3:mini"}]},
    }
    assert text.startswith('{\n    "server"') and text.endswith("}\n")  # indentation kept

    deeper = AppConfigTarget(path, "json", "llm.defaults.model")
    assert deeper.read_model() is None
    deeper.write_model("qwen2.5:0.5b")
    assert json.loads(path.read_text())["llm"]["defaults"] == {"model": "qwen2.5:0.5b"}


def test_json_errors_name_the_path_and_leave_the_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"llm": {"model": 7}, "list": [1]}')
    with pytest.raises(AppConfigError, match=r"config\.json: read failed: .*holds int"):
        AppConfigTarget(path, "json", "llm.model").read_model()
    with pytest.raises(AppConfigError, match="list is a list, cannot hold key 'x'"):
        AppConfigTarget(path, "json", "list.x").write_model("phi3:mini")
    broken = tmp_path / "broken.json"
    broken.write_text('{"llm": ')
    with pytest.raises(AppConfigError, match="not valid JSON") as err:
        AppConfigTarget(broken, "json", "llm.model").write_model("phi3:mini")
    assert err.value.path == str(broken) and err.value.step == "write"
    assert broken.read_text() == '{"llm": '
    assert path.read_text() == '{"llm": {"model": 7}, "list": [1]}'


YAML_APP = """\
# chat app
server:
  port: 8000   # http
llm:
  # the model model-fleet manages
  model: llama3.2:3b   # do not edit by hand
  temperature: 0.2

# logging
logging:
  level: info
"""


def test_yaml_edit_keeps_comments(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(YAML_APP)
    target = AppConfigTarget(path, "yaml", "llm.model")
    assert target.read_model() == "llama3.2:3b"
    target.write_model("qwen2.5:0.5b")
    assert path.read_text() == YAML_APP.replace("model: llama3.2:3b   #", "model: qwen2.5:0.5b   #")

    # A name YAML would read as a number is quoted, so it stays a string.
    target.write_model("1.5")
    assert target.read_model() == "1.5"
    assert '  model: "1.5"   # do not edit by hand\n' in path.read_text()


def test_yaml_missing_keys_are_added_in_place(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(YAML_APP)
    AppConfigTarget(path, "yaml", "llm.fallback.model").write_model("tinyllama:1.1b")
    AppConfigTarget(path, "yaml", "embeddings.model").write_model("all-minilm")
    text = path.read_text()
    doc = yaml.safe_load(text)
    assert doc["llm"]["fallback"] == {"model": "tinyllama:1.1b"}
    assert doc["embeddings"] == {"model": "all-minilm"}
    assert doc["llm"]["model"] == "llama3.2:3b" and doc["logging"] == {"level": "info"}
    assert "# the model model-fleet manages" in text and "# logging" in text


def test_yaml_list_path_falls_back_to_a_full_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text("# note\nbackends:\n  - name: main\n    model: llama3.2:3b\n")
    target = AppConfigTarget(path, "yaml", "backends.0.model")
    assert target.read_model() == "llama3.2:3b"
    target.write_model("phi3:mini")
    assert yaml.safe_load(path.read_text()) == {
        "backends": [{"name": "main", "model": "phi3:mini"}]
    }


def test_text_file(tmp_path: Path) -> None:
    path = tmp_path / "MODEL"
    target = AppConfigTarget(path, "text")
    assert target.read_model() is None
    path.write_text("\n")
    assert target.read_model() is None
    target.write_model("phi3:mini")
    assert path.read_text() == "phi3:mini\n"
    assert target.read_model() == "phi3:mini"


def test_invalid_targets_are_refused() -> None:
    with pytest.raises(AppConfigError, match="format must be one of env, json, yaml, text"):
        AppConfigTarget("x.toml", "toml", "model")
    with pytest.raises(AppConfigError, match="needs a key path"):
        AppConfigTarget("x.json", "json")
    with pytest.raises(AppConfigError, match="needs a key path"):
        AppConfigTarget("x.yaml", "yaml", "llm..model")
    with pytest.raises(AppConfigError, match="no key"):
        AppConfigTarget("MODEL", "text", "model")
    with pytest.raises(AppConfigError, match="invalid model name"):
        AppConfigTarget("MODEL", "text").write_model("two\nlines")


def test_write_is_a_rename_that_keeps_mode_and_owner(tmp_path: Path) -> None:
    path = tmp_path / "app.env"
    path.write_text("OLLAMA_MODEL=llama3.2:3b\n")
    path.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(path, 1234, 4321)
    inode = path.stat().st_ino
    target = AppConfigTarget(path, "env")

    target.write_model("phi3:mini")
    st = path.stat()
    assert st.st_ino != inode  # replaced by rename, never rewritten in place
    assert st.st_mode & 0o7777 == 0o640
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1234, 4321)
    assert _leftovers(tmp_path) == []

    # Already on that model: nothing is written at all.
    assert target.write_model("phi3:mini") is False
    assert path.stat().st_ino == st.st_ino


def test_write_through_a_symlink_keeps_the_link(tmp_path: Path) -> None:
    real_dir = tmp_path / "mounted"
    real_dir.mkdir()
    (real_dir / "model.txt").write_text("llama3.2:3b\n")
    link = tmp_path / "model.txt"
    link.symlink_to(real_dir / "model.txt")
    AppConfigTarget(link, "text").write_model("phi3:mini")
    assert link.is_symlink()
    assert (real_dir / "model.txt").read_text() == "phi3:mini\n"


def test_unwritable_location_is_an_error_naming_the_path(tmp_path: Path) -> None:
    # Tests run as root, for whom permissions do not bite: a parent that is a file does.
    (tmp_path / "not-a-dir").write_text("I am a file\n")
    path = tmp_path / "not-a-dir" / "app.env"
    target = AppConfigTarget(path, "env")
    with pytest.raises(AppConfigError) as err:
        target.write_model("phi3:mini")
    assert err.value.path == str(path)
    assert err.value.step == "write"
    assert "NotADirectoryError" in err.value.cause
    assert str(path) in str(err.value)
    assert (tmp_path / "not-a-dir").read_text() == "I am a file\n"


def test_failed_write_leaves_the_original_intact(tmp_path: Path) -> None:
    # A real failure half-way through writing: the file size limit makes write() fail with
    # EFBIG once the temp file passes 16 bytes; the original must survive untouched.
    path = tmp_path / "app.env"
    original = "# settings\nOLLAMA_MODEL=llama3.2:3b\n"
    path.write_text(original)
    script = (
        "import sys\n"
        "from remediator.appconfig import AppConfigTarget, AppConfigError\n"
        "try:\n"
        "    AppConfigTarget(sys.argv[1], 'env').write_model('qwen2.5:0.5b')\n"
        "except AppConfigError as exc:\n"
        "    print('ERROR', exc.step, exc.cause)\n"
    )

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))

    done = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=limit_file_size,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.stdout.startswith("ERROR write OSError: File too large"), done
    assert path.read_text() == original
    assert _leftovers(tmp_path) == []


def test_snapshot_restores_several_targets(tmp_path: Path) -> None:
    env = tmp_path / "app.env"
    env.write_text("OLLAMA_MODEL=llama3.2:3b\n")
    env.chmod(0o600)
    yml = tmp_path / "app.yaml"
    yml.write_text(YAML_APP)
    created = tmp_path / "MODEL"
    targets = [
        AppConfigTarget(env, "env"),
        AppConfigTarget(yml, "yaml", "llm.model"),
        AppConfigTarget(created, "text"),
        AppConfigTarget(env, "env", "OTHER_MODEL"),  # same file twice: one snapshot entry
    ]
    snap = snapshot(targets)
    assert len(snap.files) == 3
    for t in targets:
        t.write_model("qwen2.5:0.5b")
    assert created.exists()

    restored = snap.restore()
    assert sorted(restored) == sorted([env, yml, created])
    assert env.read_text() == "OLLAMA_MODEL=llama3.2:3b\n"
    assert env.stat().st_mode & 0o777 == 0o600
    assert yml.read_text() == YAML_APP
    assert not created.exists()
    assert snap.restore() == []  # nothing left to undo


def test_write_all_rolls_back_when_one_target_fails(tmp_path: Path) -> None:
    env = tmp_path / "app.env"
    env.write_text("OLLAMA_MODEL=llama3.2:3b\n")
    created = tmp_path / "MODEL"
    broken = tmp_path / "app.json"
    broken.write_text('{"llm": {"model": "llama3.2:3b"')  # fails only when written
    targets = [
        AppConfigTarget(env, "env"),
        AppConfigTarget(created, "text"),
        AppConfigTarget(broken, "json", "llm.model"),
    ]
    with pytest.raises(AppConfigError) as err:
        write_all(targets, "phi3:mini")
    assert (err.value.path, err.value.step) == (str(broken), "write")
    assert env.read_text() == "OLLAMA_MODEL=llama3.2:3b\n"  # written, then restored
    assert not created.exists()  # created, then removed

    good = write_all(targets[:2], "phi3:mini")
    assert env.read_text() == "OLLAMA_MODEL=phi3:mini\n"
    good.restore()
    assert env.read_text() == "OLLAMA_MODEL=llama3.2:3b\n"


def test_unreachable_target_fails_before_anything_is_written(tmp_path: Path) -> None:
    env = tmp_path / "app.env"
    env.write_text("OLLAMA_MODEL=llama3.2:3b\n")
    (tmp_path / "blocker").write_text("a file, not a directory\n")
    unreachable = tmp_path / "blocker" / "app.json"
    targets = [AppConfigTarget(env, "env"), AppConfigTarget(unreachable, "json", "llm.model")]
    with pytest.raises(AppConfigError) as err:
        write_all(targets, "phi3:mini")
    assert (err.value.path, err.value.step) == (str(unreachable), "snapshot")
    assert env.read_text() == "OLLAMA_MODEL=llama3.2:3b\n"


class PropertiesFormat(AppConfigFormat):
    """A made-up format for the test: Java-style ``key = value`` lines."""

    name = "properties"
    default_key = "model"

    def check_key(self, key: str | None) -> str | None:
        return key or self.default_key

    def read(self, text: str, key: str) -> str | None:
        pairs = (line.partition("=") for line in text.splitlines())
        return next((v.strip() for k, _, v in pairs if k.strip() == key), None)

    def render(self, text: str | None, key: str, model: str) -> str:
        lines = [ln for ln in (text or "").splitlines() if ln.partition("=")[0].strip() != key]
        return "\n".join([*lines, f"{key} = {model}"]) + "\n"


def test_a_new_format_plugs_in_through_the_registry_alone(tmp_path: Path) -> None:
    from remediator.config import ConfigError, parse_config

    path = tmp_path / "app.properties"
    path.write_text("# the app\nport = 8000\nmodel = llama3.2:3b\n")
    register_format(PropertiesFormat())
    try:
        fleet = {"app_config": [{"path": str(path), "format": "properties"}]}
        config = parse_config({"fleets": {"a": fleet}})
        (target,) = config.fleets["a"].app_config
        assert target == AppConfigTarget(path, "properties", "model")  # the format's default
        assert target.read_model() == "llama3.2:3b"
        write_all([target], "phi3:mini")
        assert path.read_text() == "# the app\nport = 8000\nmodel = phi3:mini\n"
        with pytest.raises(ConfigError, match="one of env, json, yaml, text, properties, got"):
            parse_config({"fleets": {"a": {"app_config": [{"path": "x", "format": "toml"}]}}})
    finally:
        del FORMATS["properties"]
    with pytest.raises(AppConfigError, match=r"format must be one of env, json, yaml, text$"):
        AppConfigTarget(path, "properties")


def test_key_rules_fail_at_configuration_time() -> None:
    from remediator.config import ConfigError, parse_config

    for item, message in [
        ({"path": "x", "format": "yaml", "key": "llm..model"}, "a yaml target needs a key path"),
        ({"path": "x", "format": "env", "key": "NO SPACES"}, "invalid env variable name"),
    ]:
        with pytest.raises(ConfigError, match=rf"app_config\[0\]\.key: {message}"):
            parse_config({"fleets": {"a": {"app_config": [item]}}})
