"""Reading the JSON files of checkpoints, tokenizers and pipelines: one reader, one set of errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import CheckpointError, MiniptError

_ABSENT = object()


def read_json(path: Path, expected: type = dict, *, default: Any = _ABSENT, what: str = "an object",
              error: type[MiniptError] = CheckpointError) -> Any:
    """The JSON value in ``path``, of type ``expected``; ``default`` for an absent file when one is
    given. A file that cannot be read, is empty, is not UTF-8 or not JSON, or holds another type of
    value raises ``error`` naming the file and the problem (``what`` describes the value expected)."""
    path = Path(path)
    if not path.is_file():
        if default is not _ABSENT:
            return default
        raise error(f"{path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path} cannot be read as UTF-8 text: {err}") from None
    except OSError as err:
        raise error(f"{path} cannot be read: {err}") from None
    if not text.strip():
        raise error(f"{path} is empty ({len(text)} bytes); expected {what}")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as err:
        raise error(f"{path} is not valid JSON: {err}") from None
    if not isinstance(value, expected):
        raise error(f"{path} holds a JSON {type(value).__name__}, expected {what}")
    return value
