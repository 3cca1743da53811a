"""torch's own test inputs for its recurrent modules, run against minipt's drop-ins on every backend.

``torch.testing._internal.common_modules.module_db`` holds the inputs torch tests torch.nn.RNN, LSTM,
GRU, RNNCell, LSTMCell and GRUCell with: every combination of nonlinearity, bias, batch_first,
bidirectional and proj_size, unbatched sequences with and without initial states, packed batches (RNN
and GRU) and the cells' unbatched steps, 135 inputs, and the error inputs torch must refuse.

Every input runs through torch's module and minipt's (torch's state dict loaded) on "math", "torch" and
"fused", in float32 and float64, in training mode (forward, then the gradients of a random cotangent on
every output with respect to every input and parameter) and in eval mode (forward without grad, the
inference loop): all 1,620 cases, none sampled. Compared: the outputs (a packed output's data), the
final states and, in training, every gradient.

- float32: the promise of docs/models.md, minipt's error against torch run in float64 is at most 3 times
  torch's own float32 error plus 4 float32 ulps at the gates' magnitude 1 (``assert_error_ratio`` with
  tests/test_rnn.py's GATES);
- float64: no more exact run exists to measure against; minipt's and torch's results agree to RTOL64 of
  max(|value|, 1).

minipt has no cell modules: a cell is one step of a one-layer RNN, LSTM or GRU (the cells of
minipt/nn/rnn_cells.py are what those layers run per step), so torch's cell inputs run through
minipt.nn.RNN, LSTM or GRU holding the cell's weights as layer 0's, the input and state as a sequence
of one step (``CellAsLayer``).

module_db is read in a subprocess (``_module_db``): importing torch.testing._internal freezes
torch.backends' flags, reseeds the random generators and parses sys.argv, which this process's
other tests must not inherit. It needs the ``expecttest`` package.
"""

from __future__ import annotations

import builtins
import functools
import inspect
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

import minipt.nn
from helpers import assert_error_ratio, max_diff
from minipt.errors import MiniptError
from minipt.nn import use_backend
from test_rnn import GATES

MODULES = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"]
BACKENDS = ["math", "torch", "fused"]
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# float64 against torch's float64: two orders of rounding differ by tens of float64 ulps (1e-14 relative
# at most here); 1e-11 leaves room for other instruction sets and is a millionth of a 1e-5 slip in a weight.
RTOL64 = 1e-11

pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")  # torch's, on its own LSTM

# Runs in the subprocess: every module_db input of MODULES, per dtype and mode, in plain containers
# (PackedSequence as ("packed", data, batch_sizes, sorted_indices, unsorted_indices), a dtype as
# ("dtype", name)) that torch.load(weights_only=True) reads back.
_READ_MODULE_DB = r"""
import sys, torch
from torch.nn.utils.rnn import PackedSequence
from torch.testing._internal.common_modules import module_db

def plain(value):
    if isinstance(value, PackedSequence):
        return ("packed", value.data.detach(), value.batch_sizes, value.sorted_indices, value.unsorted_indices)
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, torch.dtype):
        return ("dtype", str(value).removeprefix("torch."))
    if isinstance(value, (tuple, list)):
        return tuple(plain(v) for v in value)
    return value

def function_input(fi):  # None: a construction error has no forward input
    return {"args": plain(fi.args), "kwargs": {k: plain(v) for k, v in fi.kwargs.items()}} if fi else {"args": (), "kwargs": {}}

cases, errors = [], []
for info in module_db:
    name = info.module_cls.__name__
    if name not in sys.argv[2:]:
        continue
    packed = {"with_packed_sequence": True} if name in ("RNN", "GRU") else {}
    for dtype in (torch.float32, torch.float64):
        for training in (True, False):
            torch.manual_seed(0)
            inputs = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=training, **packed)
            for index, sample in enumerate(inputs):
                cases.append({"module": name, "dtype": str(dtype).removeprefix("torch."), "training": training, "index": index,
                              "constructor": function_input(sample.constructor_input), "forward": function_input(sample.forward_input)})
    torch.manual_seed(0)
    for index, error in enumerate(info.module_error_inputs_func(info, device="cpu", dtype=torch.float32, requires_grad=False, training=True)):
        errors.append({"module": name, "index": index, "on": error.error_on.name, "type": error.error_type.__name__,
                       "regex": error.error_regex, "constructor": function_input(error.module_error_input.constructor_input),
                       "forward": function_input(error.module_error_input.forward_input)})
torch.save({"cases": cases, "errors": errors}, sys.argv[1])
"""


