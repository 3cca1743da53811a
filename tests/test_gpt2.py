"""minipt's GPT-2 against transformers' GPT2LMHeadModel on the same random weights.

The reference configs are built with transformers' own GPT2Config and saved with
its save_pretrained, so the official key names, the Conv1D (in, out) layout and
the tied head go through minipt's key map on every run without downloads.

Tolerance: fp32, 1e-5 absolute on logits. minipt's default backend and
transformers' sdpa attention run the same torch kernels (linear, layer_norm,
gelu(tanh), scaled_dot_product_attention); the differences seen are a few 1e-7.
"""

from __future__ import annotations

import tempfile
import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minipt import ConfigError, InputError, KeyMismatchError
from minipt.models import model_class
from minipt.models.gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model, KVCache
from minipt.nn.sampling import DEFAULT_MAX_NEW_TOKENS, choose_next_token
from minipt.nn.streamer import TokenIteratorStreamer
from minipt.reference import import_transformers

transformers = import_transformers()
if transformers is None:
    raise RuntimeError("the GPT-2 tests need transformers: pip install -e '.[test]' -c .ci/constraints.txt")

ATOL = 1e-5
EOS = 7  # a stop token inside the tiny vocabularies


def hf_config(**overrides):
    values = dict(
        vocab_size=97, n_positions=96, n_embd=32, n_layer=2, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=EOS, eos_token_id=EOS,
    )
    values.update(overrides)
    return transformers.GPT2Config(**values)


def reference_model(config, seed=0):
    """transformers' GPT2LMHeadModel with every parameter random (LayerNorm too), eval mode, sdpa attention."""
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if ".ln_" in name and name.endswith("weight") else 0.0
            p.copy_(centre + 0.2 * torch.randn(p.shape, generator=generator))
    return model


def save_reference(reference, directory, prefix=True):
    """The LM's file (keys transformer.h.0...) or, without prefix, the bare stack's (h.0..., as the official hub files)."""
    (reference if prefix else reference.transformer).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    reference = reference_model(hf_config())
    directory = save_reference(reference, tmp_path_factory.mktemp("gpt2"))
    return reference, GPT2LMHeadModel.from_pretrained(directory), directory


def left_padded(vocab_size, lengths, seed=0):
    """A batch of prompts of the given lengths, left-padded with id 0 to the longest."""
    generator = torch.Generator().manual_seed(seed)
    T = max(lengths)
    input_ids = torch.randint(0, vocab_size, (len(lengths), T), generator=generator)
    attention_mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, length in enumerate(lengths):
        attention_mask[row, T - length :] = 1
        input_ids[row, : T - length] = 0
    return input_ids, attention_mask


def max_diff_on_tokens(a, b, attention_mask):
    keep = attention_mask.bool()
    return (a[keep] - b[keep]).abs().max().item()


# -- logits -------------------------------------------------------------------
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_layer=st.integers(1, 3),
    n_head=st.sampled_from([1, 2, 4]),
    head_dim=st.sampled_from([4, 8, 16]),
    vocab_size=st.integers(20, 300),
    n_inner=st.sampled_from([None, 24]),
    prefix=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_logits_match_reference(n_layer, n_head, head_dim, vocab_size, n_inner, prefix, seed):
    config = hf_config(n_layer=n_layer, n_head=n_head, n_embd=n_head * head_dim, vocab_size=vocab_size, n_inner=n_inner)
    reference = reference_model(config, seed)
    with tempfile.TemporaryDirectory() as directory:
        model = GPT2LMHeadModel.from_pretrained(save_reference(reference, directory, prefix))
    input_ids, attention_mask = left_padded(vocab_size, [9, 4, 1], seed)
    with torch.no_grad():
        expected = reference(input_ids, attention_mask=attention_mask, position_ids=(attention_mask.cumsum(-1) - 1).clamp(min=0)).logits
        logits = model(input_ids, attention_mask).logits
        plain = model(input_ids[:1]).logits
    assert max_diff_on_tokens(logits, expected, attention_mask) <= ATOL
    assert (plain - reference(input_ids[:1]).logits).abs().max().item() <= ATOL


