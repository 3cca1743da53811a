"""The initialisation the Transformer families share (BERT's and GPT-2's, as in their reference code).

    model.apply(lambda module: init_normal_(module, config.initializer_range))

A model whose recipe adds to it (GPT-2 scales its residual projections) calls
this first and then changes what it adds.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import LayerNorm

__all__ = ["init_normal_"]


@torch.no_grad()
def init_normal_(module: nn.Module, std: float) -> None:
    """Initialise ``module``'s own parameters in place (not its children's: pass it to ``model.apply``).

    Linear and Embedding weights: N(0, std); Linear biases: 0; an Embedding's
    ``padding_idx`` row: 0; LayerNorm: weight 1, bias 0. Other modules are left as they are.
    """
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.normal_(0.0, std)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.zero_()
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        module.weight[module.padding_idx].zero_()
    if isinstance(module, LayerNorm):
        module.weight.fill_(1.0)
        module.bias.zero_()
