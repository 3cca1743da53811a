"""The ``"fused"`` path of RNN, LSTM and GRU: the equations of ``rnn_cells`` rearranged for speed.

Per layer and direction:

1. the input projection ``W_ih x + b`` of every time step in one matrix multiply, (T*B, I) @ (I, G);
2. the time loop: per step one matrix multiply with W_hh (``minipt.ops.onednn``: oneDNN's
   prepacked matmul on CPU, ``torch.addmm`` elsewhere) and the gate math of
   ``minipt.ops.lstm_gates`` / ``gru_gates`` (Triton kernels on CUDA). On CPU the loop calls
   the op's registered reference function directly, ``lstm_gates_reference``: the same code
   the op runs there, without the custom-op dispatch per step, which makes batch-1 LSTM
   generation about a third slower (bench/rnn.py, column ``fused-op``);
3. with gradients, a hand-written backward through time (``_LSTMLayer`` and friends): per step
   the op's backward (``minipt::lstm_gates_backward``) and one matrix multiply with W_hh; the
   weight gradient is one matrix multiply over all steps.

The Elman RNN has no op: its nonlinearity is ``rnn_cells.rnn_nonlinearity``, as the math cell's.

``tests/test_rnn.py::test_fused_path_equals_math_cells`` compares this path with the cells
(forward and every gradient), ``test_gradcheck_layer`` checks the hand-written backward in
float64, and ``test_matches_torch_nn`` compares it with torch.nn, with oneDNN on and off.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import onednn
from ..ops._gru_gates import gru_gates_backward_reference, gru_gates_reference
from ..ops._lstm_gates import lstm_gates_backward_reference, lstm_gates_reference
from ..ops.onednn import PackedWeight
from .rnn_cells import rnn_nonlinearity


def _lstm_gate_math(device: torch.device):
    """(forward, backward) of minipt.ops' LSTM gate math for tensors on ``device``."""
    if device.type == "cpu":
        return lstm_gates_reference, lstm_gates_backward_reference
    return torch.ops.minipt.lstm_gates, torch.ops.minipt.lstm_gates_backward


def _gru_gate_math(device: torch.device):
    """(forward, backward) of minipt.ops' GRU gate math for tensors on ``device``."""
    if device.type == "cpu":
        return gru_gates_reference, gru_gates_backward_reference
    return torch.ops.minipt.gru_gates, torch.ops.minipt.gru_gates_backward


def _order(steps: int, reverse: bool) -> range:
    return range(steps - 1, -1, -1) if reverse else range(steps)


def _stack(per_step: List[Tensor], reverse: bool) -> Tensor:
    """Tensors listed in the order the loop ran, stacked in time order: (T, ...)."""
    return torch.stack(per_step[::-1] if reverse else per_step)


# -- LSTM --------------------------------------------------------------------------------------------
def _lstm_forward(
    x_proj: Tensor, h0: Tensor, c0: Tensor, w_hh: PackedWeight, w_hr: Optional[Tensor], mask: Optional[Tensor], reverse: bool, keep: bool
):
    """The time loop. Returns the outputs (T, B, P), the final (h, c), and with ``keep`` what backward needs."""
    gates_fn, _ = _lstm_gate_math(x_proj.device)
    h, c = h0, c0
    outputs, gates_seen, c_seen, h_seen, m_seen = [], [], [], [], []
    for t in _order(x_proj.shape[0], reverse):
        gates = onednn.linear_add(h, w_hh, x_proj[t])  # W_ih x + b_ih + b_hh + W_hh h, (B, 4H)
        m, c_new = gates_fn(gates, c)  # (B, H) each
        h_new = m if w_hr is None else F.linear(m, w_hr)  # projection (B, H) -> (B, P)
        if keep:
            gates_seen.append(gates), c_seen.append(c), h_seen.append(h), m_seen.append(m)
        if mask is not None:  # a sequence that has ended (or not begun) keeps its state, outputs zeros
            h, c = torch.where(mask[t], h_new, h), torch.where(mask[t], c_new, c)
            h_new = h_new.masked_fill(~mask[t], 0.0)
        else:
            h, c = h_new, c_new
        outputs.append(h_new)
    if not keep:
        return _stack(outputs, reverse), h, c, None
    saved = [_stack(s, reverse) for s in (gates_seen, c_seen, h_seen)]  # (T, B, 4H), (T, B, H), (T, B, P)
    saved.append(_stack(m_seen, reverse) if w_hr is not None else None)  # h' before the projection
    return _stack(outputs, reverse), h, c, saved


