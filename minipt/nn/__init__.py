"""minipt's hand-written building blocks."""

from .attention import MultiHeadAttention, attention_bias, scaled_dot_product_attention
from .backend import BACKENDS, get_backend, set_backend, use_backend
from .layers import GELU, LayerNorm, Linear, activation, linear_then_activation
from .rnn import GRU, LSTM, RNN

__all__ = [
    "BACKENDS",
    "GELU",
    "GRU",
    "LSTM",
    "LayerNorm",
    "Linear",
    "MultiHeadAttention",
    "RNN",
    "activation",
    "attention_bias",
    "get_backend",
    "linear_then_activation",
    "scaled_dot_product_attention",
    "set_backend",
    "use_backend",
]
