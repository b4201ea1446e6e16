"""The first step of a switch: the new rung's model into the server's store.

A plain rung is pulled. A custom rung (``create``) missing from the store is made: its base
pulled if missing, then created (Ollama's ``/api/create``). Both come before anything in the
fleet changes, so a failure here has nothing to undo: a pulled base or a created model left
in the store harms nothing, and the next switch finds it there.
"""

from __future__ import annotations

from collections.abc import Iterator

from remediator.config import Rung
from remediator.ports.model_server import ModelServer, ModelServerError
from remediator.switch.plan import Done, SwitchFailed


def make_present(server: ModelServer, rung: Rung, timeout: float) -> Iterator[Done]:
    """Pull or create ``rung``'s model, yielding each step once it is done.

    Raises SwitchFailed at step ``pull`` (the model, or a custom rung's base) or ``create``,
    the cause naming the model, its base and the server's own words.
    """
    spec, new = rung.create, rung.name
    if spec is None:
        try:
            pulled = server.ensure_pulled(new, timeout=timeout)
        except ModelServerError as exc:
            raise SwitchFailed("pull", str(exc)) from exc
        yield Done("pulled", new, (f"pulled {new}" if pulled else f"{new} already pulled",))
        return
    base = spec.from_model
    try:
        if server.has_model(new):
            # Made by an earlier switch: the journal still shows both steps as done.
            yield Done("pulled", new)
            yield Done("created", new, (f"{new} already created",))
            return
        pulled = server.ensure_pulled(base, timeout=timeout)
    except ModelServerError as exc:
        raise SwitchFailed("pull", f"base of {new}: {exc}") from exc
    yield Done("pulled", base, (f"pulled {base}" if pulled else f"{base} already pulled",))
    try:
        server.create(new, spec, timeout=timeout)
    except ModelServerError as exc:
        raise SwitchFailed("create", f"create {new} from {base}: {exc.cause}") from exc
    yield Done("created", new, (f"created {new}",))


def would_make_present(server: ModelServer, rung: Rung) -> str:
    """What :func:`make_present` would do, from read-only lookups (a dry run)."""
    new, spec = rung.name, rung.create
    make = f"would pull {new}" if spec is None else f"would create {new} from {spec.from_model}"
    try:
        if server.has_model(new):
            return f"would use {new} (already {'pulled' if spec is None else 'created'})"
        if spec is not None and not server.has_model(spec.from_model):
            return f"{make} (pulling {spec.from_model} first)"
    except ModelServerError as exc:
        return f"{make} (could not check: {exc})"
    return make
