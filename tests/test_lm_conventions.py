"""The calls users bring from transformers, the same on both language models (GPT-2 and the char LM).

- ``check_inputs(...)`` takes forward's arguments and raises the InputError forward would;
- ``Model.keymap(config=None)`` is the one public key map (the old module-level names warn);
- ``generate(input_ids, *, max_new_tokens | max_length, ...)`` takes and returns ids on both,
  with the same keyword arguments and the same streamer protocol.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from minipt import registry
from minipt.checkpoint import model_keys, official_state_dict
from minipt.errors import InputError
from minipt.keymap import KeyMap
from minipt.models import char_lm, gpt2
from minipt.nn.streamer import TokenIteratorStreamer

FAMILIES = [f for f in registry.families() if f.module in (gpt2.__name__, char_lm.__name__)]
CLASSES = [cls for family in FAMILIES for cls in family.classes]
GENERATORS = [gpt2.GPT2LMHeadModel, char_lm.CharLM]


def tiny(cls):
    family = next(f for f in FAMILIES if cls in f.classes)
    args, kwargs = family.inputs(cls)
    return family.tiny_model(cls).eval(), args, kwargs


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_check_inputs_takes_forwards_arguments_and_refuses_what_forward_refuses(cls):
    model, args, kwargs = tiny(cls)
    assert model.check_inputs(*args, **kwargs) is None
    assert not hasattr(model, "check_ids") and not hasattr(model, "_check_inputs")
    bad = (args[0].float(), *args[1:])
    with pytest.raises(InputError) as checked:
        model.check_inputs(*bad, **kwargs)
    with pytest.raises(InputError) as ran:
        model(*bad, **kwargs)
    assert str(checked.value) == str(ran.value)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_keymap_is_a_classmethod_of_every_model(cls):
    model, _, _ = tiny(cls)
    keymap = cls.keymap()
    assert isinstance(keymap, KeyMap)
    assert official_state_dict(model, cls.keymap(model.config))  # every tensor has an official name
    for key in model_keys(model):  # a tied tensor counts once
        assert keymap.to_minipt(keymap.to_official(key)[0])[0] == key


@pytest.mark.parametrize("module", [gpt2, char_lm], ids=lambda m: m.__name__)
def test_no_module_level_key_map(module):
    public = [name for name, value in vars(module).items() if not name.startswith("_") and (isinstance(value, KeyMap) or name.endswith("keymap"))]
    assert public == []


def test_the_old_names_still_work_with_a_warning():
    with pytest.warns(DeprecationWarning, match=r"char_lm.KEYMAP is now CharLM.keymap\(\)"):
        assert char_lm.KEYMAP is char_lm.CharLM.keymap()
    with pytest.warns(DeprecationWarning, match=r"gpt2.gpt2_keymap\(\) is now GPT2Model.keymap\(\)"):
        assert gpt2.gpt2_keymap().rules == gpt2.GPT2Model.keymap().rules  # the stack's names, the prefix aside
    for module in (gpt2, char_lm):
        with pytest.raises(AttributeError):
            module.NO_SUCH_NAME


def test_both_generate_signatures_are_one():
    shared = ["max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty",
              "eos_token_id", "pad_token_id", "seed", "generator", "streamer", "output_logits", "return_dict_in_generate"]
    for cls in GENERATORS:
        parameters = inspect.signature(cls.generate).parameters
        assert list(parameters)[1] == "input_ids" and all(parameters[name].kind is inspect.Parameter.KEYWORD_ONLY for name in shared), cls
        assert not hasattr(cls, "generate_ids") and not hasattr(cls, "generate_stream")
    gpt2_names = list(inspect.signature(gpt2.GPT2LMHeadModel.generate).parameters)
    assert [n for n in gpt2_names if n != "attention_mask"] == list(inspect.signature(char_lm.CharLM.generate).parameters)  # padding: GPT-2 only


@pytest.mark.parametrize("cls", GENERATORS, ids=lambda c: c.__name__)
def test_generate_on_ids_with_a_streamer(cls):
    model, _, _ = tiny(cls)
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    streamer = TokenIteratorStreamer()
    out = model.generate(prompt, max_length=8, do_sample=True, seed=0, streamer=streamer, output_logits=True, return_dict_in_generate=True)
    assert out.sequences.shape == (2, 8) and torch.equal(out.sequences[:, :3], prompt) and len(out.logits) == 5
    put = list(streamer)
    assert torch.equal(put[0], prompt) and torch.equal(torch.stack(put[1:], dim=1), out.sequences[:, 3:])
    assert torch.equal(model.generate(prompt, max_length=8, do_sample=True, seed=0), out.sequences)
