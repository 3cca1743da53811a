"""RNN, LSTM and GRU: state-dict drop-ins for torch.nn.RNN, LSTM and GRU.

Same constructor arguments, outputs, parameter names and layouts as torch.nn:
a layer's weights are ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``,
``bias_hh_l{k}`` (``weight_hr_l{k}`` for the LSTM projection), with ``_reverse``
for the backward direction of a bidirectional layer, the gate blocks stacked in
torch.nn's order (i, f, g, o for the LSTM, r, z, n for the GRU). So torch.nn's
state dict is the official format: ``minipt_lstm.load_state_dict(torch_lstm.state_dict())``.

Three files, one role each:

- ``rnn_cells.py``: the equations, one cell per step (the ``"math"`` backend);
- ``rnn_fused.py``: the same equations rearranged for speed (the ``"fused"`` backend:
  ``minipt.ops.lstm_layer`` and friends: one input projection per layer, the gate math of
  ``minipt.ops``, a hand-written backward);
- this file: the modules. ``forward`` checks the input, then runs, per the backend
  (``minipt.nn.backend``):

  =========  ================================================================
  ``math``   ``rnn_cells.math_layer`` per layer and direction
  ``fused``  ``rnn_fused.fused_layer`` per layer and direction
  ``torch``  torch's own recurrent kernel (``minipt.ops.torch_rnn``) on this
             module's parameters, as torch.nn.LSTM.forward calls it; the
             default
  =========  ================================================================

Packed batches (``torch.nn.utils.rnn.PackedSequence``) run on ``math`` and ``fused``
as a padded batch in the packing's length-sorted order with a mask: a sequence that
has ended keeps its state (forward direction), or has not started yet and still
holds its initial state (backward direction). ``torch`` hands the packing to torch.

torch.compile(fullgraph=True) and torch.export trace every backend on padded batches
(tests/test_compile_export.py): ``math`` and ``fused`` are plain torch code (the fused
path's autograd Functions are traced with their hand-written backward; oneDNN's
private matmul stays out of traced graphs, ``minipt.ops.onednn``), and ``torch`` traces
as torch decomposes its kernel, except for one torch bug worked around in
``_lstm_kernel_cannot_be_traced``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..checks import autocast_on, check_bool, tracing
from ..errors import ConfigError, InputError, KeyMismatchError
from ..ops import cpu, torch_rnn
from .backend import BackendBlock, get_backend
from .rnn_cells import math_layer
from .rnn_fused import fused_layer


# -- the modules -----------------------------------------------------------------------------------
_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


class _RNNBase(BackendBlock, nn.Module):
    """What RNN, LSTM and GRU share: torch.nn's parameters, argument checks, layers and directions."""

    def __init__(
        self,
        mode: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        name = type(self).__name__
        for arg, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name}: {arg} must be a positive integer, got {value!r}")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ConfigError(f"{name}: dropout must be a number in [0, 1] (the probability of zeroing an element), got {dropout!r}")
        if not isinstance(proj_size, int) or proj_size < 0:
            raise ConfigError(f"{name}: proj_size must be a non-negative integer, got {proj_size!r}")
        if proj_size >= hidden_size:
            raise ConfigError(f"{name}: proj_size ({proj_size}) must be smaller than hidden_size ({hidden_size})")
        # torch.nn refuses a bias or batch_first that is not a bool, but takes any bidirectional (the string
        # "False" makes it bidirectional): all three must be True or False here
        bias, batch_first, bidirectional = check_bool("bias", bias), check_bool("batch_first", batch_first), check_bool("bidirectional", bidirectional)
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                f"{name}: dropout={dropout} acts between layers only, so with num_layers=1 it does nothing "
                "(as in torch.nn)"
            )
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.backend: str | None = None  # "math", "torch" or "fused" (see the table above); None: the global choice

        # parameters in torch.nn's order, so that seeded initialisation draws the same numbers
        gate_size = _GATES[mode] * hidden_size
        out_size = proj_size or hidden_size
        factory = {"device": device, "dtype": dtype}
        names = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else out_size * self.num_directions
            for suffix in self._suffixes(layer):
                shapes = [(f"weight_ih{suffix}", (gate_size, layer_input)), (f"weight_hh{suffix}", (gate_size, out_size))]
                if bias:
                    shapes += [(f"bias_ih{suffix}", (gate_size,)), (f"bias_hh{suffix}", (gate_size,))]
                if proj_size:
                    shapes.append((f"weight_hr{suffix}", (proj_size, hidden_size)))
                for param_name, shape in shapes:
                    self.register_parameter(param_name, nn.Parameter(torch.empty(shape, **factory)))
                    names.append(param_name)
        # fixed here, as in torch.nn: pruning and parametrizations replace a parameter under its name, and the
        # kernel must read the attribute (the masked weight) in this order, not whatever named_parameters lists then
        self._weight_names = tuple(names)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def taps(self) -> dict:
        """minipt.probe's names for each layer's state at every step, computed one step at a time on "math" only:
        ``layers.{k}.h`` (and ``.c`` for the LSTM), ``layers.{k}.reverse.h`` for a backward direction."""
        kinds = "hc" if self.mode == "LSTM" else "h"
        return {f"{self._tap_prefix(k, d)}.{kind}": "math" for k in range(self.num_layers) for d in range(self.num_directions) for kind in kinds}

    def _tap_prefix(self, layer: int, direction: int) -> str:
        return f"layers.{layer}" + (".reverse" if direction else "")

    def _suffixes(self, layer: int) -> List[str]:
        return [f"_l{layer}", f"_l{layer}_reverse"][: self.num_directions]

    def reset_parameters(self) -> None:
        """Every weight and bias from uniform(-1/sqrt(hidden_size), 1/sqrt(hidden_size)), as torch.nn."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def flatten_parameters(self) -> None:
        """Nothing to do (torch.nn packs weights for cuDNN here); kept so code written for torch.nn runs unchanged."""

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        if "_weight_names" not in self.__dict__:  # pickled before the names were fixed at construction
            self._weight_names = tuple(name for name, _ in self.named_parameters(recurse=False))

    @property
    def _flat_weights_names(self) -> List[str]:
        return list(self._weight_names)

    @property
    def _flat_weights(self) -> List[Tensor]:
        """The weights in torch.nn's order, as the kernel sees them (pruned or parametrized ones included)."""
        return [getattr(self, name) for name in self._weight_names]

    @property
    def all_weights(self) -> List[List[nn.Parameter]]:
        """The parameters grouped per layer and direction, as torch.nn's ``all_weights``."""
        return [[w for w in self._layer_weights(layer, direction) if w is not None]
                for layer in range(self.num_layers) for direction in range(self.num_directions)]

    def _layer_weights(self, layer: int, direction: int) -> Tuple[Optional[Tensor], ...]:
        suffix = self._suffixes(layer)[direction]
        get = lambda kind: getattr(self, f"{kind}{suffix}", None)  # noqa: E731
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh"), get("weight_hr")

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, input, hx=None):
        name = type(self).__name__
        packed = isinstance(input, PackedSequence)
        if packed:
            mask = self._packing_mask(input)  # (T, B, 1): step t of sequence b is real
            x_shape = (mask.shape[0], mask.shape[1], input.data.shape[-1])
            sorted_indices, unsorted_indices = input.sorted_indices, input.unsorted_indices
            batched = True
        else:
            if not isinstance(input, Tensor):
                raise InputError(f"{name} expects a tensor or a PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise InputError(
                    f"{name} expects input of shape {self._input_shape_text()} (3-D) or (seq_len, {self.input_size}) "
                    f"for one unbatched sequence (2-D); got a {input.dim()}-D tensor of shape {tuple(input.shape)}"
                )
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)  # time-major inside: (T, B, I)
            x_shape = tuple(x.shape)
            mask = sorted_indices = unsorted_indices = None
        data = input.data if packed else x
        self._check_features(data, name, tuple(data.shape if packed else input.shape))
        if x_shape[0] == 0:
            raise InputError(f"{name} got an empty sequence (seq_len 0, input shape {x_shape})")
        hx = self._initial_state(hx, data, x_shape[1], batched, sorted_indices)  # tuple of (L*D, B, *) tensors

        backend = get_backend(self.backend)
        if backend == "torch" and (self._lstm_kernel_cannot_be_traced(data) or (not packed and self._lstm_kernel_cannot_lower(data))):
            backend = "math"
        if backend == "torch":
            out, final = self._torch_kernel(data, input.batch_sizes if packed else None, hx)  # packed in, packed out
        else:
            x = self._pad(input.data, mask) if packed else x
            # as autocast runs torch's kernels: its CPU list lowers lstm and rnn_tanh/relu to its dtype, not gru, and
            # not lstm on a packed sequence, which torch.nn returns in float32 (computed here in float32: autocast off)
            packed_lstm = packed and self.mode == "LSTM" and not self.proj_size  # with proj_size torch lowers it too
            if x.dtype == torch.float32 and self.mode != "GRU" and not packed_lstm and autocast_on(x.device.type):
                lowered = torch.get_autocast_dtype(x.device.type)
                x, hx = x.to(lowered), tuple(s.to(lowered) for s in hx)
            order = None if unsorted_indices is None else (unsorted_indices, sorted_indices)  # taps show the caller's rows
            # under autocast the layers run with it off, the weights (and states) cast to the input's dtype as autocast
            # would cast them: a hand-written backward runs without autocast, and would meet float32 weights there
            autocast = autocast_on(x.device.type)
            cast = x.dtype if autocast and x.dtype != self.weight_ih_l0.dtype else None
            if cast is not None:
                hx = tuple(s.to(cast) for s in hx)
            with torch.autocast(x.device.type, enabled=False) if autocast else contextlib.nullcontext():
                out, final = self._layers(math_layer if backend == "math" else fused_layer, x, hx, mask, order, cast)  # (T, B, D * H_out)
            out = out[mask.squeeze(2)] if packed else out

        if packed:
            output = PackedSequence(out, input.batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                final = tuple(s.index_select(1, unsorted_indices) for s in final)
        elif batched:
            output = out.transpose(0, 1) if self.batch_first else out
        else:
            output = out.squeeze(1)
            final = tuple(s.squeeze(1) for s in final)
        return output, (final if self.mode == "LSTM" else final[0])

    def _layers(self, layer_fn, x: Tensor, hx: Tuple[Tensor, ...], mask: Optional[Tensor], order: Optional[tuple] = None,
                cast: Optional[torch.dtype] = None):
        """The ``math`` and ``fused`` backends: ``layer_fn`` per layer and direction, dropout between layers; ``order``:
        a packing's (unsorted_indices, sorted_indices), for the taps to show the caller's batch order; ``cast``: the
        dtype the weights take for the products (autocast's), where it is not theirs."""
        finals: List[List[Tensor]] = [[] for _ in hx]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                state = tuple(s[index] for s in hx)
                weights = self._layer_weights(layer, direction)
                if cast is not None:
                    weights = tuple(None if w is None else w.to(cast) for w in weights)
                args = (self.mode, x, state, weights, mask, direction == 1)
                if layer_fn is math_layer:  # the cells, one step at a time: each step's state can be tapped
                    out, state = layer_fn(*args, site=(self, self._tap_prefix(layer, direction), order))
                else:
                    out, state = layer_fn(*args)
                outputs.append(out)
                for kept, s in zip(finals, state):
                    kept.append(s)
            x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)  # (T, B, D * H_out)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)  # between layers, never after the last
        return x, tuple(torch.stack(kept) for kept in finals)  # each final state (L*D, B, *)

    def _torch_kernel(self, x: Tensor, batch_sizes: Optional[Tensor], hx: Tuple[Tensor, ...]):
        """The ``torch`` backend: torch's recurrent kernel on this module's parameters, which are in the
        layout it expects (per layer and direction w_ih, w_hh, b_ih, b_hh, w_hr), as torch.nn calls it.
        ``x`` is (T, B, I) time-major, or a PackedSequence's data with its ``batch_sizes``."""
        weights = self._flat_weights
        return torch_rnn(self.mode, x, batch_sizes, hx, weights, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional)

    def _lstm_kernel_cannot_be_traced(self, x: Tensor) -> bool:
        """Whether torch.compile is tracing an LSTM whose training graph torch cannot build.

        While tracing, torch (2.13) replaces its LSTM kernel by a decomposition that takes oneDNN's
        inference-only layer whenever the *input* does not require grad, even when the parameters do
        (the usual case: an LSTM straight after the model's input). The training graph then fails
        ("expected all tensors_saved_with_vc_check to be Tensors", pytorch/pytorch#185902). There the
        ``torch`` backend traces the cells step by step (``math``), which is what torch's decomposition
        does on its differentiable branch: the same equations, one cell per step.
        """
        return (
            self.mode == "LSTM"
            and tracing()
            and torch.is_grad_enabled()
            and not x.requires_grad
            and any(p.requires_grad for p in self.parameters())
        )

    def _lstm_kernel_cannot_lower(self, x: Tensor) -> bool:
        """Whether autocast would send a float32 LSTM (not packed) to a oneDNN kernel this CPU cannot build (``cpu.torch_lstm_runs``):
        torch.nn.LSTM raises there; the ``torch`` backend computes the same lowered equations with the cells."""
        if self.mode != "LSTM" or x.device.type != "cpu" or x.dtype != torch.float32 or not autocast_on("cpu"):
            return False
        return not cpu.torch_lstm_runs(torch.get_autocast_dtype("cpu"))

    def _input_shape_text(self) -> str:
        return f"(batch, seq_len, {self.input_size})" if self.batch_first else f"(seq_len, batch, {self.input_size})"

    def _check_features(self, x: Tensor, name: str, shape: tuple) -> None:
        if x.shape[-1] != self.input_size:
            raise InputError(f"{name} was built for input_size={self.input_size} features, got input with {x.shape[-1]} (shape {shape})")
        weight = self.weight_ih_l0
        if x.dtype != weight.dtype and not autocast_on(x.device.type):  # under autocast, as torch.nn: cast
            raise InputError(f"{name}: input dtype {x.dtype} differs from the parameters' {weight.dtype}; convert one of them")
        if x.device != weight.device:
            raise InputError(f"{name}: input is on {x.device}, the parameters on {weight.device}")

    def _packing_mask(self, packed: PackedSequence) -> Tensor:
        """The (T, B, 1) mask of a PackedSequence's real steps, in its length-sorted order, after checking the packing."""
        name = type(self).__name__
        data, batch_sizes = packed.data, packed.batch_sizes
        if data.dim() != 2:
            raise InputError(f"{name}: a PackedSequence's data must be 2-D (total steps, {self.input_size}), got shape {tuple(data.shape)}")
        sizes = batch_sizes.tolist()
        if not sizes or sizes[-1] <= 0 or any(a < b for a, b in zip(sizes, sizes[1:])):
            raise InputError(f"{name}: PackedSequence batch_sizes must be positive and non-increasing, got {sizes}")
        if sum(sizes) != data.shape[0]:
            lengths = [sum(1 for s in sizes if s > b) for b in range(sizes[0])]
            raise InputError(
                f"{name}: the PackedSequence describes sequences of lengths {lengths} ({sum(sizes)} steps in all) "
                f"but its data holds {data.shape[0]} steps: a length is longer than the padded sequence it was packed from"
            )
        B = sizes[0]
        for label, indices in (("sorted_indices", packed.sorted_indices), ("unsorted_indices", packed.unsorted_indices)):
            if indices is not None and indices.shape != (B,):
                raise InputError(f"{name}: PackedSequence {label} must have shape ({B},), got {tuple(indices.shape)}")
        steps = torch.arange(B, device=data.device)
        mask = steps.unsqueeze(0) < batch_sizes.to(data.device).unsqueeze(1)  # (T, B)
        return mask.unsqueeze(2)

    @staticmethod
    def _pad(data: Tensor, mask: Tensor) -> Tensor:
        """A PackedSequence's data (steps, I) as a padded (T, B, I) batch, zeros where ``mask`` is False."""
        padded = data.new_zeros(mask.shape[0], mask.shape[1], data.shape[1])
        padded[mask.squeeze(2)] = data  # packed rows are time-major, longest sequence first: the order of mask's True entries
        return padded

    def _initial_state(self, hx, x: Tensor, batch: int, batched: bool, sorted_indices: Optional[Tensor]) -> Tuple[Tensor, ...]:
        """``hx`` checked and as a tuple of (L*D, batch, *) tensors in the packing's order; zeros if None."""
        name = type(self).__name__
        layers = self.num_layers * self.num_directions
        out_size = self.proj_size or self.hidden_size
        shapes = [("h_0", (layers, batch, out_size))]
        if self.mode == "LSTM":
            shapes.append(("c_0", (layers, batch, self.hidden_size)))
        if hx is None:
            return tuple(x.new_zeros(shape) for _, shape in shapes)
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise InputError(f"{name} expects the initial state as a tuple (h_0, c_0), got {type(hx).__name__}")
            states = tuple(hx)
        else:
            if not isinstance(hx, Tensor):
                raise InputError(f"{name} expects the initial state h_0 as a tensor, got {type(hx).__name__}")
            states = (hx,)
        checked = []
        for (label, shape), state in zip(shapes, states):
            if not isinstance(state, Tensor):
                raise InputError(f"{name}: initial state {label} must be a tensor, got {type(state).__name__}")
            expected = shape if batched else (shape[0], shape[2])
            if tuple(state.shape) != expected:
                layout = "(num_layers * num_directions, batch, size)" if batched else "(num_layers * num_directions, size)"
                unbatched = "" if batched else " for unbatched (2-D) input"
                raise InputError(f"{name}: initial state {label} must have shape {layout} = {expected}{unbatched}, got {tuple(state.shape)}")
            if state.dtype != x.dtype:
                raise InputError(f"{name}: initial state {label} has dtype {state.dtype}, the input {x.dtype}")
            state = state if batched else state.unsqueeze(1)
            if sorted_indices is not None:
                state = state.index_select(1, sorted_indices)  # into the packing's order
            checked.append(state)
        return tuple(checked)

    # -- loading -----------------------------------------------------------------------------------
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """torch.nn's ``load_state_dict``, with one clear error naming every missing, unexpected and mis-shaped key."""
        own = {name: tuple(p.shape) for name, p in self.state_dict().items()}
        not_tensors = [f"{key} ({type(value).__name__})" for key, value in state_dict.items() if not isinstance(value, Tensor)]
        if not_tensors:
            raise KeyMismatchError(f"state dict for {self!r} holds values that are not tensors: {', '.join(not_tensors[:8])}")
        missing = [f"{key} {shape}" for key, shape in own.items() if key not in state_dict]
        unexpected = [f"{key} {tuple(value.shape)}" for key, value in state_dict.items() if key not in own]
        wrong_shape = [
            f"{key}: given {tuple(value.shape)}, expected {own[key]}"
            for key, value in state_dict.items()
            if key in own and tuple(value.shape) != own[key]
        ]
        if wrong_shape or (strict and (missing or unexpected)):
            lines = [f"state dict does not fit {self!r}:"]
            for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
                if items and (strict or title == "wrong shape"):
                    lines.append(f"  {title} ({len(items)}): " + ", ".join(items))
            raise KeyMismatchError("\n".join(lines))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def extra_repr(self) -> str:
        text = f"{self.input_size}, {self.hidden_size}"
        if self.proj_size:
            text += f", proj_size={self.proj_size}"
        if self.num_layers != 1:
            text += f", num_layers={self.num_layers}"
        if self.mode == "RNN_RELU":
            text += ", nonlinearity='relu'"
        for flag, default in (("bias", True), ("batch_first", False), ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, flag) != default:
                text += f", {flag}={getattr(self, flag)}"
        return text


# RNN, LSTM and GRU spell out torch.nn's constructor arguments, as _RNNBase does, deliberately: a
# drop-in shows the same signature (help(), inspect.signature, an IDE) as the class it replaces.


class RNN(_RNNBase):
    """Elman RNN, ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)`` (or relu): a drop-in for torch.nn.RNN."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ):
        if nonlinearity not in ("tanh", "relu"):
            raise ConfigError(f"RNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype)


class LSTM(_RNNBase):
    """Long short-term memory (Hochreiter & Schmidhuber, 1997), gates i, f, g, o: a drop-in for torch.nn.LSTM.

    Returns ``output, (h_n, c_n)``; with ``proj_size > 0`` the hidden state is
    projected to ``proj_size`` features by ``weight_hr_l{k}`` (Sak et al., 2014).
    """

    # torch.nn.LSTM's signature spelled out, as _RNNBase's is, so help() and editors show the drop-in's arguments
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
    ):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, proj_size, device, dtype)


class GRU(_RNNBase):
    """Gated recurrent unit (Cho et al., 2014), gates r, z, n: a drop-in for torch.nn.GRU."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype)
