"""minipt's hand-written building blocks."""

from .attention import MultiHeadAttention, attention_bias, scaled_dot_product_attention
from .backend import BACKENDS, get_backend, set_backend, use_backend
from .conv import Conv2dSame, ConvBNAct, conv1x1, conv3x3, drop_path
from .dropout import Dropout, dropout
from .encoder import EncoderLayer
from .layers import GELU, LayerNorm, Linear, RMSNorm, activation, linear_then_activation
from .rnn import GRU, LSTM, RNN
from .sampling import GenerateOutput, apply_repetition_penalty, check_sampling, choose_next_token
from .streamer import TextIteratorStreamer, TextStreamer, TokenIteratorStreamer

__all__ = [
    "BACKENDS",
    "Conv2dSame",
    "ConvBNAct",
    "Dropout",
    "EncoderLayer",
    "GELU",
    "GenerateOutput",
    "GRU",
    "LSTM",
    "LayerNorm",
    "Linear",
    "MultiHeadAttention",
    "RMSNorm",
    "RNN",
    "TextIteratorStreamer",
    "TextStreamer",
    "TokenIteratorStreamer",
    "activation",
    "apply_repetition_penalty",
    "check_sampling",
    "choose_next_token",
    "attention_bias",
    "conv1x1",
    "conv3x3",
    "drop_path",
    "dropout",
    "get_backend",
    "linear_then_activation",
    "scaled_dot_product_attention",
    "set_backend",
    "use_backend",
]
