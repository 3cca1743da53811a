"""RNN, LSTM and GRU written from their equations: state-dict drop-ins for torch.nn.RNN, LSTM and GRU.

One time step of each cell, with x the input, h the hidden state, c the LSTM
cell state and sigma the logistic sigmoid (the equations of torch.nn's docs):

    RNN   h' = tanh(W_ih x + b_ih + W_hh h + b_hh)            (or relu)

    LSTM  i  = sigma(W_ii x + b_ii + W_hi h + b_hi)           input gate
          f  = sigma(W_if x + b_if + W_hf h + b_hf)           forget gate
          g  =  tanh(W_ig x + b_ig + W_hg h + b_hg)           cell candidate
          o  = sigma(W_io x + b_io + W_ho h + b_ho)           output gate
          c' = f * c + i * g
          h' = o * tanh(c')            (then h' = W_hr h' with proj_size > 0)

    GRU   r  = sigma(W_ir x + b_ir + W_hr h + b_hr)           reset gate
          z  = sigma(W_iz x + b_iz + W_hz h + b_hz)           update gate
          n  =  tanh(W_in x + b_in + r * (W_hn h + b_hn))     the reset gate scales
          h' = (1 - z) * n + z * h                            W_hn h *and* its bias b_hn

The gate blocks are stacked in that order in torch.nn's parameters
(``weight_ih_l0`` is ``[W_ii; W_if; W_ig; W_io]``), each gate has two biases,
and a layer's weights are named ``weight_ih_l{k}``, ``weight_hh_l{k}``,
``bias_ih_l{k}``, ``bias_hh_l{k}`` (``weight_hr_l{k}`` for the LSTM
projection), with ``_reverse`` for the backward direction of a bidirectional
layer. minipt uses exactly these names and layouts, so torch.nn's state dict
is the official format: ``minipt_lstm.load_state_dict(torch_lstm.state_dict())``.

Two implementations of the same equations:

- the reference (``set_backend("math")``): the cells below, one step at a
  time in plain Python; autograd differentiates them.
- the fused path (default): the input projection ``W_ih x + b`` of every time
  step is one matrix multiply per layer and direction; the time loop of a
  layer (one matrix multiply with ``W_hh`` per step, the gate math written
  into preallocated buffers) is compiled with TorchScript on first use, and
  training runs a hand-written backward pass through time (``_LSTMLayer`` and
  friends) whose weight gradients are again one matrix multiply over all
  steps. On CPU in float32 the matrix multiplies go through oneDNN with the
  weight prepacked once per call (what torch.nn's own CPU kernels use).
  Tests check both paths against torch.nn and against each other.

Packed batches (``torch.nn.utils.rnn.PackedSequence``) run as a padded batch
in the packing's length-sorted order with a mask: a sequence that has ended
keeps its state (forward direction), or has not started yet and still holds
its initial state (backward direction).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..errors import ConfigError, InputError, KeyMismatchError
from .backend import get_backend
from .tap import tap


# -- the cells: one time step, the equations as written above (the reference) ---------------------
def rnn_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], nonlinearity: str = "tanh") -> Tensor:
    pre = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)  # (B, H)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def lstm_cell(
    x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)  # (B, 4H), blocks i, f, g, o
    i, f, g, o = gates.chunk(4, dim=1)
    i = torch.sigmoid(i)  # input gate
    f = torch.sigmoid(f)  # forget gate
    g = torch.tanh(g)  # cell candidate
    o = torch.sigmoid(o)  # output gate
    c = f * c + i * g
    h = o * torch.tanh(c)  # (B, H)
    if w_hr is not None:
        h = F.linear(h, w_hr)  # projection (B, H) -> (B, P)
    return h, c


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Tensor:
    x_r, x_z, x_n = F.linear(x, w_ih, b_ih).chunk(3, dim=1)  # W_i* x + b_i*, each (B, H)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)  # W_h* h + b_h*, each (B, H)
    r = torch.sigmoid(x_r + h_r)  # reset gate
    z = torch.sigmoid(x_z + h_z)  # update gate
    n = torch.tanh(x_n + r * h_n)  # new gate: r scales W_hn h + b_hn, as torch.nn does
    return (1 - z) * n + z * h


def reference_layer(
    mode: str, x: Tensor, state: Tuple[Tensor, ...], weights: Tuple[Optional[Tensor], ...], mask: Optional[Tensor], reverse: bool,
    site: Optional[Tuple[nn.Module, str]] = None,
):
    """Run one layer in one direction over a (T, B, I) sequence, one cell call per step.

    ``weights`` is ``(w_ih, w_hh, b_ih, b_hh, w_hr)``; ``mask`` (T, B, 1) marks the
    steps that belong to each sequence of a packed batch. Returns the outputs
    (T, B, H_out) and the final state (``(h,)`` or ``(h, c)``). ``site`` = (module,
    ``"layers.{k}"``) names the tap points of every step's new state, ``layers.{k}.h``
    and ``.c`` (see ``minipt.nn.tap``).
    """
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    steps = range(x.shape[0] - 1, -1, -1) if reverse else range(x.shape[0])
    outputs: List[Optional[Tensor]] = [None] * x.shape[0]
    for t in steps:
        if mode == "LSTM":
            new = lstm_cell(x[t], state[0], state[1], w_ih, w_hh, b_ih, b_hh, w_hr)
        elif mode == "GRU":
            new = (gru_cell(x[t], state[0], w_ih, w_hh, b_ih, b_hh),)
        else:
            new = (rnn_cell(x[t], state[0], w_ih, w_hh, b_ih, b_hh, "tanh" if mode == "RNN_TANH" else "relu"),)
        if site is not None:
            new = tuple(tap(site[0], f"{site[1]}.{kind}", s, step=(t, x.shape[0])) for kind, s in zip("hc", new))
        outputs[t] = new[0]
        if mask is not None:  # a sequence of a packed batch that has ended (or not begun) keeps its state
            outputs[t] = new[0].masked_fill(~mask[t], 0.0)  # and outputs zeros, as padding
            new = tuple(torch.where(mask[t], n, s) for n, s in zip(new, state))
        state = new
    return torch.stack(outputs), state


# -- the fused path: time loops compiled with TorchScript, hand-written backward ----------------
# Each loop takes ``x_proj`` (T, B, G), the input projection W_ih x + b of every
# step computed beforehand in one matrix multiply, and runs the recurrence with
# one matrix multiply per step, the gate math writing into preallocated buffers.
# With ``keep`` the activated gates and states of every step are kept for the
# backward pass. ``w_packed`` is W_hh prepacked for oneDNN's matmul on CPU (see
# ``_onednn_weight``), or None for a plain addmm with W_hh.
def _recurrent(x_t: Tensor, h: Tensor, w_hh_t: Tensor, w_packed: Optional[Tensor]) -> Tensor:
    """x_t + h @ W_hh^T: the input projection of this step plus the recurrent one."""
    if w_packed is not None:
        return torch.ops.mkldnn._linear_pointwise(h, x_t, w_packed, None, "add")
    return torch.addmm(x_t, h, w_hh_t)


def _tanh(x: Tensor, out: Tensor) -> Tensor:
    """tanh(x) = 2 sigmoid(2x) - 1, written into ``out``: the same function, and on CPU
    torch's sigmoid is several times cheaper than its tanh (tested equal to 1e-6)."""
    return torch.sigmoid(x * 2.0, out=out).mul_(2.0).sub_(1.0)


