"""One config mechanism for every model: dataclasses whose fields check themselves.

A model's config is a dataclass deriving from ``Config``. Each field that a
user or a ``config.json`` can get wrong is declared with what it must be:

    vocab_size: int = count(30522)              # a positive int (not a bool, float or string)
    hidden_dropout_prob: float = probability(0.1)
    layer_norm_eps: float = epsilon(1e-12)      # finite and > 0
    hidden_act: str = one_of("gelu", ACTIVATIONS)

The checks run when the config is built (``__post_init__``), so no model is
ever built from a config that breaks them; ``from_dict`` adds the file the
values came from to the error. Checks that relate two fields (heads divide the
width) live in the config's own ``check`` method, through ``require``.

``to_dict`` writes the fields a ``config.json`` holds; fields marked
``minipt_only`` (a backend choice, what a checkpoint decided) are not written.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable

from .errors import ConfigError

_CHECK = "check"  # field metadata: a function value -> None, or the text of what was expected
_MINIPT_ONLY = "minipt"  # field metadata: not part of the official config.json


# -- what a field must be --------------------------------------------------------
def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _field(default, expected: Callable[[Any], str | None], *, optional: bool = False, minipt_only: bool = False, factory=False):
    def check(value):
        if optional and value is None:
            return None
        return expected(value)

    metadata = {_CHECK: check, _MINIPT_ONLY: minipt_only}
    if factory:
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


INT64_END = 1 << 63  # torch takes sizes, strides and ids as int64: a count reaching it cannot be passed on


def count(default: int | None, *, minimum: int = 1, optional: bool = False, minipt_only: bool = False):
    """A size or a number of things: an int >= ``minimum`` (1 unless said) and below 2^63 (an int64)."""
    what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    ok = lambda v: _is_int(v) and minimum <= v < INT64_END  # noqa: E731
    return _field(default, lambda v: None if ok(v) else what + " below 2^63", optional=optional, minipt_only=minipt_only)


def token_id(default: int | None):
    """An index into a vocabulary, or None."""
    return count(default, minimum=0, optional=True)


def probability(default: float | None, *, optional: bool = False):
    """A dropout rate or another probability: a finite number in [0, 1]."""
    return _field(default, lambda v: None if _is_real(v) and 0 <= v <= 1 else "a number in [0, 1]", optional=optional)


def epsilon(default: float):
    """A small constant added for numerical safety: finite and > 0."""
    return _field(default, lambda v: None if _is_real(v) and math.isfinite(v) and v > 0 else "a finite number > 0")


def real(default: float, *, minimum: float = 0.0, exclusive: bool = False):
    """A finite number >= ``minimum`` (> with ``exclusive``)."""
    what = f"a finite number {'>' if exclusive else '>='} {minimum}"
    ok = lambda v: _is_real(v) and math.isfinite(v) and (v > minimum if exclusive else v >= minimum)  # noqa: E731
    return _field(default, lambda v: None if ok(v) else what)


def flag(default: bool, *, minipt_only: bool = False):
    """True or False (not 0/1 or a string)."""
    return _field(default, lambda v: None if isinstance(v, bool) else "true or false", minipt_only=minipt_only)


def one_of(default: Any, choices: Iterable, *, optional: bool = False, minipt_only: bool = False):
    """A name from a fixed set (an activation, a block type)."""
    known = tuple(choices)
    text = "one of " + ", ".join(repr(c) for c in known)
    return _field(default, lambda v: None if isinstance(v, str) and v in known else text, optional=optional, minipt_only=minipt_only)


def text(default: str | None, *, optional: bool = False):
    return _field(default, lambda v: None if isinstance(v, str) else "a string", optional=optional)


def minipt_only(default: Any):
    """A field that is minipt's own (not in the official config.json), unchecked here."""
    return field(default=default, metadata={_MINIPT_ONLY: True})


def first_stop_id(values: dict) -> dict:
    """``values`` with an ``eos_token_id`` list (transformers' several stop ids) read as its first id,
    which a generating model's ``prepare`` stops on. A list of several different ids warns: generation
    will not stop on the others."""
    stops = values.get("eos_token_id")
    if isinstance(stops, list):
        if len(set(map(repr, stops))) > 1:
            warnings.warn(f"config.json lists several stop ids (eos_token_id = {stops!r}); minipt's generation stops on the "
                          f"first, {stops[0]!r}, only, and saves that one", UserWarning, stacklevel=4)
        values["eos_token_id"] = stops[0] if stops else None
    return values