def test_bare_stack_matches_reference(pair):
    reference, _, directory = pair
    model = GPT2Model.from_pretrained(directory)  # the LM's file, transformer. prefix and all
    input_ids, attention_mask = left_padded(97, [12, 5])
    with torch.no_grad():
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        expected = reference.transformer(input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state
        hidden = model(input_ids, attention_mask).last_hidden_state
    assert max_diff_on_tokens(hidden, expected, attention_mask) <= ATOL


def test_math_backend_matches_reference(pair):
    reference, model, _ = pair
    input_ids, _ = left_padded(97, [10])
    model.set_backend("math")
    try:
        with torch.no_grad():
            logits = model(input_ids).logits
    finally:
        model.set_backend(None)
    assert (logits - reference(input_ids).logits).abs().max().item() <= 1e-4  # written-out ops round differently


def test_left_padding_does_not_change_a_row(pair):
    _, model, _ = pair
    input_ids, attention_mask = left_padded(97, [11, 6])
    with torch.no_grad():
        batched = model(input_ids, attention_mask).logits[1, -6:]
        alone = model(input_ids[1:, -6:]).logits[0]
    assert (batched - alone).abs().max().item() <= ATOL


# -- the cache ------------------------------------------------------------------
@pytest.mark.parametrize("lengths", [[10], [10, 7, 3]])
def test_incremental_decoding_equals_full_recomputation(pair, lengths):
    _, model, _ = pair
    input_ids, attention_mask = left_padded(97, lengths, seed=3)
    T, prefill = input_ids.shape[1], 4
    with torch.no_grad():
        full = model(input_ids, attention_mask).logits
        out = model(input_ids[:, :prefill], attention_mask[:, :prefill], use_cache=True)
        steps = [out.logits]
        cache = out.past_key_values
        assert isinstance(cache, KVCache) and cache.length == prefill
        for t in range(prefill, T):
            out = model(input_ids[:, t : t + 1], attention_mask[:, : t + 1], past_key_values=cache)
            steps.append(out.logits)
    assert cache.length == T
    assert max_diff_on_tokens(torch.cat(steps, dim=1), full, attention_mask) <= ATOL


# -- generation -------------------------------------------------------------------
def test_greedy_generation_matches_reference_single(pair):
    reference, model, _ = pair
    prompt = torch.tensor([[5, 11, 42, 3, 17]])
    expected = reference.generate(prompt, max_new_tokens=40, do_sample=False, eos_token_id=None, pad_token_id=EOS)
    produced = model.generate(prompt, max_new_tokens=40, eos_token_id=None)  # None: no stop, on both
    assert produced.shape == (1, 45)
    assert torch.equal(produced, expected)


def test_greedy_generation_matches_reference_left_padded_batch(pair):
    reference, model, _ = pair
    input_ids, attention_mask = left_padded(97, [9, 5, 2, 7], seed=1)
    expected = reference.generate(input_ids, attention_mask=attention_mask, max_new_tokens=36, do_sample=False, eos_token_id=None, pad_token_id=EOS)
    produced = model.generate(input_ids, max_new_tokens=36, attention_mask=attention_mask, eos_token_id=None)
    assert torch.equal(produced, expected)


def test_greedy_generation_stops_each_row_at_eos_like_reference(pair):
    reference, model, _ = pair
    input_ids, attention_mask = left_padded(97, [6, 3, 5, 4, 6, 2], seed=2)
    free = model.generate(input_ids, max_new_tokens=30, attention_mask=attention_mask, eos_token_id=None)[:, 6:]
    # the stop token: one that rows first produce at different steps, so they finish at different times
    first_step = lambda token: [(row == token).nonzero()[0].item() if (row == token).any() else None for row in free]  # noqa: E731
    eos = next(t for t in free.flatten().tolist() if len({s for s in first_step(t) if s is not None}) >= 2)
    expected = reference.generate(input_ids, attention_mask=attention_mask, max_new_tokens=30, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    produced = model.generate(input_ids, max_new_tokens=30, attention_mask=attention_mask, eos_token_id=eos)
    assert torch.equal(produced, expected)
    for row, step in zip(produced[:, 6:], first_step(eos)):
        if step is not None:  # everything after the row's first eos is padding
            assert (row[step:] == eos).all()


def test_generation_config_json_sets_generates_defaults_as_in_transformers(pair, tmp_path):
    """generate read its defaults from config.json only: a generation_config.json stopping at another token (or
    setting a length) stopped elsewhere than transformers' generate on the same folder."""
    import json
    import shutil
    import warnings

    reference, model, directory = pair
    folder = shutil.copytree(directory, tmp_path / "gpt2")
    input_ids, attention_mask = left_padded(97, [6, 3], seed=2)
    free = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=12, eos_token_id=None)[:, 6:]
    eos = free[0, 3].item()  # a token the first row produces
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos], "max_new_tokens": 12, "bos_token_id": 0}))
    theirs = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every option in the file is one generate takes
        ours = GPT2LMHeadModel.from_pretrained(folder)
    expected = theirs.generate(input_ids, attention_mask=attention_mask, pad_token_id=eos)
    assert torch.equal(ours.generate(input_ids, attention_mask=attention_mask), expected)
    assert ours.generate(input_ids, attention_mask=attention_mask, max_length=8).shape[1] == 8  # a call's length replaces the file's
    saved = ours.save_pretrained(tmp_path / "again")
    assert json.loads((saved / "generation_config.json").read_text())["eos_token_id"] == [eos]
    (folder / "generation_config.json").write_text(json.dumps({"max_new_tokens": 3, "max_length": 30, "temperature": None}))
    assert GPT2LMHeadModel.from_pretrained(folder).generate(input_ids).shape[1] == 6 + 3  # its max_new_tokens wins; null is unset
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, 1]}))
    with pytest.warns(UserWarning, match=r"lists several stop ids .*stops on the first"):
        assert GPT2LMHeadModel.from_pretrained(folder).generate(input_ids[:1], max_new_tokens=12)[0, -1].item() == eos
    (folder / "generation_config.json").write_text(json.dumps({"no_repeat_ngram_size": 3}))
    with pytest.warns(UserWarning, match=r"generation_config.json sets no_repeat_ngram_size, which GPT2LMHeadModel.generate does not take"):
        GPT2LMHeadModel.from_pretrained(folder)


