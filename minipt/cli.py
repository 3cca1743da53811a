"""The ``minipt`` command line.

    minipt demo                  sentence embeddings from real pretrained weights
    minipt embed TEXT...         print or save embeddings (--out file.npy)
    minipt inspect PATH          module tree, parameter counts and the key map of a checkpoint
    minipt fetch NAME|--all      place a catalogued checkpoint under weights/ and verify it

Each command is a function ``cmd_<name>(args)``; ``COMMANDS`` lists them with
their arguments.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def cmd_fetch(args) -> int:
    from .hub import catalog, fetch

    names = list(catalog()) if args.all else args.names
    if not names:
        print("name a catalogued checkpoint or pass --all; known: " + ", ".join(catalog()))
        return 2
    for name in names:
        print(f"{name}: {fetch(name)}")
    return 0


# name -> (function, help, argument adder)
COMMANDS: dict = {
    "fetch": (
        cmd_fetch,
        "place catalogued checkpoints under weights/ and verify their sha256",
        lambda p: (p.add_argument("names", nargs="*"), p.add_argument("--all", action="store_true")),
    ),
}


def main(argv: list[str] | None = None) -> int:
    from .errors import MiniptError

    parser = argparse.ArgumentParser(prog="minipt", description="minimal, readable models on official weights")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, (function, help_text, add_arguments) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text)
        add_arguments(sub)
        sub.set_defaults(function=function)
    args = parser.parse_args(argv)
    try:
        return args.function(args) or 0
    except MiniptError as err:
        print(f"minipt {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
