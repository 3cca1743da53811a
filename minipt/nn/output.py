"""What a model's forward returns: a dataclass that also reads like transformers' outputs.

Fields are attributes (``out.logits``), keys (``out["logits"]``) and positions
(``out[0]``); ``to_tuple()`` gives the fields that are set, in the order the
class declares them. As in transformers, fields left at ``None`` are skipped
by keys, positions and tuples, so ``out[0]`` is the loss when labels were
given and the logits when they were not (``loss`` is declared first).

Subclasses stay plain dataclasses: ``torch.export.register_dataclass`` makes
them pytrees, so compile and export see the tensors inside.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator


class ModelOutput:
    """Mixin for output dataclasses: access by attribute, by name, by position, or as a tuple."""

    def keys(self) -> list[str]:
        """Names of the fields that are set (not ``None``), in declaration order."""
        return [field.name for field in dataclasses.fields(self) if getattr(self, field.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, name) for name in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(name, getattr(self, name)) for name in self.keys()]

    def to_tuple(self) -> tuple[Any, ...]:
        """The fields that are set, in declaration order: ``out.to_tuple()[0] is out[0]``."""
        return tuple(self.values())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(f"{type(self).__name__} has no field {key!r} set; it has {self.keys()}")
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        """Iterates over field names, as a dict (and transformers' ModelOutput) does."""
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())
