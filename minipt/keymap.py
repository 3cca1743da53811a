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
- ``written_twice``: tensors the official format writes under a second name
  too (one parameter under two names, RoBERTa's untied ``lm_head.bias`` and
  ``lm_head.decoder.bias``); accepted on load as ``tied`` ones, and written;
- ``optional_prefix``: a prefix some files put before every key;
- ``defaults``: tensors a format may lack, with the value they take then
  (BatchNorm's ``num_batches_tracked``, absent from files saved before
  PyTorch 0.4.1, starts at 0 as torch.nn itself does).

``{*}`` (only in ``renames`` and ``ignore``) stands for any run of segments.
A rule may carry a ``Transform`` for tensors stored in another layout, or name
several minipt tensors with a ``Split``: the official tensor is theirs joined
along one dimension (torchvision's ``in_proj_weight``, q, k and v stacked)::

    ("{l}.self_attention.in_proj_{p}",
     ("{l}.attn.q_proj.{p}", "{l}.attn.k_proj.{p}", "{l}.attn.v_proj.{p}"), Split(dim=0))

Loading cuts the official tensor into equal parts, saving joins them back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Sequence

import torch

from .errors import KeyMismatchError

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


@dataclass(frozen=True)
class Split:
    """One official tensor that is several minipt tensors of one shape joined along ``dim``."""

    dim: int = 0

    def __post_init__(self):
        if not isinstance(self.dim, int) or self.dim < 0:
            raise ValueError(f"Split(dim={self.dim!r}): dim counts from the first dimension, 0 or more")

    def label(self, index: int, count: int) -> str:
        return f"split {index + 1}/{count} along dim {self.dim}"

    def part_shape(self, shape: Shape, count: int) -> Shape | None:
        """The shape of each of ``count`` parts of an official ``shape``; None: it does not split evenly."""
        if len(shape) <= self.dim or shape[self.dim] % count:
            return None
        return (*shape[: self.dim], shape[self.dim] // count, *shape[self.dim + 1 :])

    def whole_shape(self, part: Shape, count: int) -> Shape:
        return (*part[: self.dim], part[self.dim] * count, *part[self.dim + 1 :])

    def parts(self, tensor: torch.Tensor, count: int) -> tuple[torch.Tensor, ...]:
        return tensor.chunk(count, self.dim)  # views of the whole

    def join(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(parts), self.dim)


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
    minipt: str | tuple[str, ...]  # several names only with a Split
    transform: Transform | Split | None = None

    def __post_init__(self):
        names = lambda p: sorted(_PLACEHOLDER.findall(p))  # noqa: E731
        if any(names(self.official) != names(part) for part in self.parts):
            raise ValueError(f"key map rule {self.official!r} -> {self.minipt!r}: placeholders differ")
        if isinstance(self.transform, Split) != isinstance(self.minipt, tuple) or (isinstance(self.minipt, tuple) and len(self.minipt) < 2):
            raise ValueError(f"key map rule {self.official!r} -> {self.minipt!r}: a Split names two or more minipt tensors, and only a Split does")
        object.__setattr__(self, "_official_re", _compile(self.official))
        object.__setattr__(self, "_minipt_re", [_compile(part) for part in self.parts])

    @property
    def parts(self) -> tuple[str, ...]:
        """The minipt patterns, one for a plain rule."""
        return self.minipt if isinstance(self.minipt, tuple) else (self.minipt,)

    def prefixed(self, official: str, minipt: str) -> "Rule":
        parts = tuple(minipt + part for part in self.parts)
        return Rule(official + self.official, parts if isinstance(self.minipt, tuple) else parts[0], self.transform)


class KeyMap:
    """A reversible table from official tensor names to minipt's names."""

    def __init__(
        self,
        rules: Iterable[tuple],
        *,
        renames: Iterable[tuple[str, str]] = (),
        ignore: Iterable[str] = (),
        tied: Iterable[tuple[str, str]] = (),
        written_twice: Iterable[tuple[str, str]] = (),
        optional_prefix: str = "",
        defaults: dict[str, torch.Tensor] | None = None,
    ):
        self.rules: list[Rule] = [r if isinstance(r, Rule) else Rule(*r) for r in rules]
        self.renames = [(legacy, official) for legacy, official in renames]
        self.ignore = list(ignore)
        self.written_twice = dict(written_twice)  # official key -> the official key it repeats, written too
        self.tied = {**dict(tied), **self.written_twice}  # official key -> the official key it repeats
        self.optional_prefix = optional_prefix
        self._renames = [(_compile(legacy), official) for legacy, official in self.renames]
        self._ignore = [_compile(p) for p in self.ignore]
        self.defaults = dict(defaults or {})  # official pattern -> the tensor it is when the file lacks it
        self._defaults = [(_compile(p), value) for p, value in self.defaults.items()]

    # -- composing maps ---------------------------------------------------
    def prefixed(self, official: str, minipt: str) -> "KeyMap":
        """The same map for a model nested under ``minipt`` whose keys carry ``official``."""
        return KeyMap(
            [rule.prefixed(official, minipt) for rule in self.rules],
            renames=[(official + a, official + b) for a, b in self.renames],
            ignore=[official + p for p in self.ignore],
            tied={official + k: official + v for k, v in self.tied.items() if k not in self.written_twice},
            written_twice={official + k: official + v for k, v in self.written_twice.items()},
            defaults={official + k: v for k, v in self.defaults.items()},
        )

    def __add__(self, other: "KeyMap") -> "KeyMap":
        return KeyMap(
            self.rules + other.rules,
            renames=self.renames + other.renames,
            ignore=self.ignore + other.ignore,
            tied={**self.tied, **other.tied},
            written_twice={**self.written_twice, **other.written_twice},
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

    def to_minipt(self, official_key: str) -> tuple[str | tuple[str, ...], Transform | Split | None] | None:
        """minipt's name for an official key and the rule's transform; a Split's names, in order."""
        keys, transform = self._targets(official_key)
        if not keys:
            return None
        return (keys if isinstance(transform, Split) else keys[0]), transform

    def _targets(self, official_key: str) -> tuple[tuple[str, ...], Transform | Split | None]:
        """The minipt keys an official key fills (none without a rule) and the rule's transform."""
        for rule in self.rules:
            m = rule._official_re.match(official_key)
            if m:
                return tuple(_fill(part, m.groupdict()) for part in rule.parts), rule.transform
        return (), None

    def to_official(self, minipt_key: str) -> tuple[str, Transform | Split | None] | None:
        """The official name for a minipt key and the rule's transform (a Split's for each of its parts)."""
        for rule in self.rules:
            for pattern in rule._minipt_re:
                m = pattern.match(minipt_key)
                if m:
                    return _fill(rule.official, m.groupdict()), rule.transform
        return None

    def minipt_shapes(self, official_key: str, shape: Shape) -> dict[str, Shape | None]:
        """The minipt tensors an official tensor of ``shape`` fills, with their shapes (None: a Split's
        tensor that does not split evenly); empty when no rule names the key."""
        keys, transform = self._targets(official_key)
        if isinstance(transform, Split):
            return dict.fromkeys(keys, transform.part_shape(shape, len(keys)))
        return {key: transform.minipt_shape(shape) if transform is not None else shape for key in keys}

    def minipt_tensors(self, official_key: str, tensor: torch.Tensor, *, views: bool = False) -> dict[str, torch.Tensor]:
        """An official tensor as the minipt tensors it fills. A Split's parts are copies, each owning its
        memory, or with ``views=True`` views of ``tensor`` (of a memory-mapped file, say)."""
        keys, transform = self._targets(official_key)
        if isinstance(transform, Split):
            parts = transform.parts(tensor, len(keys))
            return dict(zip(keys, parts if views else [part.clone() for part in parts]))
        return {key: transform.to_minipt(tensor) if transform is not None else tensor for key in keys}

    def official_shape(self, minipt_key: str, shape: Shape) -> Shape:
        """The shape of the official tensor a minipt tensor of ``shape`` belongs to (a Split's parts all of that shape)."""
        found = self.to_official(minipt_key)
        transform = found[1] if found else None
        if isinstance(transform, Split):
            return transform.whole_shape(shape, len(self._targets(found[0])[0]))
        return transform.minipt_shape(shape) if transform is not None else shape  # layout transforms are involutions

    def official_tensors(self, tensors: dict[str, torch.Tensor], owner: str) -> dict[str, torch.Tensor]:
        """``owner``'s tensors under their official names and in the official layout (a Split's parts joined).

        Every key must have an official name, and every part of a Split must be there (else KeyMismatchError)."""
        state = {}
        for key, tensor in tensors.items():
            found = self.to_official(key)
            if found is None:
                raise KeyMismatchError(f"{owner}.{key} has no official name in the key map")
            official, transform = found
            if isinstance(transform, Split):
                if official not in state:
                    parts = self._targets(official)[0]
                    absent = [part for part in parts if part not in tensors]
                    if absent:
                        raise KeyMismatchError(f"{owner}.{key} is a part of {official}, which joins {', '.join(parts)}, "
                                               f"but {owner} has no {', '.join(absent)}")
                    state[official] = transform.join([tensors[part] for part in parts])
            else:
                state[official] = transform.to_official(tensor) if transform is not None else tensor
        for repeat, source in self.written_twice.items():
            if source in state:
                state[repeat] = state[source]
        return state

    def _model_row(self, minipt_key: str) -> KeyRow:
        found = self.to_official(minipt_key)
        if found is None:
            return KeyRow("", minipt_key)
        return KeyRow(found[0], minipt_key, self._label(found[0], minipt_key, found[1]))

    def _label(self, official: str, minipt_key: str, transform: Transform | Split | None) -> str:
        if isinstance(transform, Split):
            parts = self._targets(official)[0]
            return transform.label(parts.index(minipt_key), len(parts))
        return transform.name if transform is not None else ""

    def table(self, minipt_keys: Sequence[str], file_keys: Iterable[str] | None = None) -> list[KeyRow]:
        """The map made concrete for a model's keys: one ``KeyRow(official, minipt, transform)`` per key it names.

        With the ``file_keys`` of a checkpoint, one row per file key in file order
        (mapped into the model, tied, ignored or unexpected: no rule, or a rule
        to a tensor the model lacks), then one ``missing`` row per model key that
        no file key fills. A Split's official key has one row per part, each
        labelled with its place (``split 2/3 along dim 0``); it is unexpected
        unless the model has every part.
        """
        if file_keys is None:
            return [row for row in map(self._model_row, minipt_keys) if row.official]
        wanted, filled, rows = set(minipt_keys), set(), []
        for file_key in file_keys:
            official = self.canonical(file_key)
            keys, transform = self._targets(official)
            if keys and all(key in wanted for key in keys):
                for key in keys:
                    filled.add(key)
                    rows.append(KeyRow(official, key, self._label(official, key, transform), file_key))
            else:
                status = "tied" if official in self.tied else "ignored" if self.is_ignored(official) else "unexpected"
                rows.append(KeyRow(official, "", "", file_key, status))
        for key in minipt_keys:
            if key not in filled:
                rows.append(self._model_row(key)._replace(status="missing"))
        return rows
