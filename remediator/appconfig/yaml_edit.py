"""The YAML line editor: sets one scalar of a YAML file in its text, so comments and layout survive.

It handles block mappings only (a key path of mapping keys and list indexes, the value a plain
or quoted scalar, or missing keys added at the end of their block). It offers candidate texts;
the YAML format keeps the first that loads back to exactly the expected document, and
re-serialises otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_YAML_KEY = re.compile(r"^(?P<key>\"[^\"]*\"|'[^']*'|[^\s#:'\"][^#]*?)\s*:(?=\s|$)(?P<rest>.*)$")


class ScalarError(ValueError):
    """A value's quoting is broken."""


def split_scalar(rest: str) -> tuple[str, str, str]:
    """Split the text after ``=`` or ``:`` into (quote, value, trailer such as a comment)."""
    if rest[:1] in ("'", '"'):
        quote = rest[0]
        end = rest.find(quote, 1)
        while quote == '"' and end > 0 and rest[end - 1] == "\\":
            end = rest.find(quote, end + 1)
        if end < 0:
            raise ScalarError(f"unterminated quote in {rest!r}")
        return quote, rest[1:end].replace('\\"', '"'), rest[end + 1 :]
    match = re.search(r"\s+#", rest)
    cut = match.start() if match else len(rest.rstrip())
    value = rest[:cut].rstrip()
    return "", value, rest[len(value) :]


def line_edits(text: str, segments: list[str], model: str) -> Iterable[str]:
    """Candidate texts with the scalar at ``segments`` replaced, or the missing keys added.

    Handles block mappings only; anything else yields nothing and the caller re-serialises.
    """
    lines = text.splitlines(keepends=True)
    newline = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    indents = [len(ln) - len(ln.lstrip(" ")) for ln in lines if ln.strip()]
    step = min((n for n in indents if n > 0), default=2)  # the file's own indentation step
    start, parent_indent = 0, -1
    parent_line: int | None = None
    for depth, seg in enumerate(segments):
        child_indent: int | None = None
        target: int | None = None
        block_end = len(lines)
        for i in range(start, len(lines)):
            stripped = lines[i].lstrip(" ")
            if not stripped.strip() or stripped.startswith(("#", "---", "...")):
                continue
            indent = len(lines[i]) - len(stripped)
            if indent <= parent_indent:
                block_end = i
                break
            if child_indent is None:
                child_indent = indent
            if indent != child_indent:
                continue
            m = _YAML_KEY.match(stripped.rstrip("\r\n"))
            if m and target is None and m["key"].strip("'\"") == seg:
                target = i
        if depth == 0 and child_indent is not None and child_indent > 0:
            return  # an indented document: leave it to the serialiser
        if target is None:
            yield from _insert(
                lines,
                block_end,
                parent_line,
                parent_indent,
                child_indent,
                step,
                segments[depth:],
                model,
                newline,
            )
            return
        if depth < len(segments) - 1:
            start, parent_indent, parent_line = target + 1, child_indent or 0, target
    yield from _replace(lines, target, model)


def _insert(
    lines: list[str],
    block_end: int,
    parent_line: int | None,
    parent_indent: int,
    child_indent: int | None,
    step: int,
    missing: list[str],
    model: str,
    newline: str,
) -> Iterable[str]:
    if parent_line is not None:
        rest = _YAML_KEY.match(lines[parent_line].lstrip(" ").rstrip("\r\n"))
        value = rest["rest"].strip() if rest else ""
        if rest is None or (value and not value.startswith("#")):
            return  # the parent holds a scalar or a flow mapping: not ours to restructure
    # Insert after the block's last key, before the blank lines and comments that follow it.
    at = block_end
    while at > 0 and (not lines[at - 1].strip() or lines[at - 1].lstrip().startswith("#")):
        at -= 1
    indent = child_indent if child_indent is not None else parent_indent + step
    head = lines[:at]
    if head and not head[-1].endswith("\n"):
        head = [*head[:-1], head[-1] + newline]
    for q in ("", '"'):
        new = [f"{' ' * (indent + n * step)}{seg}:{newline}" for n, seg in enumerate(missing)]
        pad = " " * (indent + (len(missing) - 1) * step)
        new[-1] = f"{pad}{missing[-1]}: {q}{model}{q}{newline}"
        yield "".join([*head, *new, *lines[at:]])


def _replace(lines: list[str], target: int | None, model: str) -> Iterable[str]:
    if target is None:
        return
    line = lines[target]
    body = line.rstrip("\r\n")
    stripped = body.lstrip(" ")
    m = _YAML_KEY.match(stripped)
    if m is None:
        return
    rest = m["rest"]
    space = rest[: len(rest) - len(rest.lstrip())]
    value_part = rest.lstrip()
    if not value_part or value_part.startswith(("#", "|", ">", "&", "*", "!", "{", "[")):
        return
    try:
        quote, _, trailer = split_scalar(value_part)
    except ScalarError:
        return
    prefix = body[: len(body) - len(stripped)] + stripped[: len(stripped) - len(rest)]
    ending = line[len(body) :]
    for q in [quote] if quote else ["", '"']:
        if q == "'" and "'" in model:
            continue
        value = model.replace('"', '\\"') if q == '"' else model
        new_line = f"{prefix}{space or ' '}{q}{value}{q}{trailer}{ending}"
        yield "".join([*lines[:target], new_line, *lines[target + 1 :]])