@pytest.mark.parametrize("penalty", [1.3, 0.8])
def test_greedy_generation_with_a_repetition_penalty_matches_reference(pair, penalty):
    reference, model, _ = pair
    input_ids, attention_mask = left_padded(97, [7, 4, 2], seed=3)
    expected = reference.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=24, do_sample=False, repetition_penalty=penalty, eos_token_id=None, pad_token_id=EOS
    )
    produced = model.generate(input_ids, max_new_tokens=24, attention_mask=attention_mask, repetition_penalty=penalty, eos_token_id=None)
    assert torch.equal(produced, expected)
    assert not torch.equal(produced, model.generate(input_ids, max_new_tokens=24, attention_mask=attention_mask, eos_token_id=None))  # the penalty changed something


def test_a_streamer_sees_what_transformers_generate_puts(pair):
    reference, model, _ = pair
    input_ids, attention_mask = left_padded(97, [6, 3])
    ours, theirs = TokenIteratorStreamer(), TokenIteratorStreamer()
    produced = model.generate(input_ids, max_new_tokens=12, attention_mask=attention_mask, eos_token_id=None, streamer=ours)
    reference.generate(input_ids, attention_mask=attention_mask, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=EOS, streamer=theirs)
    ours, theirs = list(ours), list(theirs)
    # the prompt (B, T) once, then each step's new tokens (B,): the protocol of transformers' streamers
    assert len(ours) == len(theirs) == 13 and all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert torch.equal(torch.cat([ours[0], torch.stack(ours[1:], dim=1)], dim=1), produced)


def test_a_streamer_read_while_generate_runs_in_another_thread(pair):
    _, model, _ = pair
    input_ids, attention_mask = left_padded(97, [6, 3])
    streamer = TokenIteratorStreamer(skip_prompt=True)
    run = threading.Thread(target=model.generate, args=(input_ids,), kwargs=dict(max_new_tokens=12, attention_mask=attention_mask, streamer=streamer))
    run.start()
    streamed = torch.stack(list(streamer), dim=1)  # ends when generate calls streamer.end()
    run.join()
    assert torch.equal(streamed, model.generate(input_ids, max_new_tokens=12, attention_mask=attention_mask)[:, 6:])


def test_max_length_counts_the_prompt_as_in_transformers(pair):
    reference, model, _ = pair
    prompt = torch.tensor([[5, 11, 42, 3, 17]])
    expected = reference.generate(prompt, max_length=25, do_sample=False, eos_token_id=None, pad_token_id=EOS)
    assert expected.shape == (1, 25) and torch.equal(model.generate(prompt, max_length=25, eos_token_id=None), expected)
    assert model.generate(prompt, eos_token_id=None).shape == (1, 5 + DEFAULT_MAX_NEW_TOKENS)


def test_generated_sequences_and_logits_match_transformers_output(pair):
    reference, model, _ = pair
    input_ids, attention_mask = left_padded(97, [7, 4, 2], seed=4)
    options = dict(attention_mask=attention_mask, max_new_tokens=10, output_logits=True, return_dict_in_generate=True)
    theirs = reference.generate(input_ids, do_sample=False, eos_token_id=None, pad_token_id=EOS, **options)
    ours = model.generate(input_ids, eos_token_id=None, **options)
    assert torch.equal(ours.sequences, theirs.sequences) and ours[0] is ours.sequences
    assert len(ours.logits) == len(theirs.logits) == 10
    for step, (a, b) in enumerate(zip(ours.logits, theirs.logits)):
        assert (a - b).abs().max().item() <= ATOL, step


def test_sampling_is_reproducible_under_a_seeded_generator(pair):
    _, model, _ = pair
    prompt = torch.tensor([[5, 11, 42], [1, 2, 3]])
    sample = lambda seed, **kw: model.generate(prompt, max_new_tokens=32, do_sample=True, generator=torch.Generator().manual_seed(seed), **kw)  # noqa: E731
    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))
    assert torch.equal(sample(1, top_k=20, top_p=0.9, temperature=0.7), sample(1, top_k=20, top_p=0.9, temperature=0.7))


def test_sampling_with_a_single_candidate_is_greedy(pair):
    _, model, _ = pair
    prompt = torch.tensor([[5, 11, 42]])
    greedy = model.generate(prompt, max_new_tokens=20)
    assert torch.equal(model.generate(prompt, max_new_tokens=20, do_sample=True, top_k=1, generator=torch.Generator().manual_seed(0)), greedy)
    assert torch.equal(model.generate(prompt, max_new_tokens=20, do_sample=True, top_p=1e-6, generator=torch.Generator().manual_seed(0)), greedy)


