"""A stand-in for the ``docker`` CLI at the scripts' seam (scripts/up, down, bootstrap).

It answers only the calls those scripts make, from a JSON scenario named by
``FAKE_DOCKER_SCENARIO``, and appends each call to the JSON-lines log ``FAKE_DOCKER_LOG``:
``{"argv": [...], "files": {path: text}}``, where ``files`` holds the compose files whose
name says they were generated (the token overlay), read while they still exist.

Scenario keys (all optional): ``engine`` (server version; null: no engine answers, with
``engine_error``), ``runtimes`` (``docker info`` runtimes), ``compose`` (``docker compose
version --short``; null: no plugin), ``status`` (the remediator's status JSON),
``ollama_list`` (names ``ollama list`` shows), ``ports`` ({"SERVICE PORT": "HOST:PORT"}),
``fail`` ({"build"|"run"|"up"|"down"|"pull": exit code}).
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any

GLOBAL_OPTIONS = {"-f", "-p", "--env-file"}


def _compose(scenario: dict[str, Any], args: list[str]) -> int:
    while args and args[0] in GLOBAL_OPTIONS:
        args = args[2:]
    command, rest = args[0], args[1:]
    fail: dict[str, int] = scenario.get("fail", {})
    if command == "version":
        if scenario.get("compose") is None:
            print("docker: 'compose' is not a docker command.", file=sys.stderr)
            return 1
        print(scenario["compose"])
        return 0
    if command in ("build", "run", "up", "down"):
        return fail.get(command, 0)
    if command == "port":
        address = scenario.get("ports", {}).get(" ".join(rest))
        if address is None:
            print(f"no port {rest[-1]}/tcp for container {rest[0]}", file=sys.stderr)
            return 1
        print(address)
        return 0
    if command == "exec":
        if rest[0] == "-T":
            rest = rest[1:]
        if rest == ["remediator", "model-fleet", "status"]:
            print(json.dumps(scenario["status"], indent=2))
            return 0
        if rest == ["ollama", "ollama", "list"]:
            print("NAME                ID              SIZE      MODIFIED")
            for name in scenario.get("ollama_list", []):
                print(f"{name:<20}0123456789ab    1.3 GB    2 days ago")
            return 0
        if rest[:3] == ["ollama", "ollama", "pull"]:
            print(f"pulling manifest\npulling {rest[3]} 100%\nsuccess")
            return fail.get("pull", 0)
    print(f"fake docker: unexpected compose call {args}", file=sys.stderr)
    return 99


def main(argv: list[str]) -> int:
    """Answer one docker call from the scenario."""
    scenario = json.loads(Path(os.environ["FAKE_DOCKER_SCENARIO"]).read_text(encoding="utf-8"))
    files = {
        path: Path(path).read_text(encoding="utf-8")
        for flag, path in itertools.pairwise(argv)
        if flag == "-f" and "model-fleet-token" in Path(path).name
    }
    with open(os.environ["FAKE_DOCKER_LOG"], "a", encoding="utf-8") as log:
        log.write(json.dumps({"argv": argv, "files": files}) + "\n")
    if argv[:1] == ["version"]:
        if scenario.get("engine") is None:
            print(
                scenario.get("engine_error", "Cannot connect to the Docker daemon"), file=sys.stderr
            )
            return 1
        print(scenario["engine"])
        return 0
    if argv[:1] == ["info"]:
        print(json.dumps(scenario.get("runtimes", {"runc": {"path": "runc"}})))
        return 0
    if argv[:1] == ["compose"]:
        return _compose(scenario, argv[1:])
    print(f"fake docker: unexpected call {argv}", file=sys.stderr)
    return 99


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