@functools.cache
def _module_db() -> dict:
    """module_db's inputs for MODULES, read in a subprocess (see the module docstring)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "module_db.pt"
        subprocess.run([sys.executable, "-c", _READ_MODULE_DB, str(path), *MODULES], check=True)
        return torch.load(path, weights_only=True)


def rebuilt(value):
    """A value of ``_module_db`` as module_db made it: tensors (floating ones requiring grad), PackedSequence, dtype."""
    if isinstance(value, tuple) and value and value[0] == "packed":
        return PackedSequence(rebuilt(value[1]), *value[2:])
    if isinstance(value, tuple) and len(value) == 2 and value[0] == "dtype":
        return getattr(torch, value[1])
    if isinstance(value, tuple):
        return tuple(rebuilt(v) for v in value)
    if isinstance(value, dict):
        return {key: rebuilt(v) for key, v in value.items()}
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.clone().requires_grad_()
    return value


def as_dtype(value, dtype):
    """The forward arguments ``value`` in ``dtype`` (new leaves), for the float64 run of a float32 case."""
    if isinstance(value, PackedSequence):
        return PackedSequence(as_dtype(value.data, dtype), value.batch_sizes, value.sorted_indices, value.unsorted_indices)
    if isinstance(value, tuple):
        return tuple(as_dtype(v, dtype) for v in value)
    return value.detach().to(dtype).requires_grad_(value.requires_grad)


def leaves(value) -> list[torch.Tensor]:
    """The tensors among the forward arguments that gradients are taken with respect to."""
    if isinstance(value, PackedSequence):
        return leaves(value.data)
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in leaves(v)]
    return [value] if value.requires_grad else []


def flat(result) -> list[torch.Tensor]:
    """A module's result as a list: output (a packed output's data) and final state(s), or a cell's state(s)."""
    if isinstance(result, PackedSequence):
        return [result.data]
    if isinstance(result, (tuple, list)):
        return [t for r in result for t in flat(r)]
    return [result]


class CellAsLayer(torch.nn.Module):
    """torch.nn.RNNCell / LSTMCell / GRUCell's call on minipt: one step of a one-layer minipt.nn.RNN / LSTM / GRU.

    Input (B, I) or (I,) becomes a sequence of one step, (1, B, I) or (1, I); the state (B, H) or (H,)
    becomes layer 0's, (1, B, H) or (1, H); the result is the new state, as the cell returns it."""

    def __init__(self, layer: torch.nn.Module):
        super().__init__()
        self.layer = layer

    def forward(self, x, hx=None):
        state = None if hx is None else tuple(s.unsqueeze(0) for s in hx) if isinstance(hx, tuple) else hx.unsqueeze(0)
        _, final = self.layer(x.unsqueeze(0), state)
        return tuple(s.squeeze(0) for s in final) if isinstance(final, tuple) else final.squeeze(0)


def drop_in(name: str, constructor: dict) -> torch.nn.Module:
    """minipt's module for torch.nn's ``name`` built with torch's constructor arguments (a cell: ``CellAsLayer``)."""
    args, kwargs = rebuilt(constructor["args"]), rebuilt(constructor["kwargs"])
    if name.endswith("Cell"):
        arguments = inspect.signature(getattr(torch.nn, name)).bind(*args, **kwargs).arguments
        return CellAsLayer(getattr(minipt.nn, name.removesuffix("Cell"))(**arguments))
    return getattr(minipt.nn, name)(*args, **kwargs)


def modules(name: str, constructor: dict, dtype: torch.dtype, seed: int):
    """torch's module and minipt's drop-in holding the same weights, both in ``dtype``."""
    torch.manual_seed(seed)
    reference = getattr(torch.nn, name)(*rebuilt(constructor["args"]), **rebuilt(constructor["kwargs"])).to(dtype)
    ours = drop_in(name, constructor)
    if name.endswith("Cell"):  # the cell's weights are layer 0's
        ours.layer.load_state_dict({f"{key}_l0": value for key, value in reference.state_dict().items()})
    else:
        ours.load_state_dict(reference.state_dict())
    return reference, ours.to(dtype)


OUTPUTS = {"RNN": ["output", "h_n"], "GRU": ["output", "h_n"], "LSTM": ["output", "h_n", "c_n"], "LSTMCell": ["h'", "c'"]}


def names(name: str, training: bool, inputs: list, module: torch.nn.Module) -> list[str]:
    """What each compared tensor is: the outputs, then in training the gradients of the inputs and of each parameter."""
    outputs = OUTPUTS.get(name, ["h'"])
    if not training:
        return outputs
    return outputs + [f"grad of input {k}" for k in range(len(inputs))] + [f"grad of {p}" for p, _ in module.named_parameters()]


def run(module: torch.nn.Module, forward_args: tuple, training: bool, cotangents=None) -> list[torch.Tensor]:
    """Outputs (eval: without grad), then in training the gradients of sum(outputs * cotangents)
    with respect to every input and parameter."""
    module.train(training)
    if not training:
        with torch.no_grad():
            return flat(module(*forward_args))
    result = flat(module(*forward_args))
    loss = sum((t * c).sum() for t, c in zip(result, cotangents))
    return result + list(torch.autograd.grad(loss, leaves(forward_args) + list(module.parameters())))