def test_top_k_and_top_p_keep_only_their_candidates():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).log_softmax(-1).repeat(2000, 1)
    drawn = choose_next_token(logits, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {0, 1}
    probs = logits[0].softmax(-1)  # 0.64, 0.24, 0.09, ...: the first two reach 0.85
    drawn = choose_next_token(logits, top_p=float(probs[:2].sum()) - 0.01, generator=torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {0, 1}


# -- outputs ------------------------------------------------------------------------
def test_outputs_read_by_name_position_and_tuple_as_transformers(pair):
    reference, model, _ = pair
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for kwargs in ({}, {"labels": ids}):  # out[0]: the logits, then the loss
            ours, theirs = model(ids, **kwargs), reference(ids, use_cache=False, **kwargs)
            assert ours.keys() == list(theirs.keys()) == (["loss", "logits"] if kwargs else ["logits"])
            assert len(ours.to_tuple()) == len(theirs.to_tuple())
            for a, b in zip(ours.to_tuple(), theirs.to_tuple()):
                assert (a - b).abs().max().item() <= ATOL
            assert (ours[0] - theirs[0]).abs().max().item() <= ATOL and ours["logits"] is ours.logits
        stack, their_stack = model.transformer(ids), reference.transformer(ids, use_cache=False)
        assert stack.keys() == list(their_stack.keys()) == ["last_hidden_state"]
        assert (stack[0] - their_stack[0]).abs().max().item() <= ATOL
        # with a cache it comes second; recent transformers call that field "cache", minipt keeps forward's name
        cached, their_cached = model(ids, use_cache=True), reference(ids, use_cache=True)
        assert len(cached) == len(their_cached) == 2 and cached.keys() == ["logits", "past_key_values"]
        assert isinstance(cached[1], KVCache) and cached[1] is cached.past_key_values


# -- loading and saving -------------------------------------------------------------
@pytest.mark.parametrize("cls", [GPT2LMHeadModel, GPT2Model])
def test_save_pretrained_loads_into_transformers_strictly(tmp_path, cls):
    config = GPT2Config(vocab_size=50, n_positions=32, n_embd=24, n_layer=2, n_head=3, bos_token_id=EOS, eos_token_id=EOS)
    torch.manual_seed(0)
    model = cls(config).eval()
    model.save_pretrained(tmp_path)
    reference_cls = getattr(transformers, cls.__name__)
    reference, info = reference_cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.get(kind) for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    input_ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        ours, theirs = model(input_ids), reference.eval()(input_ids)
    name = "logits" if cls is GPT2LMHeadModel else "last_hidden_state"
    assert (getattr(ours, name) - getattr(theirs, name)).abs().max().item() <= ATOL
    # and back into minipt, through the same key map
    again = cls.from_pretrained(tmp_path)
    assert getattr(again(input_ids), name).equal(getattr(ours, name))


def test_untied_head_round_trips(tmp_path):
    reference = reference_model(hf_config(tie_word_embeddings=False))
    model = GPT2LMHeadModel.from_pretrained(save_reference(reference, tmp_path / "ref"))
    assert model.lm_head.weight.data_ptr() != model.transformer.token.weight.data_ptr()
    model.save_pretrained(tmp_path / "ours")
    again, info = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert torch.equal(again.lm_head.weight, reference.lm_head.weight)


def test_old_file_with_attention_mask_buffers_loads(tmp_path, pair):
    # the original GPT-2 pytorch_model.bin: no prefix, and causal-mask buffers in every layer
    reference, model, _ = pair
    state = {k.removeprefix("transformer."): v for k, v in reference.state_dict().items() if k != "lm_head.weight"}
    n = reference.config.n_positions
    for i in range(reference.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(n, n, dtype=torch.uint8)).view(1, 1, n, n)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    reference.config.save_pretrained(tmp_path)
    torch.save(state, tmp_path / "pytorch_model.bin")
    old = GPT2LMHeadModel.from_pretrained(tmp_path)
    input_ids = torch.randint(0, 97, (2, 8))
    with torch.no_grad():
        assert torch.equal(old(input_ids).logits, model(input_ids).logits)


def test_conv1d_weights_are_transposed(pair):
    reference, model, _ = pair
    conv = reference.transformer.h[0].attn.c_attn.weight  # (in, 3 * out)
    assert conv.shape == (32, 96)
    assert torch.equal(model.transformer.layers[0].attn.qkv_proj.weight, conv.t())


def test_missing_and_misshaped_tensors_are_named(tmp_path, pair):
    from safetensors.torch import load_file, save_file

    _, _, directory = pair
    state = load_file(directory / "model.safetensors")
    del state["transformer.h.1.mlp.c_fc.weight"]
    state["transformer.h.0.attn.c_proj.weight"] = state["transformer.h.0.attn.c_proj.weight"][:, :8].contiguous()
    (tmp_path / "config.json").write_text((directory / "config.json").read_text())
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(KeyMismatchError, match=r"(?s)h\.1\.mlp\.c_fc\.weight.*h\.0\.attn\.c_proj\.weight"):
        GPT2LMHeadModel.from_pretrained(tmp_path)


def test_keymap_is_a_classmethod_with_an_optional_config():
    tied, untied = GPT2LMHeadModel.keymap(), GPT2LMHeadModel.keymap(GPT2Config(tie_word_embeddings=False))
    to_minipt = lambda keymap, key: keymap.to_minipt(keymap.canonical(key))  # noqa: E731  (as loading reads a file's key)
    assert to_minipt(tied, "h.0.attn.c_attn.weight")[0] == "transformer.layers.0.attn.qkv_proj.weight"  # the hub files' bare names
    assert tied.is_ignored("lm_head.weight") and not untied.is_ignored("lm_head.weight")  # tied to wte
    assert to_minipt(untied, "lm_head.weight")[0] == "lm_head.weight"
    assert to_minipt(GPT2Model.keymap(), "transformer.ln_f.bias")[0] == "final_norm.bias"


def test_config_round_trip_and_registry(pair):
    _, model, directory = pair
    config = GPT2Config.from_dict(model.config.to_dict())
    assert config == model.config and config.n_inner == 4 * config.n_embd
    assert model_class({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}) is GPT2LMHeadModel
    assert model_class({"model_type": "gpt2"}) is GPT2Model
    with pytest.raises(ConfigError, match="n_head"):
        GPT2Config(n_embd=30, n_head=4)
    with pytest.raises(ConfigError, match="cross-attention"):
        GPT2Config.from_dict({"model_type": "gpt2", "add_cross_attention": True})
    with pytest.raises(ConfigError, match="activation_function"):
        GPT2Config(activation_function="gelu_fast_but_wrong")


def test_a_config_transformers_saves_with_special_ids_past_the_vocabulary_loads(tmp_path):
    # GPT2Config(vocab_size=small) keeps bos/eos 50256: they never enter the forward pass, so the file loads;
    # generate never produces them, so by default no row stops (as in transformers), and asking for one is refused.
    reference = reference_model(hf_config(vocab_size=40, bos_token_id=50256, eos_token_id=50256, pad_token_id=50256))
    model = GPT2LMHeadModel.from_pretrained(save_reference(reference, tmp_path))
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (50256, 50256, 50256)
    input_ids, attention_mask = left_padded(40, [6, 3], seed=5)
    with torch.no_grad():
        assert (model(input_ids[:1]).logits - reference(input_ids[:1]).logits).abs().max().item() <= ATOL
    expected = reference.generate(input_ids, attention_mask=attention_mask, max_new_tokens=20, do_sample=False)  # its generation_config's ids
    produced = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=20)
    assert produced.shape == (2, 26) and torch.equal(produced, expected)
    eos = produced[0, 6].item()  # the first row's first new token: with it as the stop, the row is padded from there
    stopped = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=20, eos_token_id=eos)
    assert (stopped[0, 6:] == eos).all()  # with eos: the config's pad_token_id 50256 is past the vocabulary
    with pytest.raises(InputError, match=r"eos_token_id must be a token id in \[0, 39\].*50256"):
        model.generate(input_ids, attention_mask=attention_mask, eos_token_id=model.config.eos_token_id)
    model.save_pretrained(tmp_path / "again")  # and written back as read
    assert GPT2Config.from_dict(transformers.GPT2Config.from_pretrained(tmp_path / "again").to_dict()) == model.config


