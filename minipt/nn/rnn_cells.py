"""The recurrent cells written out from their equations: one time step of RNN, LSTM and GRU.

With x the input, h the hidden state, c the LSTM cell state and sigma the logistic
sigmoid (the equations of torch.nn's documentation):

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
(``weight_ih_l0`` is ``[W_ii; W_if; W_ig; W_io]``), and each gate has two biases.

Each equation is written once. The LSTM and GRU gate math (everything after the matrix
multiplies) is the reference of minipt's fused op, ``minipt.ops.lstm_gates_reference`` /
``gru_gates_reference`` (and the Elman RNN's activation ``minipt.ops.rnn_nonlinearity``); the
cells below do the matrix multiplies and call it, and so does the fast path. Changing an equation means
editing that reference; then the op's hand-written backward (same file) and its Triton
kernels must follow, which the tests enforce: ``tests/test_rnn.py::
test_fused_path_equals_math_cells`` compares the fast path's gradients with autograd's
through these cells, and the interpreter tests compare the kernels with the reference.

Who runs what (``minipt.nn.backend``):

- ``"math"``: these cells, one call per step (``math_layer`` below); autograd
  differentiates them.
- ``"fused"``: ``minipt.nn.rnn_fused`` (``minipt.ops.lstm_layer`` ...): all input projections
  in one matmul, then per step one matmul with W_hh and the same gate math (the Triton kernels
  on CUDA), with a hand-written backward through time.
- ``"torch"``: torch's own recurrent kernel (``minipt.ops.torch_rnn``), on the same parameters,
  compared with both by ``test_matches_torch_nn``.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..ops import gru_gates_reference, lstm_gates_reference, rnn_nonlinearity
from .tap import listening, tap


def rnn_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], nonlinearity: str = "tanh") -> Tensor:
    """One Elman RNN step on the ``"math"`` backend."""
    pre = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)  # (B, H)
    return rnn_nonlinearity(pre, nonlinearity)


def lstm_cell(
    x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """One LSTM step on the ``"math"`` backend, ``(h', c')``."""
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)  # (B, 4H), blocks i, f, g, o
    h, c = lstm_gates_reference(gates, c)  # the gate equations above, (B, H) each
    if w_hr is not None:
        h = F.linear(h, w_hr)  # projection (B, H) -> (B, P)
    return h, c


def gru_cell(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor]) -> Tensor:
    """One GRU step on the ``"math"`` backend."""
    gi = F.linear(x, w_ih, b_ih)  # W_i* x + b_i*, (B, 3H), blocks r, z, n
    gh = F.linear(h, w_hh, b_hh)  # W_h* h + b_h*
    return gru_gates_reference(gi, gh, h)  # the gate equations above, (B, H)


def math_layer(
    mode: str, x: Tensor, state: Tuple[Tensor, ...], weights: Tuple[Optional[Tensor], ...], mask: Optional[Tensor], reverse: bool,
    site: Optional[tuple] = None,
):
    """The ``"math"`` backend: one layer in one direction over a (T, B, I) sequence, one cell call per step.

    ``mode`` is ``"LSTM"``, ``"GRU"``, ``"RNN_TANH"`` or ``"RNN_RELU"``; ``weights`` is
    ``(w_ih, w_hh, b_ih, b_hh, w_hr)``; ``mask`` (T, B, 1) marks the steps that belong to
    each sequence of a packed batch. Returns the outputs (T, B, H_out) and the final state
    (``(h,)`` or ``(h, c)``). ``site`` = (module, ``"layers.{k}"``, order) names the tap points
    of every step's new state, ``layers.{k}.h`` and ``.c`` (see ``minipt.nn.tap``): a
    capture sees the state the step leaves (an ended sequence's held state), its rows in
    the caller's batch order where ``order`` = (unsorted_indices, sorted_indices) of a
    packing that sorted them.
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
        if mask is not None:  # a sequence of a packed batch that has ended (or not begun) keeps its state
            new = tuple(torch.where(mask[t], n, s) for n, s in zip(new, state))
        if site is not None and listening():
            tapped = tuple(_tapped(site, kind, s, (t, x.shape[0])) for kind, s in zip("hc", new))
            # an edit reaches the sequences that have step t; the others keep their state (recorded as it is)
            new = tapped if mask is None else tuple(torch.where(mask[t], e, s) for e, s in zip(tapped, state))
        outputs[t] = new[0] if mask is None else new[0].masked_fill(~mask[t], 0.0)  # padding steps output zeros
        state = new
    return torch.stack(outputs), state


def _tapped(site: tuple, kind: str, state: Tensor, step: tuple[int, int]) -> Tensor:
    """One step's state (B, H) through the tap ``{site[1]}.{kind}``, shown in the caller's batch order."""
    order = site[2] if len(site) > 2 else None
    if order is None:
        return tap(site[0], f"{site[1]}.{kind}", state, step=step)
    shown = state.index_select(0, order[0])  # the packing's rows -> the caller's
    edited = tap(site[0], f"{site[1]}.{kind}", shown, step=step)
    return state if edited is shown else edited.index_select(0, order[1])  # an edit, back into the packing's order