def _times(d: Tensor, w: Tensor, w_packed: Optional[Tensor]) -> Tensor:
    """d @ w, with ``w_packed`` holding w^T prepacked for oneDNN (or None)."""
    if w_packed is not None:
        return torch.ops.mkldnn._linear_pointwise(d, w_packed, None, "none", [], "")
    return torch.mm(d, w)


def _rnn_forward(
    x_proj: Tensor, h0: Tensor, w_hh: Tensor, w_packed: Optional[Tensor], relu: bool, mask: Optional[Tensor], reverse: bool, keep: bool
) -> Tuple[Tensor, Tensor, Tensor]:
    T = x_proj.shape[0]
    w_hh_t = w_hh.t()
    out = x_proj.new_empty(x_proj.shape)  # (T, B, H): h' of every step
    states = out if mask is None else x_proj.new_empty(x_proj.shape)  # h after masking
    h = h0
    for s in range(T):
        t = T - 1 - s if reverse else s
        h_new = out[t]
        h_new.copy_(_recurrent(x_proj[t], h, w_hh_t, w_packed))  # W_ih x + b_ih + b_hh + W_hh h
        if relu:
            h_new.relu_()
        else:
            h_new.tanh_()
        if mask is not None:
            h = torch.where(mask[t], h_new, h)
            h_new.masked_fill_(~mask[t], 0.0)  # padding outputs zeros
            if keep:
                states[t] = h
        else:
            h = h_new
    return out, states, h