def test_the_default_stop_is_the_configs_eos_as_in_transformers(pair):
    import copy

    reference, model, _ = pair
    input_ids, attention_mask = left_padded(97, [6, 3, 5], seed=2)
    free = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=30, eos_token_id=None)[:, 6:]
    eos = free[0, 4].item()  # a token the first row produces: with it as the config's eos, that row stops by step 4
    reference, model = copy.deepcopy(reference), copy.deepcopy(model)
    reference.generation_config.eos_token_id = reference.config.eos_token_id = model.config.eos_token_id = eos
    model.generation_config = {**model.generation_config, "eos_token_id": eos}  # the folder's generation_config.json, as read
    expected = reference.generate(input_ids, attention_mask=attention_mask, max_new_tokens=30, do_sample=False, pad_token_id=eos)
    produced = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=30)
    assert torch.equal(produced, expected)
    stop = (free[0] == eos).nonzero()[0].item()
    assert stop <= 4 and (produced[0, 6 + stop :] == eos).all()  # the first row stopped (padded with eos, the config has no pad)
    assert torch.equal(model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=30, eos_token_id=None)[:, 6:], free)  # None: no stop


def test_inverse_layer_scaling_matches_reference(tmp_path):
    reference = reference_model(hf_config(scale_attn_by_inverse_layer_idx=True, n_layer=3))
    model = GPT2LMHeadModel.from_pretrained(save_reference(reference, tmp_path))
    input_ids = torch.randint(0, 97, (2, 10))
    with torch.no_grad():
        assert (model(input_ids).logits - reference(input_ids).logits).abs().max().item() <= ATOL


# -- bad input -----------------------------------------------------------------------
def test_prompt_longer_than_the_context(pair):
    _, model, _ = pair
    too_long = torch.zeros(1, 97, dtype=torch.long)  # n_positions is 96
    with pytest.raises(InputError, match="97 tokens, more than the context of 96"):
        model.generate(too_long, max_new_tokens=1)
    with pytest.raises(InputError, match="exceed the context of 96"):
        model(too_long)


