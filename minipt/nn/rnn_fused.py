"""The ``"fused"`` path of RNN, LSTM and GRU: the equations of ``rnn_cells`` rearranged for speed.

Per layer and direction it runs ``minipt.ops.lstm_layer``, ``gru_layer`` or ``rnn_layer``: the input
projection of every step in one matrix multiply, then one time loop with per step one matrix
multiply with W_hh (oneDNN's prepacked matmul on CPU) and the gate math of ``minipt.ops`` (the
ops' Triton kernels on CUDA, their references elsewhere, which the math cells call too), and with
gradients a hand-written backward through time. ``minipt.ops.recurrent`` describes it.

``tests/test_rnn.py::test_fused_path_equals_math_cells`` compares this path with the cells
(forward and every gradient), ``test_gradcheck_layer`` checks the hand-written backward in
float64, and ``test_matches_torch_nn`` compares it with torch.nn, with oneDNN on and off.
"""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

from .. import ops


def fused_layer(mode: str, x: Tensor, state: Tuple[Tensor, ...], weights: Tuple[Optional[Tensor], ...], mask: Optional[Tensor], reverse: bool):
    """The contract of ``rnn_cells.math_layer`` on the fused path: outputs (T, B, H_out) and the final state."""
    if mode == "LSTM":
        return ops.lstm_layer(x, state, weights, mask, reverse)
    if mode == "GRU":
        return ops.gru_layer(x, state, weights, mask, reverse)
    return ops.rnn_layer(x, state, weights, mask, reverse, nonlinearity="tanh" if mode == "RNN_TANH" else "relu")