def require(condition: bool, name: str, value: Any, expected: str) -> None:
    """A check across fields: raise ``ConfigError`` naming the field, its value and what was expected."""
    if not condition:
        raise ConfigError(f"{name} = {value!r}: expected {expected}")


# -- the base class --------------------------------------------------------------
@dataclass
class Config:
    """Base of every model config: checks its fields when built, reads and writes ``config.json``."""

    model_type: ClassVar[str | None] = None  # written to config.json; a file of another type is refused
    # minipt's own, on every model: the backend its blocks run (see minipt.nn.backend); None: the global choice
    backend: str | None = field(default=None, kw_only=True, metadata={_MINIPT_ONLY: True})

    def __post_init__(self):
        from .nn.backend import check_backend

        self.backend = check_backend(self.backend)
        for f in dataclasses.fields(self):
            check = f.metadata.get(_CHECK)
            if check is None:
                continue
            value = getattr(self, f.name)
            expected = check(value)
            if expected is not None:
                raise ConfigError(f"{type(self).__name__}.{f.name} = {value!r}: expected {expected}")
        self.check()

    def check(self) -> None:
        """Checks that relate several fields (override with ``require`` calls)."""

    # -- config.json ----------------------------------------------------------
    # Official config.json files hold fields minipt does not model (torch_dtype,
    # transformers_version, ...): they are skipped. Overrides must name real fields.
    @classmethod
    def from_dict(cls, values: dict, *, source: Any = None, **overrides):
        """The config from a ``config.json`` object; ``source`` (the file) is named in every error."""
        where = f"{source}: " if source is not None else ""
        if not isinstance(values, dict):
            raise ConfigError(f"{where}expected a JSON object of config fields, found {type(values).__name__}")
        names = cls._check_names(overrides)
        found_type = values.get("model_type", _family_of(values) or cls.model_type)
        if cls.model_type is not None and found_type != cls.model_type:
            raise ConfigError(f"{where}describes a {found_type!r} model, not {cls.model_type!r}{_who_loads(values)}")
        try:
            known = {k: v for k, v in cls.prepare(dict(values)).items() if k in names}
            return cls(**{**known, **overrides})
        except ConfigError as err:
            raise ConfigError(f"{where}{err}") from None
        except (TypeError, ValueError) as err:  # a field's own conversion (a tuple from a list, ...)
            raise ConfigError(f"{where}{cls.__name__}: {err}") from None

    def replace(self, *, source: Any = None, **overrides):
        """A copy with some fields replaced, checked again like a new config."""
        self._check_names(overrides)
        try:
            return dataclasses.replace(self, **overrides)
        except ConfigError as err:
            raise ConfigError(f"{source}: {err}" if source is not None else str(err)) from None

    @classmethod
    def _check_names(cls, overrides: dict) -> set:
        names = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return names

    @classmethod
    def prepare(cls, values: dict) -> dict:
        """Turn a ``config.json`` object into field values (JSON lists into tuples, ...); default: as is."""
        return values

    def to_dict(self) -> dict:
        """The fields a ``config.json`` holds, as JSON values."""
        values = {"model_type": self.model_type} if self.model_type else {}
        for f in dataclasses.fields(self):
            if f.init and not f.metadata.get(_MINIPT_ONLY):
                values[f.name] = _json_value(getattr(self, f.name))
        return values


def _family_of(values: dict) -> str | None:
    """The model_type of a config.json that names only its architecture (older minipt saves)."""
    from .registry import model_class

    if not values.get("architectures"):
        return None
    try:
        return getattr(model_class(values).config_class, "model_type", None)
    except ConfigError:
        return None


def _who_loads(values: dict) -> str:
    from .registry import model_class

    try:
        found = model_class(values)
    except ConfigError:
        return ""
    return f": load it with {found.__module__}.{found.__name__}"


def _json_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {k: _json_value(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value