def test_max_new_tokens_past_the_context(pair):
    _, model, _ = pair
    with pytest.raises(InputError, match="at most 6 new tokens fit"):
        model.generate(torch.zeros(1, 90, dtype=torch.long), max_new_tokens=7)
    with pytest.raises(InputError, match="max_new_tokens must be a positive integer"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), max_new_tokens=0)


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_must_be_positive(pair, temperature):
    _, model, _ = pair
    with pytest.raises(InputError, match="temperature must be > 0"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2, do_sample=True, temperature=temperature)


@pytest.mark.parametrize("top_p", [0.0, 1.5, -0.1])
def test_top_p_outside_the_unit_interval(pair, top_p):
    _, model, _ = pair
    with pytest.raises(InputError, match=r"top_p must be in \(0, 1\]"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2, do_sample=True, top_p=top_p)


def test_top_k_below_zero(pair):
    _, model, _ = pair
    with pytest.raises(InputError, match="top_k must be a non-negative integer"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2, do_sample=True, top_k=-1)


def test_sampling_by_default_as_transformers_samples(pair):
    """transformers samples among the 50 most likely tokens unless told otherwise; minipt sampled from the whole
    vocabulary, so the same seed drew other tokens. Same generator state, same tokens."""
    reference, model, _ = pair
    prompt = torch.tensor([[5, 11, 42], [1, 2, 3]])
    torch.manual_seed(4)
    expected = reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12, do_sample=True, temperature=3.0,
                                  eos_token_id=None, pad_token_id=0)
    torch.manual_seed(4)
    assert torch.equal(model.generate(prompt, max_new_tokens=12, do_sample=True, temperature=3.0, eos_token_id=None), expected)


def test_beam_search_and_other_unknown_arguments_are_named(pair):
    """GPT-2's generate has no num_beams: Python's bare TypeError came out of the argument binding."""
    _, model, _ = pair
    with pytest.raises(InputError, match=r"GPT2LMHeadModel.generate: got an unexpected keyword argument 'num_beams' \(beam search is T5's"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), num_beams=2)
    with pytest.raises(InputError, match="GPT2LMHeadModel.generate: .*'max_tokens'"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), max_tokens=2)


def test_an_empty_batch_is_as_long_as_any_row_could_be(pair):
    _, model, _ = pair
    assert model.generate(torch.zeros(0, 5, dtype=torch.long), max_new_tokens=3).shape == (0, 8)


def test_cache_of_another_batch_size_or_length(pair):
    _, model, _ = pair
    ids = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(InputError, match="batch size 3"):
        model(ids, past_key_values=model.allocate_cache(3, 16))
    short = model.allocate_cache(2, 6)
    model(ids, past_key_values=short)
    with pytest.raises(InputError, match="holds 6 positions: 4 cached \\+ 4 new"):
        model(ids, past_key_values=short)
    other = KVCache(GPT2Config(n_embd=32, n_head=2, n_layer=2, n_positions=96), 2, 8)
    with pytest.raises(InputError, match="heads, head_dim"):
        model(ids, past_key_values=other)
    with pytest.raises(InputError, match="longer than the context"):
        model.allocate_cache(1, 200)
    filled = model.allocate_cache(2, 8)
    model(ids, past_key_values=filled)
    with pytest.raises(InputError, match=r"must cover the cached and the new tokens, shape \(2, 5\)"):
        model(ids[:, :1], torch.ones(2, 1, dtype=torch.long), past_key_values=filled)


@pytest.mark.parametrize("bad", [97, -1, 1000])
def test_ids_outside_the_vocabulary(pair, bad):
    _, model, _ = pair
    ids = torch.tensor([[1, 2, bad]])
    with pytest.raises(InputError, match=f"input_ids holds {bad}, outside the table of 97"):
        model(ids)
    with pytest.raises(InputError, match=f"input_ids holds {bad}"):
        model.generate(ids, max_new_tokens=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_new_tokens=3, max_length=9), "not both: max_length counts the prompt"),
        (dict(max_length=3), "max_length counts the prompt: it must be an integer above the prompt's 3 tokens"),
        (dict(max_length=200), r"max_length 200 exceed the context of 96 positions; at most 93 new tokens fit"),
        (dict(streamer=print), "streamer must have put"),
        (dict(seed=1, generator=torch.Generator()), "seed or generator, not both"),
        (dict(seed="1"), "seed must be an integer"),
        (dict(do_sample="yes"), "do_sample must be True or False"),
        (dict(eos_token_id=97), r"eos_token_id must be a token id in \[0, 96\]"),
        (dict(pad_token_id=-1), "pad_token_id must be a token id"),
        (dict(output_logits=1), "output_logits must be True or False"),
        (dict(attention_mask=torch.ones(1, 2)), r"attention_mask has shape \(1, 2\)"),
    ],
)
def test_bad_generation_arguments_are_named(pair, kwargs, message):
    _, model, _ = pair
    with pytest.raises(InputError, match=message):
        model.generate(torch.zeros(1, 3, dtype=torch.long), **kwargs)


