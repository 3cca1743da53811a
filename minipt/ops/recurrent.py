"""The recurrent layers' fast path and torch's own recurrent kernel, for minipt.nn's RNN, LSTM and GRU.

``lstm_layer``, ``gru_layer`` and ``rnn_layer`` run one layer in one direction over a (T, B, I)
sequence, the equations of minipt/nn/rnn_cells.py rearranged for speed (the ``"fused"`` backend):

1. the input projection ``W_ih x + b`` of every time step in one matrix multiply, (T*B, I) @ (I, G);
2. one time loop (``_time_loop``) for all three cells, each giving its step function: per step one
   matrix multiply with W_hh (``onednn``: oneDNN's prepacked matmul on CPU, ``torch.addmm``
   elsewhere) and the gate math, the ``minipt::lstm_gates`` / ``gru_gates`` op (Triton kernels on
   CUDA). Where an op has no kernel the loop calls its reference directly, the same function the
   op runs there, without the custom-op dispatch per step (``_register.per_step``);
3. with gradients, a hand-written backward through time (``_LSTMLayer`` and friends), one loop
   again (``_time_loop_backward``): per step the gate op's backward (``minipt::lstm_gates_backward``)
   and one matrix multiply with W_hh; each weight gradient is one matrix multiply over all steps.

The gate equations are written once, in the ops' references (``lstm_gates_reference``,
``gru_gates_reference``, and ``rnn_nonlinearity`` for the Elman RNN, which has no op); the math
cells call them too. ``tests/test_rnn.py::test_fused_path_equals_math_cells`` compares this path
with the cells (forward and every gradient), ``test_gradcheck_layer`` checks the hand-written
backward in float64, and ``test_matches_torch_nn`` compares it with torch.nn, with oneDNN on and off.

``torch_rnn`` runs torch's own recurrent kernel (what torch.nn.LSTM's forward calls) on a module's
parameters: the ``"torch"`` backend.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, _VF

from ..checks import tracing
from . import cpu, onednn
from ._gru_gates import gru_gates_backward_op, gru_gates_backward_reference, gru_gates_op, gru_gates_reference
from ._lstm_gates import lstm_gates_backward_op, lstm_gates_backward_reference, lstm_gates_op, lstm_gates_reference
from ._register import per_step
from .onednn import PackedWeight

State = Tuple[Tensor, ...]  # (h,), or (h, c) for the LSTM
Weights = Tuple[Optional[Tensor], ...]  # (w_ih, w_hh, b_ih, b_hh, w_hr), as torch.nn names them per layer


def rnn_nonlinearity(pre: Tensor, nonlinearity: str) -> Tensor:
    """The Elman RNN's activation of ``W_ih x + b_ih + W_hh h + b_hh``: the math cell and the fast path call it."""
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def _lstm_gate_math(device: torch.device):
    """(forward, backward) of the LSTM gate op as the time loop calls them on ``device``."""
    return per_step(lstm_gates_op, lstm_gates_reference, device), per_step(lstm_gates_backward_op, lstm_gates_backward_reference, device)


def _gru_gate_math(device: torch.device):
    """(forward, backward) of the GRU gate op as the time loop calls them on ``device``."""
    return per_step(gru_gates_op, gru_gates_reference, device), per_step(gru_gates_backward_op, gru_gates_backward_reference, device)


# -- the time loop, forward and backward -------------------------------------------------------------
def _order(steps: int, reverse: bool) -> range:
    return range(steps - 1, -1, -1) if reverse else range(steps)


def _in_time_order(per_step: Sequence[Tensor], reverse: bool) -> Tensor:
    """Tensors listed in the order the loop ran, stacked in time order: (T, ...)."""
    return torch.stack(per_step[::-1] if reverse else per_step)


def _stack(per_step: Sequence[tuple], reverse: bool) -> List[Optional[Tensor]]:
    """Per-step tuples, listed in the order the loop ran, as one (T, ...) tensor per position, None
    at a position the steps fill with None."""
    return [None if kind[0] is None else _in_time_order(kind, reverse) for kind in zip(*per_step)]


