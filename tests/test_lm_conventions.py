"""The calls users bring from transformers, the same on both language models (GPT-2 and the char LM).

- ``check_inputs(...)`` takes forward's arguments and raises the InputError forward would;
- ``Model.keymap(config=None)`` is the one public key map (the old module-level names are gone);
- ``generate(input_ids, *, max_new_tokens | max_length, ...)`` takes and returns ids on both,
  with the same keyword arguments and the same streamer protocol;
- ``generate`` is bounded before it starts (GPT-2 by its context, the char LM by ``max_generate_tokens``)
  and keeps each step's logits only when asked (``output_logits``).
"""

from __future__ import annotations

import gc
import inspect
import weakref

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


@pytest.mark.parametrize("module, name", [(char_lm, "KEYMAP"), (gpt2, "gpt2_keymap"), (char_lm, "sample")])
def test_the_old_names_are_gone(module, name):
    # KEYMAP / gpt2_keymap(): Model.keymap(); char_lm.sample(): minipt.nn.sampling.choose_next_token
    with pytest.raises(AttributeError):
        getattr(module, name)


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
    options = dict(max_length=8, do_sample=True, seed=0, eos_token_id=None)  # no row stops: 5 new tokens on both
    out = model.generate(prompt, **options, streamer=streamer, output_logits=True, return_dict_in_generate=True)
    assert out.sequences.shape == (2, 8) and torch.equal(out.sequences[:, :3], prompt) and len(out.logits) == 5
    put = list(streamer)
    assert torch.equal(put[0], prompt) and torch.equal(torch.stack(put[1:], dim=1), out.sequences[:, 3:])
    assert torch.equal(model.generate(prompt, **options), out.sequences)


def limit_of(model) -> str:
    return f"context of {model.config.n_positions} positions" if isinstance(model, gpt2.GPT2LMHeadModel) else f"max_generate_tokens = {model.max_generate_tokens}"


@pytest.mark.parametrize("cls", GENERATORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("length", [dict(max_new_tokens=10**9), dict(max_length=10**9)], ids=lambda d: next(iter(d)))
def test_a_huge_length_is_refused_before_any_step(cls, length):
    model, _, _ = tiny(cls)
    ran = []
    for module in model.modules():
        module.register_forward_pre_hook(lambda module, args: ran.append(module))
    with pytest.raises(InputError, match=limit_of(model)) as refused:
        model.generate(torch.tensor([[1, 2, 3]]), **length)
    assert str(next(iter(length.values()))) in str(refused.value) and ran == []


def test_the_char_lm_cap_is_exact_and_settable():
    model, _, _ = tiny(char_lm.CharLM)
    model.max_generate_tokens = 6
    prompt = torch.tensor([[1, 2, 3]])
    assert model.generate(prompt, max_new_tokens=6).shape == (1, 9) and model.generate(prompt, max_length=9).shape == (1, 9)
    with pytest.raises(InputError, match=r"max_new_tokens 7 is more than CharLM generates in one call: max_generate_tokens = 6"):
        model.generate(prompt, max_new_tokens=7)
    with pytest.raises(InputError, match=r"max_length 10 asks for 7 new bytes"):
        model.generate(prompt, max_length=10)
    assert char_lm.CharLM.max_generate_tokens == 65536  # the class's cap is untouched


def logits_head(model):
    return model.lm_head if isinstance(model, gpt2.GPT2LMHeadModel) else model.head


@pytest.mark.parametrize("cls", GENERATORS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("output_logits", [False, True])
def test_each_steps_logits_are_kept_only_when_asked(cls, output_logits):
    # Every logits tensor the head makes is watched: how many are still alive when the next one is made.
    model, _, _ = tiny(cls)
    made, alive = [], []

    def watch(module, args, logits):
        alive.append(sum(ref() is not None for ref in made))
        made.append(weakref.ref(logits))

    logits_head(model).register_forward_hook(watch)
    steps = 12  # GPT-2's tiny context is 16 positions
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=steps, eos_token_id=None, output_logits=output_logits, return_dict_in_generate=True)
    gc.collect()
    assert len(made) == steps and out.sequences.shape == (1, 3 + steps)
    if output_logits:
        assert alive == list(range(steps)) and all(ref() is not None for ref in made)  # every step's, held by the output
        assert len(out.logits) == steps and all(ref() is logits for ref, logits in zip(made, out.logits))
    else:
        assert max(alive) <= 1 and all(ref() is None for ref in made) and out.logits is None  # the last step's at most