def test_check_inputs_names_the_bad_argument(pair):
    _, model, _ = pair
    ids = torch.zeros(2, 4, dtype=torch.long)
    model.check_inputs(ids, torch.ones(2, 4), labels=ids)
    with pytest.raises(InputError, match="input_ids must be integer token ids"):
        model.check_inputs([[1, 2]])
    with pytest.raises(InputError, match="past_key_values must be a minipt KVCache"):
        model.check_inputs(ids, past_key_values=((torch.zeros(1),),))
    with pytest.raises(InputError, match=r"attention_mask must cover .* shape \(2, 4\); got list"):
        model.check_inputs(ids, attention_mask=[[1]])
    with pytest.raises(InputError, match=r"labels must be integer ids shaped as input_ids \(2, 4\)"):
        model(ids, labels=ids[:, :3])
    with pytest.raises(InputError, match=r"labels must be integer ids .* got torch.bool"):
        model(ids, labels=ids.bool())
    for bad in (-5, model.config.vocab_size):  # an IndexError inside cross_entropy before
        with pytest.raises(InputError, match=rf"labels holds {bad}, not a token id in \[0, {model.config.vocab_size - 1}\] nor -100"):
            model(ids, labels=torch.full_like(ids, bad))
    with pytest.raises(InputError, match="position_ids must have shape"):
        model.transformer.check_inputs(ids, position_ids=torch.zeros(4, dtype=torch.long))


def test_right_padded_prompts_are_refused(pair):
    _, model, _ = pair
    ids = torch.tensor([[1, 2, 3], [4, 5, 0]])
    with pytest.raises(InputError, match="left-padded"):
        model.generate(ids, max_new_tokens=2, attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]))


# -- the command line -------------------------------------------------------------------
def test_cli_generate_streams_the_greedy_continuation(tmp_path, capsys):
    import shutil

    from test_gpt2_tokenizer import tiny_tiktoken

    from minipt import Tokenizer
    from minipt.cli import main
    from minipt.tokenizer import ENDOFTEXT, build_bpe_files, read_tiktoken

    build_bpe_files(read_tiktoken(tiny_tiktoken([b"he", b"ll", b"hell", b"hello", b" w", b" wo", b"or"])), {ENDOFTEXT: 263}, tmp_path)
    reference = reference_model(hf_config(vocab_size=264, eos_token_id=263, bos_token_id=263))
    save_reference(reference, tmp_path)
    assert main(["generate", "--model", str(tmp_path), "hello world", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    tokenizer = Tokenizer.from_pretrained(tmp_path)
    prompt = tokenizer("hello world", padding=False)["input_ids"]
    expected = reference.generate(prompt, max_new_tokens=12, do_sample=False, eos_token_id=263, pad_token_id=263)[0, prompt.shape[1] :]
    expected = expected[expected != 263]
    assert out == "hello world" + tokenizer.decode(expected) + "\n"
    # --max-length counts the prompt; --repetition-penalty as transformers' repetition_penalty
    assert main(["generate", "--model", str(tmp_path), "hello world", "--max-length", str(prompt.shape[1] + 9), "--repetition-penalty", "1.4"]) == 0
    expected = reference.generate(prompt, max_length=prompt.shape[1] + 9, repetition_penalty=1.4, do_sample=False, eos_token_id=263, pad_token_id=263)
    expected = expected[0, prompt.shape[1] :]
    assert capsys.readouterr().out == "hello world" + tokenizer.decode(expected[expected != 263]) + "\n"
    assert main(["generate", "--model", str(tmp_path), "hello", "--top-p", "1.5"]) == 1
    assert "top_p must be in (0, 1]" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path), "hello", "--max-length", "9", "--max-new-tokens", "3"]) == 1
    assert "not both" in capsys.readouterr().err


# -- fuse(): the inference copy on packed oneDNN matmuls --------------------------------
def test_fused_products_in_blocks_decode_as_the_model(monkeypatch):
    """Every product of the fused copy in blocks of outputs on two threads (as a CPU may choose for a few rows): the
    same greedy tokens, at batch 1 and on a left-padded batch."""
    from minipt.ops import onednn

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)).eval()
    monkeypatch.setenv("MINIPT_LINEAR", "blocks")
    fused = model.fuse()
    blocked = []
    in_blocks = onednn.linear_in_blocks
    monkeypatch.setattr(onednn, "linear_in_blocks", lambda *args: blocked.append(args[-1]) or in_blocks(*args))
    ids = torch.randint(1, 300, (2, 9))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9])
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert torch.equal(fused.generate(ids[1:], max_new_tokens=12), model.generate(ids[1:], max_new_tokens=12))
        assert torch.equal(fused.generate(ids, attention_mask=mask, max_new_tokens=12), model.generate(ids, attention_mask=mask, max_new_tokens=12))
    finally:
        torch.set_num_threads(threads)
    assert blocked and set(blocked) == {2}