def _time_loop(step: Callable, x_proj: Tensor, state: State, mask: Optional[Tensor], reverse: bool, keep: bool):
    """Runs ``step(x_proj[t], state) -> (new state, tensors the backward needs)`` over the steps.

    A step's output is its new ``state[0]``. With ``mask`` (T, B, 1), a sequence that has ended (or not
    begun) keeps its state and outputs zeros. Returns the outputs (T, B, H_out), the final state and,
    with ``keep``, the kept tensors stacked per position (T, ...)."""
    outputs, kept = [], []
    for t in _order(x_proj.shape[0], reverse):
        new, saved = step(x_proj[t], state)
        if keep:
            kept.append(saved)
        out = new[0]
        if mask is not None:
            new = tuple(torch.where(mask[t], n, s) for n, s in zip(new, state))
            out = out.masked_fill(~mask[t], 0.0)
        state = new
        outputs.append(out)
    return _in_time_order(outputs, reverse), state, (_stack(kept, reverse) if keep else None)


def _time_loop_backward(step_backward: Callable, d_out: Tensor, d_state: State, mask: Optional[Tensor], reverse: bool):
    """``_time_loop`` backwards, from its last step to its first: ``step_backward(t, d_new) -> (d_state,
    records)`` takes the gradient of step t's new state and gives that of its old one. Returns the
    gradient of the initial state and the records stacked per position in time order (T, ...)."""
    records = []
    for t in _order(d_out.shape[0], not reverse):
        d_new = (d_out[t] + d_state[0],) + tuple(d_state[1:])
        if mask is not None:  # a step outside the sequence passed the state through unchanged
            d_keep = tuple(d * ~mask[t] for d in d_state)
            d_new = tuple(d * mask[t] for d in d_new)
        d_state, record = step_backward(t, d_new)
        if mask is not None:
            d_state = tuple(d + k for d, k in zip(d_state, d_keep))
        records.append(record)
    return d_state, _stack(records, not reverse)


def _pack(weight: Tensor, like: Tensor) -> PackedWeight:
    """``weight`` packed for products with every step of ``like`` (T, B, ...), where oneDNN's packed
    product is the faster at B rows on this CPU (``cpu.linear_kernel``); unpacked (torch.addmm) otherwise."""
    batch = like.shape[1]
    if tracing() or cpu.linear_kernel(weight.dtype, batch, weight.shape[1], weight.shape[0], reused=True) != "onednn":
        return PackedWeight(weight, None)
    return onednn.pack(weight, batch, like.shape[0] * batch)


def _weight_grad(d_out: Tensor, inputs: Tensor) -> Tensor:
    """The gradient of a weight applied at every step, (out, in): one matrix multiply over all steps."""
    return d_out.flatten(0, 1).t() @ inputs.flatten(0, 1)


# -- the cells' steps ---------------------------------------------------------------------------------
def _lstm_step(w_hh: PackedWeight, w_hr: Optional[Tensor], gates_fn: Callable) -> Callable:
    def step(x_t, state):
        h, c = state
        gates = onednn.linear_add(h, w_hh, x_t)  # W_ih x + b_ih + b_hh + W_hh h, (B, 4H)
        m, c_new = gates_fn(gates, c)  # (B, H) each
        h_new = m if w_hr is None else F.linear(m, w_hr)  # projection (B, H) -> (B, P)
        return (h_new, c_new), (gates, c, h, None if w_hr is None else m)

    return step


def _lstm_step_backward(w_hh_t: PackedWeight, w_hr: Optional[Tensor], gates_backward: Callable, gates: Tensor, c_prev: Tensor) -> Callable:
    def step_backward(t, d_new):
        d_h_new, d_c_new = d_new
        d_m = d_h_new if w_hr is None else d_h_new @ w_hr  # back through the projection, (B, H)
        d_gates, d_c = gates_backward(d_m, d_c_new, gates[t], c_prev[t])  # (B, 4H), (B, H)
        d_h = onednn.linear_packed(d_gates, w_hh_t)  # (B, P)
        return (d_h, d_c), (d_gates, None if w_hr is None else d_h_new)  # d_h_new: for W_hr

    return step_backward


def _gru_step(w_hh: PackedWeight, b_hh: Optional[Tensor], gates_fn: Callable) -> Callable:
    def step(x_t, state):
        (h,) = state
        hidden = onednn.linear_packed(h, w_hh, b_hh)  # W_h* h + b_h*, (B, 3H): b_hn stays inside r * (.)
        return (gates_fn(x_t, hidden, h),), (hidden, h)

    return step


def _gru_step_backward(w_hh_t: PackedWeight, gates_backward: Callable, x_proj: Tensor, hidden: Tensor, h_prev: Tensor) -> Callable:
    def step_backward(t, d_new):
        d_x, d_hidden, d_h_direct = gates_backward(d_new[0], x_proj[t], hidden[t], h_prev[t])
        d_h = onednn.linear_add(d_hidden, w_hh_t, d_h_direct)  # through h' = ... + z h and through W_hh h
        return (d_h,), (d_x, d_hidden)

    return step_backward


