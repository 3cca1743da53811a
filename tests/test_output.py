"""minipt.nn.output.ModelOutput: one output dataclass read by attribute, name, position or as a tuple."""

import dataclasses

import pytest
import torch

from minipt.nn.output import ModelOutput


@dataclasses.dataclass
class Example(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor = dataclasses.field(kw_only=True)
    hidden_states: tuple | None = None


def test_fields_by_name_position_and_tuple_skip_the_unset():
    logits = torch.ones(2, 3)
    out = Example(logits=logits)
    assert out[0] is logits and out["logits"] is logits and out.to_tuple() == (logits,)
    assert list(out) == ["logits"] and len(out) == 1 and "loss" not in out
    with pytest.raises(KeyError, match="loss"):
        out["loss"]


def test_loss_comes_first_when_set():
    loss, logits = torch.tensor(1.0), torch.ones(2)
    out = Example(logits=logits, loss=loss)
    assert out[0] is loss and out[1] is logits and out[:2] == (loss, logits)
    assert out.keys() == ["loss", "logits"] and dict(out.items())["logits"] is logits


def test_export_sees_the_tensors_inside():
    torch.export.register_dataclass(Example)

    class Head(torch.nn.Module):
        def forward(self, x):
            return Example(logits=x * 2)

    program = torch.export.export(Head(), (torch.ones(2),))
    assert torch.equal(program.module()(torch.ones(2)).logits, torch.full((2,), 2.0))
