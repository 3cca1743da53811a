"""Key maps: how an official checkpoint names its tensors, and how minipt does.

A key map is data: a table of ``(official pattern, minipt pattern)`` rules in
which ``{name}`` stands for one dotted segment (a layer number, ``weight``,
``bias``) and means the same on both sides. The same table is read left to
right when loading and right to left when saving, so the two can never drift
apart. Around the rules the map declares, by name, everything else an official
file may hold:

- ``renames``: other spellings accepted on load (legacy ``LayerNorm.gamma``,
  a missing prefix), applied in order;
- ``ignore``: tensors deliberately not loaded (buffers, heads the model lacks);
- ``tied``: tensors that repeat another one (an output layer tied to the
  input embedding); accepted on load, never written;
- ``optional_prefix``: a prefix some files put before every key;
- ``defaults``: tensors a format may lack, with the value they take then
  (BatchNorm's ``num_batches_tracked``, absent from files saved before
  PyTorch 0.4.1, starts at 0 as torch.nn itself does).

``{*}`` (only in ``renames`` and ``ignore``) stands for any run of segments.
A rule may carry a ``Transform`` for tensors stored in another layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Sequence

import torch

Shape = tuple


@dataclass(frozen=True)
class Transform:
    """A change of layout between the official tensor and minipt's."""

    name: str
    to_minipt: Callable[[torch.Tensor], torch.Tensor]
    to_official: Callable[[torch.Tensor], torch.Tensor]
    minipt_shape: Callable[[Shape], Shape]  # official shape -> minipt shape, checked before any read


# GPT-2 style Conv1D weights are stored (in, out); nn.Linear keeps (out, in).
TRANSPOSE = Transform("transpose", lambda t: t.t().contiguous(), lambda t: t.t().contiguous(), lambda s: tuple(reversed(s)))

_PLACEHOLDER = re.compile(r"\{(\w+|\*)\}")


def _compile(pattern: str) -> re.Pattern:
    parts, pos = [], 0
    for m in _PLACEHOLDER.finditer(pattern):
        parts.append(re.escape(pattern[pos : m.start()]))
        parts.append(r"(?P<_star>.+)" if m.group(1) == "*" else rf"(?P<{m.group(1)}>[^.]+)")
        pos = m.end()
    parts.append(re.escape(pattern[pos:]))
    return re.compile("".join(parts) + r"\Z")


