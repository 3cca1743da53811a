"""tanh through torch's sigmoid, which the gate references no longer use (they call torch.tanh).

2 sigmoid(2x) - 1 is the same function, and 2-10x faster than torch.tanh on CPU at one recurrent step's
size, but its error is absolute, about an ulp of 1, not relative: near 0, where tanh(x) is about x, it
loses the small values' digits, and the LSTM's weight_hh and weight_hr gradients came out up to 57 times
torch.nn's own float32 error (torch's module_db inputs, tests/test_rnn_module_db.py), past the promised
3 times plus 4 ulps. Kept only while tests/test_onednn.py imports it; nothing in minipt calls it.
"""

import torch
from torch import Tensor


def tanh(x: Tensor) -> Tensor:
    """2 sigmoid(2x) - 1: tanh to an ulp of 1 (not of tanh(x)); see the module docstring."""
    return 2.0 * torch.sigmoid(2.0 * x) - 1.0