def _rnn_backward(
    d_out: Tensor, d_h: Tensor, h0: Tensor, w_hh: Tensor, w_packed_t: Optional[Tensor], relu: bool, mask: Optional[Tensor], reverse: bool, out: Tensor, states: Tensor
) -> Tuple[Tensor, Tensor, Tensor]:
    T = out.shape[0]
    d_pre = torch.empty_like(out)  # (T, B, H): gradient of W_ih x + b + W_hh h
    for s in range(T):
        t = s if reverse else T - 1 - s  # the steps in the opposite order of the forward pass
        d_new = d_out[t] + d_h
        if mask is not None:
            d_keep = d_h * (~mask[t])
            d_new = d_new * mask[t]
        else:
            d_keep = d_h  # unused
        h_new = out[t]
        if relu:
            torch.mul(d_new, h_new > 0, out=d_pre[t])
        else:
            torch.mul(d_new, 1 - h_new * h_new, out=d_pre[t])
        d_h = _times(d_pre[t], w_hh, w_packed_t)
        if mask is not None:
            d_h = d_h + d_keep
    h_prev = _previous_states(states, h0, reverse)
    d_w_hh = torch.mm(d_pre.flatten(0, 1).t(), h_prev.flatten(0, 1))  # one matmul over all steps
    return d_pre, d_h, d_w_hh


