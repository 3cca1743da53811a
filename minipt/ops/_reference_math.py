"""tanh through torch's sigmoid, which the gate references no longer use (they call torch.tanh).

2 sigmoid(2x) - 1 is the same function, and on its own faster than torch.tanh on some CPUs and sizes,
but its error is absolute, about an ulp of 1, not relative: near 0, where tanh(x) is about x, it loses
the small values' digits. On torch's module_db inputs (tests/test_rnn_module_db.py) the LSTM's and
GRU's float32 weight gradients came out up to 19 times torch.nn's own error, past the promised 3 times
plus 4 ulps; with torch.tanh every case passes, and one LSTM layer (256 wide, batch 16, 20 steps,
one thread) trains and runs as fast as before. Kept only while tests/test_onednn.py imports it;
nothing in minipt calls it.
"""

import torch
from torch import Tensor


def tanh(x: Tensor) -> Tensor:
    """2 sigmoid(2x) - 1: tanh to an ulp of 1 (not of tanh(x)); see the module docstring."""
    return 2.0 * torch.sigmoid(2.0 * x) - 1.0