class _LSTMLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_proj, h0, c0, w_hh, w_hr, mask, reverse):
        T, B = x_proj.shape[0], x_proj.shape[1]
        out, h, c, (gates, c_prev, h_prev, m) = _lstm_forward(x_proj, h0, c0, onednn.pack(w_hh, B, T * B), w_hr, mask, reverse, True)
        ctx.save_for_backward(w_hh, w_hr, mask, gates, c_prev, h_prev, m)
        ctx.reverse = reverse
        return out, h, c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_h, d_c):
        w_hh, w_hr, mask, gates, c_prev, h_prev, m = ctx.saved_tensors
        _, gates_backward = _lstm_gate_math(gates.device)
        T, B = gates.shape[0], gates.shape[1]
        w_hh_t = onednn.pack(w_hh.t(), B, T * B)  # d_h = d_gates @ W_hh, as a linear with weight W_hh^T
        d_gates_all: List[Tensor] = []
        d_h_new_all: List[Tensor] = []  # gradient of each projected h', for W_hr
        for t in _order(T, not ctx.reverse):  # the steps in the opposite order of the forward pass
            d_h_new, d_c_new = d_out[t] + d_h, d_c
            if mask is not None:  # a step outside the sequence passed the state through unchanged
                d_h_keep, d_c_keep = d_h * ~mask[t], d_c * ~mask[t]
                d_h_new, d_c_new = d_h_new * mask[t], d_c_new * mask[t]
            d_m = d_h_new if w_hr is None else d_h_new @ w_hr  # back through the projection, (B, H)
            d_gates, d_c = gates_backward(d_m, d_c_new, gates[t], c_prev[t])  # (B, 4H), (B, H)
            d_h = onednn.linear_packed(d_gates, w_hh_t)  # (B, P)
            if mask is not None:
                d_h, d_c = d_h + d_h_keep, d_c + d_c_keep
            d_gates_all.append(d_gates), d_h_new_all.append(d_h_new)
        d_gates_all = _stack(d_gates_all, not ctx.reverse)  # (T, B, 4H)
        d_w_hh = d_gates_all.flatten(0, 1).t() @ h_prev.flatten(0, 1)  # (4H, P): one matmul over all steps
        d_w_hr = None
        if w_hr is not None:
            d_w_hr = _stack(d_h_new_all, not ctx.reverse).flatten(0, 1).t() @ m.flatten(0, 1)  # (P, H)
        return d_gates_all, d_h, d_c, d_w_hh, d_w_hr, None, None


# -- GRU ---------------------------------------------------------------------------------------------
def _gru_forward(x_proj: Tensor, h0: Tensor, w_hh: PackedWeight, b_hh: Optional[Tensor], mask: Optional[Tensor], reverse: bool, keep: bool):
    gates_fn, _ = _gru_gate_math(x_proj.device)
    h = h0
    outputs, hidden_seen, h_seen = [], [], []
    for t in _order(x_proj.shape[0], reverse):
        hidden = onednn.linear_packed(h, w_hh, b_hh)  # W_h* h + b_h*, (B, 3H): b_hn stays inside r * (.)
        h_new = gates_fn(x_proj[t], hidden, h)  # (B, H)
        if keep:
            hidden_seen.append(hidden), h_seen.append(h)
        if mask is not None:
            h = torch.where(mask[t], h_new, h)
            h_new = h_new.masked_fill(~mask[t], 0.0)
        else:
            h = h_new
        outputs.append(h_new)
    saved = (_stack(hidden_seen, reverse), _stack(h_seen, reverse)) if keep else None  # (T, B, 3H), (T, B, H)
    return _stack(outputs, reverse), h, saved


class _GRULayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_proj, h0, w_hh, b_hh, mask, reverse):
        T, B = x_proj.shape[0], x_proj.shape[1]
        out, h, (hidden, h_prev) = _gru_forward(x_proj, h0, onednn.pack(w_hh, B, T * B), b_hh, mask, reverse, True)
        ctx.save_for_backward(x_proj, w_hh, mask, hidden, h_prev)
        ctx.reverse, ctx.has_bias = reverse, b_hh is not None
        return out, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_h):
        x_proj, w_hh, mask, hidden, h_prev = ctx.saved_tensors
        _, gates_backward = _gru_gate_math(x_proj.device)
        T, B = x_proj.shape[0], x_proj.shape[1]
        w_hh_t = onednn.pack(w_hh.t(), B, T * B)
        d_x_all: List[Tensor] = []
        d_hidden_all: List[Tensor] = []
        for t in _order(T, not ctx.reverse):
            d_h_new = d_out[t] + d_h
            if mask is not None:
                d_h_keep = d_h * ~mask[t]
                d_h_new = d_h_new * mask[t]
            d_x, d_hidden, d_h_direct = gates_backward(d_h_new, x_proj[t], hidden[t], h_prev[t])
            d_h = onednn.linear_add(d_hidden, w_hh_t, d_h_direct)  # through h' = ... + z h and through W_hh h
            if mask is not None:
                d_h = d_h + d_h_keep
            d_x_all.append(d_x), d_hidden_all.append(d_hidden)
        d_hidden_all = _stack(d_hidden_all, not ctx.reverse)  # (T, B, 3H)
        d_w_hh = d_hidden_all.flatten(0, 1).t() @ h_prev.flatten(0, 1)  # (3H, H): one matmul over all steps
        d_b_hh = d_hidden_all.sum((0, 1)) if ctx.has_bias else None
        return _stack(d_x_all, not ctx.reverse), d_h, d_w_hh, d_b_hh, None, None


