"""minipt's fused ops: each one torch op (``torch.ops.minipt.<name>``) with a plain-torch
reference and a Triton kernel side by side in its module.

==============================  ============================  ==============================  ===========================
op                              reference (CPU, any device)   CUDA kernel                     backward
==============================  ============================  ==============================  ===========================
``attention``                   ``_attention``: scores        ``_attention_triton``: flash    ``minipt::attention_backward``
                                materialised, softmax         forward (online softmax,        (dK, dV and dQ kernels, from
                                                              saves log-sum-exp)              the log-sum-exp)
``bias_gelu``                   ``_bias_gelu``: F.gelu        ``_bias_gelu_triton``           ``minipt::bias_gelu_backward``
``layer_norm``                  ``_layer_norm``: F.layer_norm ``_layer_norm_triton``          ``minipt::layer_norm_backward``
``add_layer_norm``              ``_layer_norm``: LN(x + r)    ``_layer_norm_triton``          ``minipt::layer_norm_backward``
``lstm_gates``                  ``_lstm_gates``               ``_lstm_gates_triton``          ``minipt::lstm_gates_backward``
``gru_gates``                   ``_gru_gates``                ``_gru_gates_triton``           ``minipt::gru_gates_backward``
==============================  ============================  ==============================  ===========================

The recurrent layers' fast path (``lstm_layer``, ``gru_layer``, ``rnn_layer``: one input
projection, one time loop over the gate ops, a hand-written backward), the gate equations the
math cells share with it (``lstm_gates_reference``, ``gru_gates_reference``, ``rnn_nonlinearity``)
and torch's own recurrent kernel (``torch_rnn``) are in ``recurrent``. Every op is registered by
``_register.register_op``.

Every reference computes in ``torch.promote_types(dtype, torch.float32)`` and casts back, so it
is also the float64 ground truth. Each backward is itself an op split the same way. On CUDA,
float64 inputs run the reference (the kernels compute in float32).

On CUDA each op runs its Triton kernel, or torch's own kernels for the same computation where those
are measured faster for the shape (``cuda``: measured once per process and shape class).

Triton is imported only when a kernel first runs on CUDA (or, under ``TRITON_INTERPRET=1``,
when a test runs a launcher such as ``_attention.attention_triton`` on CPU tensors);
``import minipt.ops`` does not import it.
"""

from ._attention import attention
from ._bias_gelu import bias_gelu
from ._bias_gelu import takes_bias as gelu_takes_bias
from ._gru_gates import gru_gates
from ._layer_norm import add_layer_norm, layer_norm
from .cpu import cpu_report, detector_dtype, linear_kernel, linear_threads, native, warn_if_emulated
from .cuda import report as cuda_report
from ._lstm_gates import lstm_gates
from .recurrent import (
    gru_gates_reference, gru_layer, lstm_gates_reference, lstm_layer, rnn_layer, rnn_nonlinearity, torch_rnn,
)

__all__ = [
    "add_layer_norm", "attention", "bias_gelu", "cpu_report", "cuda_report", "gelu_takes_bias", "gru_gates", "gru_gates_reference", "gru_layer", "layer_norm",
    "detector_dtype", "linear_kernel", "linear_threads", "lstm_gates", "lstm_gates_reference", "lstm_layer", "native", "rnn_layer", "rnn_nonlinearity", "torch_rnn",
    "warn_if_emulated",
]