def _rnn_step(w_hh: PackedWeight, nonlinearity: str) -> Callable:
    def step(x_t, state):
        (h,) = state
        h_new = rnn_nonlinearity(onednn.linear_add(h, w_hh, x_t), nonlinearity)  # of W_ih x + b_ih + b_hh + W_hh h
        return (h_new,), (h_new, h)

    return step


def _rnn_step_backward(w_hh_t: PackedWeight, nonlinearity: str, h_new: Tensor) -> Callable:
    def step_backward(t, d_new):
        y = h_new[t]
        d_pre = d_new[0] * (y > 0) if nonlinearity == "relu" else d_new[0] * (1 - y * y)  # relu' or tanh'
        return (onednn.linear_packed(d_pre, w_hh_t),), (d_pre,)

    return step_backward


# -- the hand-written backward through time -------------------------------------------------------------
class _LSTMLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_proj, h0, c0, w_hh, w_hr, mask, reverse):
        gates_fn, _ = _lstm_gate_math(x_proj.device)
        step = _lstm_step(_pack(w_hh, x_proj), w_hr, gates_fn)
        out, (h, c), (gates, c_prev, h_prev, m) = _time_loop(step, x_proj, (h0, c0), mask, reverse, keep=True)
        ctx.save_for_backward(w_hh, w_hr, mask, gates, c_prev, h_prev, m)  # m: h' before the projection
        ctx.reverse = reverse
        return out, h, c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_h, d_c):
        w_hh, w_hr, mask, gates, c_prev, h_prev, m = ctx.saved_tensors
        _, gates_backward = _lstm_gate_math(gates.device)
        w_hh_t = _pack(w_hh.t(), gates)  # d_h = d_gates @ W_hh, as a linear with weight W_hh^T
        step_backward = _lstm_step_backward(w_hh_t, w_hr, gates_backward, gates, c_prev)
        (d_h, d_c), (d_gates, d_h_new) = _time_loop_backward(step_backward, d_out, (d_h, d_c), mask, ctx.reverse)
        d_w_hr = None if w_hr is None else _weight_grad(d_h_new, m)  # (P, H)
        return d_gates, d_h, d_c, _weight_grad(d_gates, h_prev), d_w_hr, None, None


class _GRULayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_proj, h0, w_hh, b_hh, mask, reverse):
        gates_fn, _ = _gru_gate_math(x_proj.device)
        out, (h,), (hidden, h_prev) = _time_loop(_gru_step(_pack(w_hh, x_proj), b_hh, gates_fn), x_proj, (h0,), mask, reverse, keep=True)
        ctx.save_for_backward(x_proj, w_hh, mask, hidden, h_prev)
        ctx.reverse, ctx.has_bias = reverse, b_hh is not None
        return out, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_h):
        x_proj, w_hh, mask, hidden, h_prev = ctx.saved_tensors
        _, gates_backward = _gru_gate_math(x_proj.device)
        step_backward = _gru_step_backward(_pack(w_hh.t(), x_proj), gates_backward, x_proj, hidden, h_prev)
        (d_h,), (d_x, d_hidden) = _time_loop_backward(step_backward, d_out, (d_h,), mask, ctx.reverse)
        d_b_hh = d_hidden.sum((0, 1)) if ctx.has_bias else None
        return d_x, d_h, _weight_grad(d_hidden, h_prev), d_b_hh, None, None  # d_w_hh (3H, H)


class _RNNLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_proj, h0, w_hh, nonlinearity, mask, reverse):
        out, (h,), (h_new, h_prev) = _time_loop(_rnn_step(_pack(w_hh, x_proj), nonlinearity), x_proj, (h0,), mask, reverse, keep=True)
        ctx.save_for_backward(w_hh, mask, h_new, h_prev)
        ctx.nonlinearity, ctx.reverse = nonlinearity, reverse
        return out, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_h):
        w_hh, mask, h_new, h_prev = ctx.saved_tensors
        step_backward = _rnn_step_backward(_pack(w_hh.t(), h_new), ctx.nonlinearity, h_new)
        (d_h,), (d_pre,) = _time_loop_backward(step_backward, d_out, (d_h,), mask, ctx.reverse)
        return d_pre, d_h, _weight_grad(d_pre, h_prev), None, None, None