# -- Elman RNN ---------------------------------------------------------------------------------------
def _rnn_forward(x_proj: Tensor, h0: Tensor, w_hh: PackedWeight, relu: bool, mask: Optional[Tensor], reverse: bool, keep: bool):
    h = h0
    outputs, new_seen, h_seen = [], [], []
    for t in _order(x_proj.shape[0], reverse):
        pre = onednn.linear_add(h, w_hh, x_proj[t])  # W_ih x + b_ih + b_hh + W_hh h, (B, H)
        h_new = rnn_nonlinearity(pre, "relu" if relu else "tanh")
        if keep:
            new_seen.append(h_new), h_seen.append(h)
        if mask is not None:
            h = torch.where(mask[t], h_new, h)
            h_new = h_new.masked_fill(~mask[t], 0.0)
        else:
            h = h_new
        outputs.append(h_new)
    saved = (_stack(new_seen, reverse), _stack(h_seen, reverse)) if keep else None  # (T, B, H) each
    return _stack(outputs, reverse), h, saved


class _RNNLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_proj, h0, w_hh, relu, mask, reverse):
        T, B = x_proj.shape[0], x_proj.shape[1]
        out, h, (h_new, h_prev) = _rnn_forward(x_proj, h0, onednn.pack(w_hh, B, T * B), relu, mask, reverse, True)
        ctx.save_for_backward(w_hh, mask, h_new, h_prev)
        ctx.relu, ctx.reverse = relu, reverse
        return out, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_h):
        w_hh, mask, h_new, h_prev = ctx.saved_tensors
        T, B = h_new.shape[0], h_new.shape[1]
        w_hh_t = onednn.pack(w_hh.t(), B, T * B)
        d_pre_all: List[Tensor] = []
        for t in _order(T, not ctx.reverse):
            d_new = d_out[t] + d_h
            if mask is not None:
                d_keep = d_h * ~mask[t]
                d_new = d_new * mask[t]
            d_pre = d_new * (h_new[t] > 0) if ctx.relu else d_new * (1 - h_new[t] * h_new[t])  # relu' or tanh'
            d_h = onednn.linear_packed(d_pre, w_hh_t)
            if mask is not None:
                d_h = d_h + d_keep
            d_pre_all.append(d_pre)
        d_pre_all = _stack(d_pre_all, not ctx.reverse)  # (T, B, H)
        d_w_hh = d_pre_all.flatten(0, 1).t() @ h_prev.flatten(0, 1)
        return d_pre_all, d_h, d_w_hh, None, None, None


# -- one layer, one direction ----------------------------------------------------------------------
def fused_layer(mode: str, x: Tensor, state: Tuple[Tensor, ...], weights: Tuple[Optional[Tensor], ...], mask: Optional[Tensor], reverse: bool):
    """The contract of ``rnn_cells.math_layer`` on the fused path: outputs (T, B, H_out) and the final state."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    T, B = x.shape[0], x.shape[1]
    bias = b_ih if mode == "GRU" or b_ih is None else b_ih + b_hh  # the GRU keeps b_hn inside r * (.)
    x_flat = x.reshape(T * B, x.shape[2])
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x,) + weights + state)
    # one large product: a plain F.linear (autograd differentiates it), as fast as oneDNN's
    # without the cost of packing W_ih for a single use
    x_proj = F.linear(x_flat, w_ih, bias).view(T, B, w_ih.shape[0])  # (T, B, G); not -1, which is ambiguous for B = 0: W_ih x + b of every step
    if mode == "LSTM":
        if grad:
            out, h, c = _LSTMLayer.apply(x_proj, state[0], state[1], w_hh, w_hr, mask, reverse)
        else:
            out, h, c, _ = _lstm_forward(x_proj, state[0], state[1], onednn.pack(w_hh, B, T * B), w_hr, mask, reverse, False)
        return out, (h, c)
    if mode == "GRU":
        if grad:
            out, h = _GRULayer.apply(x_proj, state[0], w_hh, b_hh, mask, reverse)
        else:
            out, h, _ = _gru_forward(x_proj, state[0], onednn.pack(w_hh, B, T * B), b_hh, mask, reverse, False)
        return out, (h,)
    relu = mode == "RNN_RELU"
    if grad:
        out, h = _RNNLayer.apply(x_proj, state[0], w_hh, relu, mask, reverse)
    else:
        out, h, _ = _rnn_forward(x_proj, state[0], onednn.pack(w_hh, B, T * B), relu, mask, reverse, False)
    return out, (h,)