def _lstm_forward(
    x_proj: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_packed: Optional[Tensor], w_hr: Optional[Tensor],
    mask: Optional[Tensor], reverse: bool, keep: bool,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B = x_proj.shape[0], x_proj.shape[1]
    H = c0.shape[1]
    w_hh_t = w_hh.t()
    out = x_proj.new_empty([T, B, h0.shape[1]])  # (T, B, H or P)
    states_h = out if mask is None else x_proj.new_empty(out.shape)
    states_c = x_proj.new_empty([T, B, H]) if keep else x_proj.new_empty([0])
    gates_all = x_proj.new_empty([T if keep else 1, B, 4 * H])  # activated i, f, g, o
    h, c = h0, c0
    for s in range(T):
        t = T - 1 - s if reverse else s
        pre = _recurrent(x_proj[t], h, w_hh_t, w_packed)  # W_ih x + b_ih + b_hh + W_hh h, (B, 4H)
        gates = gates_all[t if keep else 0]
        torch.sigmoid(pre, out=gates)  # i, f, o (the g block is overwritten next)
        i, f, g, o = gates.chunk(4, 1)
        _tanh(pre[:, 2 * H : 3 * H], g)  # g
        c_new = torch.addcmul(f * c, i, g)  # f * c + i * g
        tanh_c = _tanh(c_new, torch.empty_like(c_new))
        if w_hr is not None:
            h_new = torch.mm(o * tanh_c, w_hr.t(), out=out[t])
        else:
            h_new = torch.mul(o, tanh_c, out=out[t])
        if mask is not None:
            h = torch.where(mask[t], h_new, h)
            c = torch.where(mask[t], c_new, c)
            h_new.masked_fill_(~mask[t], 0.0)  # padding outputs zeros
            if keep:
                states_h[t] = h
        else:
            h, c = h_new, c_new
        if keep:
            states_c[t] = c
    return out, states_h, states_c, gates_all, h, c


def _lstm_backward(
    d_out: Tensor, d_h: Tensor, d_c: Tensor, h0: Tensor, c0: Tensor, w_hh: Tensor, w_packed_t: Optional[Tensor], w_hr: Optional[Tensor],
    mask: Optional[Tensor], reverse: bool, states_h: Tensor, states_c: Tensor, gates_all: Tensor,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
    T = gates_all.shape[0]
    H = c0.shape[1]
    d_gates_all = torch.empty_like(gates_all)  # gradient of the gate pre-activations, (T, B, 4H)
    d_h_new_all = torch.empty_like(states_h)  # gradient of each projected h', (T, B, P)
    tanh_c_all = torch.tanh(states_c)
    for s in range(T):
        t = s if reverse else T - 1 - s
        first = t == T - 1 if reverse else t == 0
        c_prev = c0 if first else states_c[t + 1 if reverse else t - 1]
        d_h_new = d_out[t] + d_h
        d_c_new = d_c
        d_h_keep, d_c_keep = d_h, d_c  # used with a mask only
        if mask is not None:
            keep_old = ~mask[t]
            d_h_keep, d_c_keep = d_h * keep_old, d_c * keep_old
            d_h_new, d_c_new = d_h_new * mask[t], d_c_new * mask[t]
        gates = gates_all[t]
        i, f, g, o = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H : 3 * H], gates[:, 3 * H :]
        tanh_c = tanh_c_all[t]
        if w_hr is not None:
            d_h_new_all[t] = d_h_new
            d_m = torch.mm(d_h_new, w_hr)  # back through the projection, (B, H)
        else:
            d_m = d_h_new
        d_c_new = d_c_new + d_m * o * (1 - tanh_c * tanh_c)  # h' = o * tanh(c')
        d_gates = d_gates_all[t]
        torch.mul(d_c_new * g, i * (1 - i), out=d_gates[:, :H])  # c' = f c + i g; i = sigma(.)
        torch.mul(d_c_new * c_prev, f * (1 - f), out=d_gates[:, H : 2 * H])
        torch.mul(d_c_new * i, 1 - g * g, out=d_gates[:, 2 * H : 3 * H])
        torch.mul(d_m * tanh_c, o * (1 - o), out=d_gates[:, 3 * H :])
        d_c = d_c_new * f
        d_h = _times(d_gates, w_hh, w_packed_t)  # (B, 4H) @ (4H, P)
        if mask is not None:
            d_h = d_h + d_h_keep
            d_c = d_c + d_c_keep
    h_prev = _previous_states(states_h, h0, reverse)
    d_w_hh = torch.mm(d_gates_all.flatten(0, 1).t(), h_prev.flatten(0, 1))  # (4H, P), one matmul over all steps
    d_w_hr: Optional[Tensor] = None
    if w_hr is not None:
        m_all = gates_all[:, :, 3 * H :] * tanh_c_all  # o * tanh(c'), (T, B, H)
        d_w_hr = torch.mm(d_h_new_all.flatten(0, 1).t(), m_all.flatten(0, 1))
    return d_gates_all, d_h, d_c, d_w_hh, d_w_hr


def _gru_forward(
    x_proj: Tensor, h0: Tensor, w_hh: Tensor, w_packed: Optional[Tensor], b_hh: Optional[Tensor], mask: Optional[Tensor], reverse: bool, keep: bool
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    T, B = x_proj.shape[0], x_proj.shape[1]
    H = h0.shape[1]
    w_hh_t = w_hh.t()
    out = x_proj.new_empty([T, B, H])
    states = out if mask is None else x_proj.new_empty(out.shape)
    gates_all = x_proj.new_empty([T if keep else 1, B, 3 * H])  # activated r, z, n
    hn_all = x_proj.new_empty([T, B, H]) if keep else x_proj.new_empty([0])  # W_hn h + b_hn
    h = h0
    for s in range(T):
        t = T - 1 - s if reverse else s
        gates = gates_all[t if keep else 0]
        if w_packed is not None:
            hidden = torch.ops.mkldnn._linear_pointwise(h, w_packed, b_hh, "none", [], "")  # W_h* h + b_h*, (B, 3H)
        elif b_hh is not None:
            hidden = torch.addmm(b_hh, h, w_hh_t)
        else:
            hidden = torch.mm(h, w_hh_t)
        x_rz, x_n = x_proj[t].split([2 * H, H], 1)
        h_rz, h_n = hidden.split([2 * H, H], 1)
        rz, n = gates.split([2 * H, H], 1)
        torch.add(x_rz, h_rz, out=rz).sigmoid_()  # r, z
        r, z = rz.chunk(2, 1)
        torch.addcmul(x_n, r, h_n, out=n).tanh_()  # n = tanh(x_n + r * (W_hn h + b_hn))
        if keep:
            hn_all[t] = h_n
        h_new = torch.addcmul(n, z, h - n, out=out[t])  # (1 - z) * n + z * h
        if mask is not None:
            h = torch.where(mask[t], h_new, h)
            h_new.masked_fill_(~mask[t], 0.0)  # padding outputs zeros
            if keep:
                states[t] = h
        else:
            h = h_new
    return out, states, gates_all, hn_all, h


def _gru_backward(
    d_out: Tensor, d_h: Tensor, h0: Tensor, w_hh: Tensor, w_packed_t: Optional[Tensor], mask: Optional[Tensor], reverse: bool,
    states: Tensor, gates_all: Tensor, hn_all: Tensor,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    T = gates_all.shape[0]
    H = h0.shape[1]
    d_x_all = torch.empty_like(gates_all)  # gradient of W_i* x + b_i*, (T, B, 3H)
    d_hidden_all = torch.empty_like(gates_all)  # gradient of W_h* h + b_h*, (T, B, 3H)
    for s in range(T):
        t = s if reverse else T - 1 - s
        first = t == T - 1 if reverse else t == 0
        h_prev = h0 if first else states[t + 1 if reverse else t - 1]
        d_h_new = d_out[t] + d_h
        d_h_keep = d_h
        if mask is not None:
            d_h_keep = d_h * (~mask[t])
            d_h_new = d_h_new * mask[t]
        gates = gates_all[t]
        r, z, n = gates[:, :H], gates[:, H : 2 * H], gates[:, 2 * H :]
        d_n_pre = d_h_new * (1 - z) * (1 - n * n)  # through h' = (1 - z) n + z h and n = tanh(.)
        d_x, d_hidden = d_x_all[t], d_hidden_all[t]
        torch.mul(d_n_pre * hn_all[t], r * (1 - r), out=d_x[:, :H])  # r = sigma(.)
        torch.mul(d_h_new * (h_prev - n), z * (1 - z), out=d_x[:, H : 2 * H])  # z = sigma(.)
        d_x[:, 2 * H :] = d_n_pre
        d_hidden[:, : 2 * H] = d_x[:, : 2 * H]
        torch.mul(d_n_pre, r, out=d_hidden[:, 2 * H :])
        d_h = torch.addcmul(_times(d_hidden, w_hh, w_packed_t), d_h_new, z)
        if mask is not None:
            d_h = d_h + d_h_keep
    h_prev_all = _previous_states(states, h0, reverse)
    d_w_hh = torch.mm(d_hidden_all.flatten(0, 1).t(), h_prev_all.flatten(0, 1))  # (3H, H), one matmul over all steps
    return d_x_all, d_hidden_all, d_h, d_w_hh


def _previous_states(states: Tensor, h0: Tensor, reverse: bool) -> Tensor:
    """The state each step started from: (T, B, H) shifted by one step, h0 first."""
    if reverse:
        return torch.cat([states[1:], h0.unsqueeze(0)])
    return torch.cat([h0.unsqueeze(0), states[:-1]])


_COMPILED: dict = {}


def _compiled(fn: Callable) -> Callable:
    """``fn`` compiled with TorchScript on first use (never at import), cached; plain Python if it cannot be."""
    if fn not in _COMPILED:
        try:
            with warnings.catch_warnings():
                # torch.jit.script is deprecated in recent torch, yet it is still the one
                # compiler that keeps a whole time loop in one graph without unrolling it
                warnings.simplefilter("ignore")
                _COMPILED[fn] = torch.jit.script(fn)
        except Exception as error:  # pragma: no cover - depends on the torch build
            warnings.warn(f"minipt.nn.rnn: TorchScript unavailable ({error}); running the time loop in Python")
            _COMPILED[fn] = fn
    return _COMPILED[fn]


# oneDNN's matmul with a prepacked weight is markedly faster than a plain addmm
# for the small per-step products on CPU (and it is what torch.nn's own CPU
# kernels use). Weights are packed once per call, never cached, so an in-place
# update of a parameter can never leave a stale copy behind.
_ONEDNN_MIN_ROWS = 64  # steps x batch below which packing costs more than it saves
_onednn_ok: Optional[bool] = None


def _onednn_weight(weight: Tensor, batch: int, rows: int) -> Optional[Tensor]:
    """``weight`` (out, in) packed for ``torch.ops.mkldnn._linear_pointwise``, or None where that does not apply."""
    global _onednn_ok
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or rows < _ONEDNN_MIN_ROWS:
        return None
    if _onednn_ok is None:  # probed once, on first use
        try:
            probe = torch.ops.mkldnn._reorder_linear_weight(torch.ones(2, 3), 1)
            _onednn_ok = torch.backends.mkldnn.is_available() and bool(
                torch.ops.mkldnn._linear_pointwise(torch.ones(1, 3), probe, None, "none", [], "").eq(3).all()
            )
        except (AttributeError, RuntimeError):
            _onednn_ok = False
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), batch) if _onednn_ok else None


class _RNNLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_proj, h0, w_hh, relu, mask, reverse):
        rows = x_proj.shape[0] * x_proj.shape[1]
        w_packed = _onednn_weight(w_hh, x_proj.shape[1], rows)
        out, states, h = _compiled(_rnn_forward)(x_proj, h0, w_hh, w_packed, relu, mask, reverse, True)
        ctx.save_for_backward(h0, w_hh, mask, out, states)
        ctx.relu, ctx.reverse = relu, reverse
        return out, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_h):
        h0, w_hh, mask, out, states = ctx.saved_tensors
        w_packed_t = _onednn_weight(w_hh.t().contiguous(), out.shape[1], out.shape[0] * out.shape[1])
        d_x_proj, d_h0, d_w_hh = _compiled(_rnn_backward)(d_out, d_h, h0, w_hh, w_packed_t, ctx.relu, mask, ctx.reverse, out, states)
        return d_x_proj, d_h0, d_w_hh, None, None, None