def test_fused_model_computes_the_same_function(tmp_path):
    import copy

    from helpers import assert_error_ratio, assert_inference_only

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)).eval()
    fused = model.fuse()
    ids = torch.randint(0, 300, (2, 9))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1, 1], [1] * 9])
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(ids, mask).logits
        assert_error_ratio(fused(ids, mask).logits, model(ids, mask).logits, exact, what="fused logits")
        assert torch.equal(fused.generate(ids[1:], max_new_tokens=12), model.generate(ids[1:], max_new_tokens=12))
        bf16 = model.fuse(torch.bfloat16)(ids, mask).logits.float()
        assert torch.nn.functional.cosine_similarity(bf16.flatten(1), exact.float().flatten(1)).min() > 0.99
    assert_inference_only(model, fused, tmp_path)


def test_a_list_of_stop_ids_reads_as_its_first_and_warns_when_others_are_lost():
    """transformers allows several stop ids; minipt's generation stops on one: a list of one id is that id, silently,
    and a list of several different ids warns that the others are not stop ids here."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert GPT2Config.from_dict({"model_type": "gpt2", "vocab_size": 40, "eos_token_id": [7]}).eos_token_id == 7
        assert GPT2Config.from_dict({"model_type": "gpt2", "vocab_size": 40, "eos_token_id": []}).eos_token_id is None
    with pytest.warns(UserWarning, match=r"several stop ids \(eos_token_id = \[7, 9\]\); minipt's generation stops on the first, 7, only"):
        assert GPT2Config.from_dict({"model_type": "gpt2", "vocab_size": 40, "eos_token_id": [7, 9]}).eos_token_id == 7


def test_without_a_mask_the_padding_is_read_off_a_pad_id_as_transformers_does(pair):
    """transformers builds the mask from input_ids != pad_token_id when the pad id is not eos; so does minipt."""
    reference, model, _ = pair
    input_ids, attention_mask = left_padded(97, [6, 3, 5], seed=4)
    pad = 11
    input_ids = input_ids.masked_fill(attention_mask == 0, pad)
    assert not bool((input_ids[attention_mask == 1] == pad).any())  # the pad id stands only on the padding
    expected = reference.generate(input_ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=pad)
    assert torch.equal(model.generate(input_ids, max_new_tokens=12, eos_token_id=None, pad_token_id=pad), expected)
    assert torch.equal(model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=12, eos_token_id=None), expected)


def test_a_float_padding_mask_is_a_padding_mask(pair):
    """A (B, T) mask of 0.0/1.0 means what 0/1 means (as in transformers), in forward and generate; other values are refused."""
    _, model, _ = pair
    input_ids, attention_mask = left_padded(97, [6, 3], seed=5)
    with torch.no_grad():
        assert torch.equal(model(input_ids, attention_mask.float()).logits, model(input_ids, attention_mask).logits)
    assert torch.equal(model.generate(input_ids, attention_mask=attention_mask.float(), max_new_tokens=5),
                       model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=5))
    for bad in (torch.full(input_ids.shape, 0.5), torch.full(input_ids.shape, 2)):  # no 0 in them: "nothing padded" must not skip the check
        with pytest.raises(InputError, match="attention_mask must hold 0 and 1"):
            model.generate(input_ids, attention_mask=bad, max_new_tokens=2)


def test_several_samples_per_prompt(pair):
    """num_return_sequences: n samples of each prompt, rows i n .. i n + n - 1 for prompt i (transformers' order);
    greedy decoding has one sequence per prompt and says so, as transformers does."""
    _, model, _ = pair
    input_ids, attention_mask = left_padded(97, [6, 3], seed=6)
    out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=8, do_sample=True, num_return_sequences=3,
                         eos_token_id=None, seed=0)
    assert out.shape == (6, 14)
    assert torch.equal(out[:, :6], input_ids.repeat_interleave(3, dim=0))
    assert len({tuple(row) for row in out[:3, 6:].tolist()}) > 1  # three different samples of the first prompt
    with pytest.raises(InputError, match="greedy decoding gives one sequence per prompt; num_return_sequences=2 needs do_sample=True"):
        model.generate(input_ids, attention_mask=attention_mask, num_return_sequences=2)
    with pytest.raises(InputError, match="num_return_sequences must be a positive integer"):
        model.generate(input_ids, attention_mask=attention_mask, do_sample=True, num_return_sequences=0)


def test_configs_answer_to_transformers_common_names():
    """Code ported from transformers reads config.hidden_size and friends, which transformers maps onto every config."""
    from minipt.models.distilbert import DistilBertConfig
    from minipt.models.t5 import T5Config

    for ours, theirs in ((GPT2Config(n_embd=48, n_layer=3, n_head=4, n_positions=64), transformers.GPT2Config(n_embd=48, n_layer=3, n_head=4, n_positions=64)),
                         (T5Config(d_model=48, num_layers=3, num_heads=4), transformers.T5Config(d_model=48, num_layers=3, num_heads=4)),
                         (DistilBertConfig(dim=48, n_layers=3, n_heads=4, hidden_dim=96), transformers.DistilBertConfig(dim=48, n_layers=3, n_heads=4, hidden_dim=96))):
        for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings"):
            if hasattr(theirs, name):
                assert getattr(ours, name) == getattr(theirs, name), (type(ours).__name__, name)
