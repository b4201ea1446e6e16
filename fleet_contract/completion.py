"""Shell completion for bash and zsh, generated from a command's argparse parser.

``model-fleet completion bash|zsh`` and ``model-fleet-exporter completion bash|zsh`` print a
script; the parser is the one source, so a new subcommand or option completes without an edit
here. The scripts complete the subcommand, the options of the command line so far (the
command's own and the global ones), and the values of an option with ``choices``.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field

SHELLS = ("bash", "zsh")


@dataclass
class _Command:
    help: str = ""
    options: dict[str, tuple[str, tuple[str, ...] | None]] = field(default_factory=dict)


def _options(parser: argparse.ArgumentParser) -> dict[str, tuple[str, tuple[str, ...] | None]]:
    """Option string -> (help, choices or None; an option taking no value: ())."""
    found: dict[str, tuple[str, tuple[str, ...] | None]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or not action.option_strings:
            continue
        takes_value = action.nargs != 0
        choices = tuple(str(c) for c in action.choices) if action.choices else None
        helptext = "" if action.help in (None, argparse.SUPPRESS) else str(action.help)
        for option in action.option_strings:
            found[option] = (helptext, choices if takes_value else ())
    return found


def _commands(parser: argparse.ArgumentParser) -> dict[str, _Command]:
    commands: dict[str, _Command] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: str(a.help or "") for a in action._choices_actions}
            for name, sub in action.choices.items():
                commands[name] = _Command(helps.get(name, ""), _options(sub))
    return commands


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser``'s program for ``shell`` (bash or zsh)."""
    if shell not in SHELLS:
        raise ValueError(f"no completion for {shell!r}: one of {', '.join(SHELLS)}")
    return _bash(parser) if shell == "bash" else _zsh(parser)


def _function(prog: str) -> str:
    return "_" + re.sub(r"\W", "_", prog)


def _bash(parser: argparse.ArgumentParser) -> str:
    prog, commands, top = parser.prog, _commands(parser), _options(parser)
    valued = sorted({o for c in commands.values() for o, (_, v) in c.options.items() if v != ()})
    valued += sorted(o for o, (_, v) in top.items() if v != () and o not in valued)
    cases = []
    for name, cmd in commands.items():
        words = " ".join(sorted(cmd.options))  # a subcommand's own (the common ones included)
        cases.append(f"    {name}) opts={shlex.quote(words)} ;;")
    choices = []
    for cmd in [_Command(options=top), *commands.values()]:
        for option, (_, values) in cmd.options.items():
            if values:
                choices.append(f"    {option}) choices={shlex.quote(' '.join(values))} ;;")
    func = _function(prog)
    return "\n".join(
        [
            f"# bash completion for {prog} (generated from its argparse parser)",
            f"{func}() {{",
            '  local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
            "  local command='' opts='' choices='' i word",
            f"  local valued=' {' '.join(valued)} '",
            "  for ((i = 1; i < COMP_CWORD; i++)); do",
            '    word="${COMP_WORDS[i]}"',
            '    if [[ $word != -* && $valued != *" ${COMP_WORDS[i-1]} "* ]]; then',
            '      command="$word"; break',
            "    fi",
            "  done",
            '  case "$prev" in',
            *sorted(set(choices)),
            "  esac",
            "  if [[ -n $choices ]]; then",
            '    COMPREPLY=($(compgen -W "$choices" -- "$cur")); return',
            "  fi",
            '  case "$command" in',
            *cases,
            f"    '') opts={shlex.quote(' '.join([*commands, *sorted(top)]))} ;;",
            "  esac",
            '  COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
            "}",
            f"complete -F {func} {prog}",
            "",
        ]
    )


def _zsh_spec(option: str, helptext: str, values: tuple[str, ...] | None) -> str:
    described = helptext.replace("'", "'\\''").replace("[", "(").replace("]", ")")
    spec = f"{option}[{described}]"
    if values:
        spec += ":value:(" + " ".join(values) + ")"
    elif values is None:
        spec += ":value:"
    return "'" + spec + "'"


def _zsh(parser: argparse.ArgumentParser) -> str:
    prog, commands, top = parser.prog, _commands(parser), _options(parser)
    func = _function(prog)
    described = [
        f"    {shlex.quote(name + ':' + cmd.help.replace(':', ' -'))}"
        for name, cmd in commands.items()
    ]
    cases = []
    for name, cmd in commands.items():
        specs = " ".join(_zsh_spec(o, h, v) for o, (h, v) in sorted(cmd.options.items()))
        cases.append(f"    {name}) _arguments {specs} ;;")
    global_specs = " ".join(_zsh_spec(o, h, v) for o, (h, v) in sorted(top.items()))
    return "\n".join(
        [
            f"#compdef {prog}",
            f"# zsh completion for {prog} (generated from its argparse parser)",
            f"{func}() {{",
            "  local -a commands",
            "  commands=(",
            *described,
            "  )",
            "  local i command=''",
            "  for ((i = 2; i < CURRENT; i++)); do",
            "    if [[ $words[i] != -* ]]; then command=$words[i]; break; fi",
            "  done",
            "  if [[ -z $command ]]; then",
            f"    if [[ $PREFIX == -* ]]; then _arguments {global_specs}; return; fi",
            "    _describe command commands",
            "    return",
            "  fi",
            "  shift $((i - 1)) words; (( CURRENT -= i - 1 ))  # the command is words[1] now",
            "  case $command in",
            *cases,
            "  esac",
            "}",
            f'compdef {func} {prog} 2>/dev/null || {func} "$@"',
            "",
        ]
    )