class _LSTMLayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_proj, h0, c0, w_hh, w_hr, mask, reverse):
        w_packed = _onednn_weight(w_hh, x_proj.shape[1], x_proj.shape[0] * x_proj.shape[1])
        out, states_h, states_c, gates, h, c = _compiled(_lstm_forward)(x_proj, h0, c0, w_hh, w_packed, w_hr, mask, reverse, True)
        ctx.save_for_backward(h0, c0, w_hh, w_hr, mask, states_h, states_c, gates)
        ctx.reverse = reverse
        return out, h, c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_h, d_c):
        h0, c0, w_hh, w_hr, mask, states_h, states_c, gates = ctx.saved_tensors
        w_packed_t = _onednn_weight(w_hh.t().contiguous(), gates.shape[1], gates.shape[0] * gates.shape[1])
        d_x_proj, d_h0, d_c0, d_w_hh, d_w_hr = _compiled(_lstm_backward)(
            d_out, d_h, d_c, h0, c0, w_hh, w_packed_t, w_hr, mask, ctx.reverse, states_h, states_c, gates
        )
        return d_x_proj, d_h0, d_c0, d_w_hh, d_w_hr, None, None


class _GRULayer(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_proj, h0, w_hh, b_hh, mask, reverse):
        w_packed = _onednn_weight(w_hh, x_proj.shape[1], x_proj.shape[0] * x_proj.shape[1])
        out, states, gates, hn, h = _compiled(_gru_forward)(x_proj, h0, w_hh, w_packed, b_hh, mask, reverse, True)
        ctx.save_for_backward(h0, w_hh, mask, states, gates, hn)
        ctx.reverse, ctx.has_bias = reverse, b_hh is not None
        return out, h

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_h):
        h0, w_hh, mask, states, gates, hn = ctx.saved_tensors
        w_packed_t = _onednn_weight(w_hh.t().contiguous(), gates.shape[1], gates.shape[0] * gates.shape[1])
        d_x_proj, d_hidden, d_h0, d_w_hh = _compiled(_gru_backward)(d_out, d_h, h0, w_hh, w_packed_t, mask, ctx.reverse, states, gates, hn)
        d_b_hh = d_hidden.sum((0, 1)) if ctx.has_bias else None
        return d_x_proj, d_h0, d_w_hh, d_b_hh, None, None