# -- one layer, one direction ---------------------------------------------------------------------------
def _input_projection(x: Tensor, w_ih: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``W_ih x + b`` of every step, (T, B, G): one large product, a plain F.linear (autograd differentiates
    it), as fast as oneDNN's without the cost of packing W_ih for a single use."""
    T, B = x.shape[0], x.shape[1]
    return F.linear(x.reshape(T * B, x.shape[2]), w_ih, bias).view(T, B, w_ih.shape[0])  # not -1: ambiguous for B = 0


def _with_grad(x: Tensor, state: State, weights: Weights) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x,) + tuple(weights) + tuple(state))


def lstm_layer(x: Tensor, state: State, weights: Weights, mask: Optional[Tensor] = None, reverse: bool = False):
    """One LSTM layer over x (T, B, I) from ``state`` = (h0 (B, P), c0 (B, H)); ``weights`` =
    (w_ih, w_hh, b_ih, b_hh, w_hr), the biases and w_hr possibly None; ``mask`` (T, B, 1) marks the real
    steps of a packed batch. Returns the outputs (T, B, P) and the final (h, c)."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    x_proj = _input_projection(x, w_ih, None if b_ih is None else b_ih + b_hh)
    if _with_grad(x, state, weights):
        out, h, c = _LSTMLayer.apply(x_proj, state[0], state[1], w_hh, w_hr, mask, reverse)
        return out, (h, c)
    step = _lstm_step(_pack(w_hh, x_proj), w_hr, _lstm_gate_math(x.device)[0])
    out, final, _ = _time_loop(step, x_proj, state, mask, reverse, keep=False)
    return out, final


def gru_layer(x: Tensor, state: State, weights: Weights, mask: Optional[Tensor] = None, reverse: bool = False):
    """One GRU layer: the contract of ``lstm_layer`` with ``state`` = (h0,) and w_hr None."""
    w_ih, w_hh, b_ih, b_hh, _ = weights
    x_proj = _input_projection(x, w_ih, b_ih)  # b_hh stays in the step: the reset gate scales b_hn
    if _with_grad(x, state, weights):
        out, h = _GRULayer.apply(x_proj, state[0], w_hh, b_hh, mask, reverse)
        return out, (h,)
    step = _gru_step(_pack(w_hh, x_proj), b_hh, _gru_gate_math(x.device)[0])
    out, final, _ = _time_loop(step, x_proj, state, mask, reverse, keep=False)
    return out, final


def rnn_layer(x: Tensor, state: State, weights: Weights, mask: Optional[Tensor] = None, reverse: bool = False, nonlinearity: str = "tanh"):
    """One Elman RNN layer (``nonlinearity`` "tanh" or "relu"): the contract of ``gru_layer``."""
    w_ih, w_hh, b_ih, b_hh, _ = weights
    x_proj = _input_projection(x, w_ih, None if b_ih is None else b_ih + b_hh)
    if _with_grad(x, state, weights):
        out, h = _RNNLayer.apply(x_proj, state[0], w_hh, nonlinearity, mask, reverse)
        return out, (h,)
    out, final, _ = _time_loop(_rnn_step(_pack(w_hh, x_proj), nonlinearity), x_proj, state, mask, reverse, keep=False)
    return out, final


# -- torch's own kernel -----------------------------------------------------------------------------------
_TORCH_KERNELS = {"LSTM": _VF.lstm, "GRU": _VF.gru, "RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu}


def torch_rnn(
    mode: str, x: Tensor, batch_sizes: Optional[Tensor], hx: State, weights: List[Tensor],
    bias: bool, num_layers: int, dropout: float, training: bool, bidirectional: bool,
) -> Tuple[Tensor, State]:
    """torch's recurrent kernel for ``mode`` ("LSTM", "GRU", "RNN_TANH", "RNN_RELU") on every layer, as
    torch.nn's modules call it: ``weights`` per layer and direction (w_ih, w_hh, b_ih, b_hh, w_hr, those
    present), ``x`` (T, B, I) time-major, or a PackedSequence's data with its ``batch_sizes``.
    Returns the output and the final state, ``(h,)`` or ``(h, c)``."""
    kernel = _TORCH_KERNELS[mode]
    state = hx if mode == "LSTM" else hx[0]
    flags = (bias, num_layers, dropout, training, bidirectional)
    if batch_sizes is None:
        result = kernel(x, state, weights, *flags, False)  # batch_first=False: x is time-major here
    else:
        result = kernel(x, batch_sizes, state, weights, *flags)
    return result[0], tuple(result[1:])