@functools.cache
def torch_runs(name: str, dtype_name: str, training: bool) -> list[dict]:
    """torch's results for every module_db input of ``name`` (float32 cases: with their float64 run), run once
    and shared by the three backends' tests."""
    dtype = DTYPES[dtype_name]
    runs = []
    for case in _module_db()["cases"]:
        if (case["module"], case["dtype"], case["training"]) != (name, dtype_name, training):
            continue
        reference, _ = modules(name, case["constructor"], dtype, case["index"])
        forward_args = rebuilt(case["forward"]["args"])
        torch.manual_seed(case["index"])
        with torch.no_grad():
            cotangents = [torch.randn_like(t) for t in flat(reference(*forward_args))] if training else None
        expected = run(reference, forward_args, training, cotangents)
        exact = None
        if dtype == torch.float32:
            reference64 = reference.double()  # .double() converts in place: reference is not used again
            exact = run(reference64, as_dtype(forward_args, torch.float64), training, cotangents and [c.double() for c in cotangents])
        runs.append({"case": case, "forward_args": forward_args, "cotangents": cotangents, "expected": expected, "exact": exact})
    return runs


def describe(case: dict) -> str:
    constructor = case["constructor"]
    arguments = [repr(a) for a in constructor["args"]] + [f"{k}={v!r}" for k, v in constructor["kwargs"].items()]
    shapes = [tuple(t.shape) for t in leaves(rebuilt(case["forward"]["args"]))]
    return f"{case['module']}({', '.join(arguments)}) on inputs {shapes}"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype_name", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODULES)
def test_module_db_inputs(name, backend, dtype_name, training):
    runs = torch_runs(name, dtype_name, training)
    assert runs, f"module_db has no inputs for torch.nn.{name}"
    failures = {}  # the description of an input -> what differs
    for entry in runs:
        case = entry["case"]
        _, ours = modules(name, case["constructor"], DTYPES[dtype_name], case["index"])
        with use_backend(backend):
            got = run(ours, entry["forward_args"], training, entry["cotangents"])
        what = names(name, training, leaves(entry["forward_args"]), ours)
        assert len(what) == len(got) == len(entry["expected"]), f"{describe(case)}: {len(got)} results, torch has {len(entry['expected'])}"
        for label, ours_value, theirs, truth in zip(what, got, entry["expected"], entry["exact"] or entry["expected"]):
            try:
                if entry["exact"] is not None:
                    assert_error_ratio(ours_value, theirs, truth, what=label, **GATES)
                else:
                    allowed = RTOL64 * max(theirs.abs().max().item() if theirs.numel() else 0.0, 1.0)
                    assert max_diff(ours_value, theirs) <= allowed, f"{label}: differs from torch's by {max_diff(ours_value, theirs):.3g}, allowed {allowed:.3g}"
            except AssertionError as error:
                failures.setdefault(describe(case), []).append(str(error))
    assert not failures, f"{len(failures)} of {len(runs)} inputs differ from torch's:\n" + "\n".join(
        f"{case}: " + "; ".join(errors) for case, errors in failures.items())


def errors_of(name: str) -> list[dict]:
    return [error for error in _module_db()["errors"] if error["module"] == name]


@pytest.mark.parametrize("name", MODULES)
def test_module_db_error_inputs(name):
    """Where torch raises on module_db's error inputs, minipt raises a MiniptError on every backend; a
    bias or batch_first that is not a bool (torch: TypeError) is refused with a message naming it."""
    cases = errors_of(name)
    assert cases, f"module_db has no error inputs for torch.nn.{name}"
    failures = []
    for error in cases:
        constructor, forward = error["constructor"], rebuilt(error["forward"]["args"])
        description = f"{name}{rebuilt(constructor['args'])} {rebuilt(constructor['kwargs'])} (torch: {error['type']} {error['regex']!r})"
        with pytest.raises(getattr(builtins, error["type"]), match=error["regex"]):  # torch's error, as read back
            getattr(torch.nn, name)(*rebuilt(constructor["args"]), **rebuilt(constructor["kwargs"]))(*forward)
        try:
            ours = drop_in(name, constructor)
        except MiniptError as raised:
            argument = re.match(r"(\w+) should be of type bool", error["regex"])
            if argument and not str(raised).startswith(f"{argument[1]} must be True or False"):
                failures.append(f"{description}: the message does not name {argument[1]}: {raised}")
            continue  # a forward error refused already here: GRUCell(10, 20, "relu") passes "relu" as bias
        if error["on"] == "CONSTRUCTION_ERROR":
            failures.append(f"{description}: constructed")
            continue
        for backend in BACKENDS:
            try:
                with use_backend(backend):
                    ours(*forward)
                failures.append(f"{description} on {backend}: no error")
            except MiniptError:
                pass
            except Exception as other:  # noqa: BLE001 - a crash inside torch instead of minipt's error
                failures.append(f"{description} on {backend}: {type(other).__name__}: {other}")
    assert not failures, "\n".join(failures)