def fused_layer(mode: str, x: Tensor, state: Tuple[Tensor, ...], weights: Tuple[Optional[Tensor], ...], mask: Optional[Tensor], reverse: bool):
    """The same contract as ``reference_layer``, on the fused path."""
    w_ih, w_hh, b_ih, b_hh, w_hr = weights
    T, B = x.shape[0], x.shape[1]
    # the input projection of every step at once: one matrix multiply, (T*B, I) @ (I, G)
    bias = b_ih if mode == "GRU" else _sum_biases(b_ih, b_hh)  # GRU keeps b_hn inside r * (.)
    x_flat = x.reshape(T * B, x.shape[2])
    grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x,) + weights + state)
    w_ih_packed = None if grad else _onednn_weight(w_ih, T * B, T * B)  # no autograd through oneDNN's op
    if w_ih_packed is not None:
        x_proj = torch.ops.mkldnn._linear_pointwise(x_flat, w_ih_packed, bias, "none", [], "")
    elif bias is not None:
        x_proj = torch.addmm(bias, x_flat, w_ih.t())
    else:
        x_proj = torch.mm(x_flat, w_ih.t())
    x_proj = x_proj.view(T, B, x_proj.shape[1])  # (T, B, G); G spelled out: -1 is ambiguous for an empty batch
    if mode == "LSTM":
        h0, c0 = state
        if grad:
            out, h, c = _LSTMLayer.apply(x_proj, h0, c0, w_hh, w_hr, mask, reverse)
        else:
            w_packed = _onednn_weight(w_hh, B, T * B)
            out, _, _, _, h, c = _compiled(_lstm_forward)(x_proj, h0, c0, w_hh, w_packed, w_hr, mask, reverse, False)
        return out, (h, c)
    if mode == "GRU":
        if grad:
            out, h = _GRULayer.apply(x_proj, state[0], w_hh, b_hh, mask, reverse)
        else:
            w_packed = _onednn_weight(w_hh, B, T * B)
            out, _, _, _, h = _compiled(_gru_forward)(x_proj, state[0], w_hh, w_packed, b_hh, mask, reverse, False)
        return out, (h,)
    relu = mode == "RNN_RELU"
    if grad:
        out, h = _RNNLayer.apply(x_proj, state[0], w_hh, relu, mask, reverse)
    else:
        w_packed = _onednn_weight(w_hh, B, T * B)
        out, _, h = _compiled(_rnn_forward)(x_proj, state[0], w_hh, w_packed, relu, mask, reverse, False)
    return out, (h,)


