"""The option tables in docs/, made from the parser itself (the same metadata `--help` reads), never
copied by hand: each block between `<!-- options: COMMAND -->` and `<!-- /options -->` in a doc is
the table of that command's options, research ones (shown only by `--help-all`) marked *.

    PYTHONPATH=src python scripts/option_tables.py           # rewrite the blocks
    PYTHONPATH=src python scripts/option_tables.py --check   # exit 1 if a block is out of date

tests/test_scripts.py runs --check.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "docs" / "SAMPLERS.md"]
BLOCK = re.compile(r"(<!-- options: (?P<command>[a-z-]+) -->\n)(?P<table>.*?)(<!-- /options -->)", re.S)


def _actions(command: str, show_all: bool) -> list[argparse.Action]:
    from mnist_diffusion import cli
    from mnist_diffusion import options as opt

    before, opt.SHOW_ALL = opt.SHOW_ALL, show_all
    try:
        sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
        return [a for a in sub.choices[command]._actions if a.option_strings]
    finally:
        opt.SHOW_ALL = before


def _flag(a: argparse.Action) -> str:
    flag = max(a.option_strings, key=len)
    if a.nargs == 0:
        return flag
    if a.choices:
        return f"{flag} {{{','.join(map(str, a.choices))}}}"
    return f"{flag} {a.metavar or a.dest.split('.')[-1].upper()}"


def table(command: str) -> str:
    """The markdown table of `command`'s options (help and --debug left out)."""
    plain = {a.dest: a.help for a in _actions(command, False)}
    rows = ["| option | meaning |", "|---|---|"]
    for a in _actions(command, True):
        if a.dest in ("help", "help_all", "debug"):
            continue
        mark = " *" if plain.get(a.dest) == argparse.SUPPRESS else ""
        text = (a.help or "").replace("%%", "%").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{_flag(a)}`{mark} | {text} |".replace("`|", "`\\|"))
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + table(m.group("command")) + m.group(4), text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a block is out of date")
    args = p.parse_args(argv)
    stale = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        new = render(text)
        if new != text:
            stale.append(doc.relative_to(ROOT))
            if not args.check:
                from mnist_diffusion.atomic import atomic_write_bytes
                atomic_write_bytes(doc, new.encode("utf-8"))
    if args.check and stale:
        print(f"out of date: {', '.join(map(str, stale))}; run scripts/option_tables.py", file=sys.stderr)
        return 1
    print(f"{'stale' if stale and args.check else 'rewrote' if stale else 'current'}: "
          f"{', '.join(map(str, stale)) or ', '.join(str(d.relative_to(ROOT)) for d in DOCS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