def _fill(pattern: str, values: dict[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values["_star" if m.group(1) == "*" else m.group(1)], pattern)


class KeyRow(NamedTuple):
    """One line of a key map made concrete (``KeyMap.table``)."""

    official: str  # the official name ("" for a model tensor the map gives none)
    minipt: str  # minipt's name ("" for a file tensor that fills none)
    transform: str = ""  # the layout transform's name, if any
    file_key: str = ""  # the name as the file spells it (prefix, legacy spelling), for rows read off a file
    status: str = "mapped"  # mapped / tied (repeats ``KeyMap.tied[official]``) / ignored / unexpected / missing


@dataclass(frozen=True)
class Rule:
    official: str
    minipt: str
    transform: Transform | None = None

    def __post_init__(self):
        names = lambda p: sorted(_PLACEHOLDER.findall(p))  # noqa: E731
        if names(self.official) != names(self.minipt):
            raise ValueError(f"key map rule {self.official!r} -> {self.minipt!r}: placeholders differ")
        object.__setattr__(self, "_official_re", _compile(self.official))
        object.__setattr__(self, "_minipt_re", _compile(self.minipt))


class KeyMap:
    """A reversible table from official tensor names to minipt's names."""

    def __init__(
        self,
        rules: Iterable[tuple],
        *,
        renames: Iterable[tuple[str, str]] = (),
        ignore: Iterable[str] = (),
        tied: Iterable[tuple[str, str]] = (),
        optional_prefix: str = "",
        defaults: dict[str, torch.Tensor] | None = None,
    ):
        self.rules: list[Rule] = [r if isinstance(r, Rule) else Rule(*r) for r in rules]
        self.renames = [(legacy, official) for legacy, official in renames]
        self.ignore = list(ignore)
        self.tied = dict(tied)  # official key -> the official key it repeats
        self.optional_prefix = optional_prefix
        self._renames = [(_compile(legacy), official) for legacy, official in self.renames]
        self._ignore = [_compile(p) for p in self.ignore]
        self.defaults = dict(defaults or {})  # official pattern -> the tensor it is when the file lacks it
        self._defaults = [(_compile(p), value) for p, value in self.defaults.items()]

    # -- composing maps ---------------------------------------------------
    def prefixed(self, official: str, minipt: str) -> "KeyMap":
        """The same map for a model nested under ``minipt`` whose keys carry ``official``."""
        return KeyMap(
            [Rule(official + r.official, minipt + r.minipt, r.transform) for r in self.rules],
            renames=[(official + a, official + b) for a, b in self.renames],
            ignore=[official + p for p in self.ignore],
            tied={official + k: official + v for k, v in self.tied.items()},
            defaults={official + k: v for k, v in self.defaults.items()},
        )

    def __add__(self, other: "KeyMap") -> "KeyMap":
        return KeyMap(
            self.rules + other.rules,
            renames=self.renames + other.renames,
            ignore=self.ignore + other.ignore,
            tied={**self.tied, **other.tied},
            optional_prefix=self.optional_prefix or other.optional_prefix,
            defaults={**self.defaults, **other.defaults},
        )

    # -- one key at a time ------------------------------------------------
    def canonical(self, key: str) -> str:
        """The official spelling of a key as found in a file (prefix and legacy names resolved)."""
        if self.optional_prefix and key.startswith(self.optional_prefix):
            key = key[len(self.optional_prefix) :]
        for legacy, official in self._renames:  # in order, each applied at most once
            m = legacy.match(key)
            if m:
                key = _fill(official, m.groupdict())
        return key

    def is_ignored(self, official_key: str) -> bool:
        return official_key in self.tied or any(p.match(official_key) for p in self._ignore)

    def default(self, official_key: str) -> torch.Tensor | None:
        """The value a tensor takes when the file lacks it, if the format allows that."""
        for pattern, value in self._defaults:
            if pattern.match(official_key):
                return value.clone()  # each module gets its own (BatchNorm counts in place)
        return None

    def to_minipt(self, official_key: str) -> tuple[str, Transform | None] | None:
        for rule in self.rules:
            m = rule._official_re.match(official_key)
            if m:
                return _fill(rule.minipt, m.groupdict()), rule.transform
        return None

    def to_official(self, minipt_key: str) -> tuple[str, Transform | None] | None:
        for rule in self.rules:
            m = rule._minipt_re.match(minipt_key)
            if m:
                return _fill(rule.official, m.groupdict()), rule.transform
        return None

    def table(self, minipt_keys: Sequence[str], file_keys: Iterable[str] | None = None) -> list[KeyRow]:
        """The map made concrete for a model's keys: one ``KeyRow(official, minipt, transform)`` per key it names.

        With the ``file_keys`` of a checkpoint, one row per file key in file order
        (mapped into the model, tied, ignored or unexpected: no rule, or a rule
        to a tensor the model lacks), then one ``missing`` row per model key that
        no file key fills.
        """
        if file_keys is None:
            rows = []
            for key in minipt_keys:
                found = self.to_official(key)
                if found is not None:
                    official, transform = found
                    rows.append(KeyRow(official, key, transform.name if transform else ""))
            return rows
        wanted, filled, rows = set(minipt_keys), set(), []
        for file_key in file_keys:
            official = self.canonical(file_key)
            target = self.to_minipt(official)
            if target is not None and target[0] in wanted:
                key, transform = target
                filled.add(key)
                rows.append(KeyRow(official, key, transform.name if transform else "", file_key))
            else:
                status = "tied" if official in self.tied else "ignored" if self.is_ignored(official) else "unexpected"
                rows.append(KeyRow(official, "", "", file_key, status))
        for key in minipt_keys:
            if key not in filled:
                found = self.to_official(key)
                rows.append(KeyRow(found[0] if found else "", key, found[1].name if found and found[1] else "", "", "missing"))
        return rows
