"""Damaged inputs end in a MiniptError or a valid forward, never an error from inside torch.

Every class of every family in ``minipt.registry`` runs its tiny model on its example inputs with one input
changed: another dtype, a dimension dropped or added, an empty dimension, a longer or larger batch, negative or
huge values, NaN, a list or None in place of a tensor, a transposed or strided view, a scalar. Each case must
raise a ``MiniptError`` (``InputError`` naming the input) or run. ``MINIPT_INPUT_FUZZ_CASES`` (default 400) and
``MINIPT_INPUT_FUZZ_SEED`` change the campaign; ``python tests/test_input_fuzz.py CASES SEED`` runs one and
prints every distinct failure.
"""

from __future__ import annotations

import os
import random
import sys
import traceback

import torch

from minipt import registry
from minipt.errors import MiniptError

CASES = int(os.environ.get("MINIPT_INPUT_FUZZ_CASES", "400"))
SEED = int(os.environ.get("MINIPT_INPUT_FUZZ_SEED", "0"))
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.int64, torch.uint8, torch.bool]


def damage(value, rng: random.Random) -> tuple[str, object]:
    """(what was done, the damaged input)."""
    kind = rng.choice(["dtype", "drop_dim", "add_dim", "empty", "long", "batch", "negative", "huge", "nan", "list",
                       "none", "transpose", "strided", "scalar"])
    if not isinstance(value, torch.Tensor) or kind in ("list", "none", "scalar"):
        return kind, {"list": lambda: value.tolist() if isinstance(value, torch.Tensor) else [value], "none": lambda: None,
                      "scalar": lambda: torch.tensor(3)}.get(kind, lambda: value)()
    if kind == "dtype":
        return kind, value.to(rng.choice(DTYPES))
    if kind == "drop_dim" and value.dim() > 0:
        return kind, value.reshape(-1) if value.dim() > 1 else value[0]
    if kind == "add_dim":
        return kind, value.unsqueeze(0)
    if kind == "empty" and value.dim() > 0:
        return kind, value.narrow(rng.randrange(value.dim()), 0, 0)
    if kind == "long" and value.dim() > 1:
        return kind, torch.cat([value] * 64, dim=-1)
    if kind == "batch" and value.dim() > 0:
        return kind, torch.cat([value] * 3, dim=0)
    if kind == "negative" and not value.is_floating_point() and value.dtype != torch.bool:
        return kind, -value.abs() - 1
    if kind == "huge" and value.dtype != torch.bool:
        return kind, torch.full_like(value, 10**6)
    if kind == "nan" and value.is_floating_point():
        return kind, value * float("nan")
    if kind == "transpose" and value.dim() > 1:
        return kind, value.transpose(-1, -2)
    if kind == "strided" and value.dim() > 1:
        return kind, value.repeat_interleave(2, dim=-1)[..., ::2]
    return "unchanged", value


def run(cases: int, seed: int) -> dict[tuple, str]:
    """Distinct failures: (class, input, damage, exception type) -> the message and where it was raised."""
    rng = random.Random(seed)
    subjects = [(family, cls) for family in registry.families() for cls in family.classes]
    models, failures = {}, {}
    for _ in range(cases):
        family, cls = rng.choice(subjects)
        name = f"{family.model_type}/{cls.__name__}"
        if name not in models:
            torch.manual_seed(0)
            models[name] = family.tiny_model(cls).eval()
        args, kwargs = family.inputs(cls)
        args, kwargs = list(args), dict(kwargs)
        slots = [(0, i) for i in range(len(args))] + [(1, key) for key in kwargs]
        where = rng.choice(slots)
        holder = args if where[0] == 0 else kwargs
        kind, holder[where[1]] = damage(holder[where[1]], rng)
        try:
            with torch.no_grad():
                models[name](*args, **kwargs)
        except MiniptError:
            pass
        except Exception as error:  # noqa: BLE001 - anything else is what the test reports
            frames = traceback.extract_tb(error.__traceback__)
            frame = next((f for f in reversed(frames) if f"{os.sep}minipt{os.sep}" in f.filename), frames[-1])
            key = (name, where[1], kind, type(error).__name__)
            failures.setdefault(key, f"{str(error).splitlines()[0][:160] if str(error) else ''} at {frame.filename}:{frame.lineno}")
    return failures


def test_damaged_inputs_end_in_a_minipt_error_or_a_forward():
    failures = run(CASES, SEED)
    assert not failures, f"{len(failures)} kinds of damaged input escaped as other errors:\n" + "\n".join(
        f"{key}: {message}" for key, message in sorted(failures.items(), key=str)[:10])


if __name__ == "__main__":
    found = run(int(sys.argv[1]) if len(sys.argv) > 1 else 3000, int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print(f"{len(found)} distinct failures")
    for key, message in sorted(found.items(), key=str):
        print(key, "->", message)