def _sum_biases(b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Optional[Tensor]:
    return None if b_ih is None or b_hh is None else b_ih + b_hh


# -- the modules -----------------------------------------------------------------------------------
_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}


class _RNNBase(nn.Module):
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
        self.backend: str | None = None  # "math" runs the reference cells; see minipt.nn.backend

        # parameters in torch.nn's order, so that seeded initialisation draws the same numbers
        gate_size = _GATES[mode] * hidden_size
        out_size = proj_size or hidden_size
        factory = {"device": device, "dtype": dtype}
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

    @property
    def _flat_weights_names(self) -> List[str]:
        return [name for name, _ in self.named_parameters(recurse=False)]

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
            x, mask, sorted_indices, unsorted_indices = self._unpack(input)  # (T, B, I) in sorted order
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
            mask = sorted_indices = unsorted_indices = None
        self._check_features(x, name, tuple(input.data.shape if packed else input.shape))
        if x.shape[0] == 0:
            raise InputError(f"{name} got an empty sequence (seq_len 0, input shape {tuple(x.shape)})")
        hx = self._initial_state(hx, x, batched, sorted_indices)  # tuple of (L*D, B, *) tensors

        stepwise = get_backend(self.backend) == "math"  # the cells, one step at a time
        finals: List[List[Tensor]] = [[] for _ in hx]
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                state = tuple(s[index] for s in hx)
                args = (self.mode, x, state, self._layer_weights(layer, direction), mask, direction == 1)
                out, state = reference_layer(*args, site=(self, self._tap_prefix(layer, direction))) if stepwise else fused_layer(*args)
                outputs.append(out)
                for kept, s in zip(finals, state):
                    kept.append(s)
            x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)  # (T, B, D * H_out)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)  # between layers, never after the last
        final = tuple(torch.stack(kept) for kept in finals)  # each (L*D, B, *)

        if packed:
            output = PackedSequence(x[mask.squeeze(2)], input.batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                final = tuple(s.index_select(1, unsorted_indices) for s in final)
        elif batched:
            output = x.transpose(0, 1) if self.batch_first else x
        else:
            output = x.squeeze(1)
            final = tuple(s.squeeze(1) for s in final)
        return output, (final if self.mode == "LSTM" else final[0])

    def _input_shape_text(self) -> str:
        return f"(batch, seq_len, {self.input_size})" if self.batch_first else f"(seq_len, batch, {self.input_size})"

    def _check_features(self, x: Tensor, name: str, shape: tuple) -> None:
        if x.shape[-1] != self.input_size:
            raise InputError(f"{name} was built for input_size={self.input_size} features, got input with {x.shape[-1]} (shape {shape})")
        weight = self.weight_ih_l0
        if x.dtype != weight.dtype:
            raise InputError(f"{name}: input dtype {x.dtype} differs from the parameters' {weight.dtype}; convert one of them")
        if x.device != weight.device:
            raise InputError(f"{name}: input is on {x.device}, the parameters on {weight.device}")

    def _unpack(self, packed: PackedSequence):
        """A PackedSequence as a padded (T, B, I) batch in its length-sorted order, and the (T, B, 1) mask of real steps."""
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
        T, B = len(sizes), sizes[0]
        for label, indices in (("sorted_indices", packed.sorted_indices), ("unsorted_indices", packed.unsorted_indices)):
            if indices is not None and indices.shape != (B,):
                raise InputError(f"{name}: PackedSequence {label} must have shape ({B},), got {tuple(indices.shape)}")
        steps = torch.arange(B, device=data.device)
        mask = steps.unsqueeze(0) < batch_sizes.to(data.device).unsqueeze(1)  # (T, B): step t of sequence b is real
        padded = data.new_zeros(T, B, data.shape[1])
        padded[mask] = data  # packed rows are time-major, longest sequence first: the order of mask's True entries
        return padded, mask.unsqueeze(2), packed.sorted_indices, packed.unsorted_indices

    def _initial_state(self, hx, x: Tensor, batched: bool, sorted_indices: Optional[Tensor]) -> Tuple[Tensor, ...]:
        name = type(self).__name__
        layers, batch = self.num_layers * self.num_directions, x.shape[1]
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
