"""What the training examples check of their options before any work: counts, rates and the output folder.

Not part of the library: each example imports it from its own folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from minipt.checks import check_float, check_int
from minipt.errors import MiniptError


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace, *, counts=(), naturals=(), rates=(), out: str | None = None) -> None:
    """A usage error (one line, exit status 2) unless each option named in ``counts`` is a positive integer,
    ``naturals`` an integer >= 0, ``rates`` a real > 0 (None: not given, its default applies), and the folder
    ``out`` can be made: checked before training, not after it."""
    given = lambda names: [(f"--{name.replace('_', '-')}", getattr(args, name)) for name in names if getattr(args, name) is not None]  # noqa: E731
    try:
        for option, value in given(counts):
            check_int(option, value, low=1)
        for option, value in given(naturals):
            check_int(option, value, low=0)
        for option, value in given(rates):
            check_float(option, value, low=0, low_open=True)
    except MiniptError as err:
        parser.error(str(err))
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        parser.error(f"--out {out} is a file: the run writes a folder there")


def given_or(value, default):
    """The option's value where it was given (0 too), else the default."""
    return default if value is None else value


def chosen(parser: argparse.ArgumentParser, option: str, value: str, known) -> list[str]:
    """The comma-separated names of ``value`` (spaces around each ignored), each one of ``known`` and given once:
    a usage error naming the first that is not, before any work."""
    names = [name.strip() for name in value.split(",")]
    for name in names:
        if name not in known:
            parser.error(f"{option}: unknown {name!r}; known: {', '.join(known)}")
    if len(set(names)) < len(names):
        parser.error(f"{option}: {value!r} names one twice")
    return names
