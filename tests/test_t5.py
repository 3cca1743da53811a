"""minipt's T5 against transformers' T5 on the same random weights.

The reference configs are built with transformers' own T5Config and saved with
its save_pretrained, so the official key names (shared embedding, blocks, the
relative position table in block 0, tied or untied heads) go through minipt's key
map on every run without downloads.

Tolerance: fp32, 1e-5 absolute (relative to the largest value where that exceeds 1). Both sides run the same torch kernels
(linear, the float32 RMS norm, softmax over q k^T + bias); the differences seen
are a few 1e-6 on logits.
"""

from __future__ import annotations

import json
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from minipt import ConfigError, InputError, MiniptError
from minipt.models.t5 import (T5Config, T5DecoderStep, T5EncoderForDecoding, T5EncoderModel, T5ForConditionalGeneration, T5Model,
                             relative_position_bucket)
from minipt.nn import RMSNorm
from minipt.ops import onednn
from minipt.reference import import_transformers

transformers = import_transformers()
if transformers is None:
    raise RuntimeError("the T5 tests need transformers: pip install -e '.[test]' -c .ci/constraints.txt")

ATOL = 1e-5
EOS = 1


def hf_config(**overrides):
    values = dict(vocab_size=50, d_model=16, d_kv=6, d_ff=24, num_layers=2, num_heads=2, dropout_rate=0.0, decoder_start_token_id=0,
                  relative_attention_num_buckets=8, relative_attention_max_distance=12, eos_token_id=EOS, pad_token_id=0)
    values.update(overrides)
    return transformers.T5Config(**values)


def reference_model(config, seed=0, cls=None):
    """transformers' T5 with every parameter random (the norms around 1), eval mode, eager attention."""
    torch.manual_seed(seed)
    model = (cls or transformers.T5ForConditionalGeneration)(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            centre = 1.0 if "layer_norm" in name else 0.0
            p.copy_(centre + 0.3 * torch.randn(p.shape, generator=generator))
    return model


def saved(reference, directory):
    reference.save_pretrained(directory)
    return directory


def padded(vocab_size, lengths, seed=0, left=False):
    """Ids (never 0 or EOS) of the given lengths, padded with 0 to the longest, and their mask."""
    generator = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(2, vocab_size, (len(lengths), T), generator=generator)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, length in enumerate(lengths):
        real = slice(T - length, T) if left else slice(0, length)
        mask[row, real] = 1
    return ids.masked_fill(mask == 0, 0), mask


def max_diff(a, b):
    """The largest difference over tensor pairs, relative to each reference tensor's largest value where that exceeds 1
    (the residual stream of random deep stacks grows to tens; float32 rounding grows with it)."""
    return max(((x - y).abs().max() / y.abs().max().clamp(min=1)).item() for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    reference = reference_model(hf_config(feed_forward_proj="gated-gelu", tie_word_embeddings=False))
    directory = saved(reference, tmp_path_factory.mktemp("t5"))
    reference = transformers.T5ForConditionalGeneration.from_pretrained(directory, attn_implementation="eager").eval()
    return reference, T5ForConditionalGeneration.from_pretrained(directory), directory


# -- parity ----------------------------------------------------------------------
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    num_layers=st.integers(1, 3),
    num_decoder_layers=st.integers(1, 3),
    num_heads=st.sampled_from([1, 2, 4]),
    d_kv=st.sampled_from([3, 8]),
    d_model=st.sampled_from([8, 16]),
    feed_forward_proj=st.sampled_from(["relu", "gated-gelu"]),
    tied=st.booleans(),
    buckets=st.sampled_from([(4, 6), (8, 12), (32, 128)]),
    left=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_every_layer_matches_reference(num_layers, num_decoder_layers, num_heads, d_kv, d_model, feed_forward_proj, tied, buckets, left, seed):
    config = hf_config(num_layers=num_layers, num_decoder_layers=num_decoder_layers, num_heads=num_heads, d_kv=d_kv, d_model=d_model,
                       feed_forward_proj=feed_forward_proj, relative_attention_num_buckets=buckets[0], relative_attention_max_distance=buckets[1],
                       tie_word_embeddings=tied)
    with tempfile.TemporaryDirectory() as directory:
        saved(reference_model(config, seed), directory)
        reference = transformers.T5ForConditionalGeneration.from_pretrained(directory, attn_implementation="eager").eval()
        model = T5ForConditionalGeneration.from_pretrained(directory)
    ids, mask = padded(50, [14, 9, 3], seed, left)
    labels, decoder_mask = padded(50, [7, 5, 2], seed + 1)
    labels = labels.masked_fill(decoder_mask == 0, -100)
    with torch.no_grad():
        ours = model(ids, mask, labels=labels, output_hidden_states=True, output_attentions=True)
        theirs = reference(input_ids=ids, attention_mask=mask, labels=labels, output_hidden_states=True, output_attentions=True)
    for name in ("encoder_hidden_states", "encoder_attentions", "decoder_hidden_states", "decoder_attentions", "cross_attentions"):
        assert max_diff(getattr(ours, name), getattr(theirs, name)) <= ATOL, name
    assert max_diff([ours.logits, ours.loss], [theirs.logits, theirs.loss]) <= ATOL


def test_bare_model_and_encoder_match_reference(pair):
    reference, _, directory = pair
    ids, mask = padded(50, [11, 6])
    decoder_ids, _ = padded(50, [5, 5], seed=3)
    with torch.no_grad():
        decoded = T5Model.from_pretrained(directory)(ids, mask, decoder_ids).last_hidden_state
        expected = reference(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids, output_hidden_states=True).decoder_hidden_states[-1]
        encoded = T5EncoderModel.from_pretrained(directory)(ids, mask).last_hidden_state
        expected_encoded = reference.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (decoded - expected).abs().max().item() <= ATOL
    assert (encoded - expected_encoded).abs().max().item() <= ATOL


def test_rms_norm_matches_transformers_t5_layer_norm():
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    x = torch.randn(3, 5, 7, dtype=torch.float64) * 4
    ours, theirs = RMSNorm(7, eps=1e-6), T5LayerNorm(7, eps=1e-6)
    with torch.no_grad():
        ours.weight.normal_()
        theirs.weight.copy_(ours.weight)
    assert torch.equal(ours(x.float()), theirs(x.float()))
    half = RMSNorm(7).to(torch.bfloat16)
    assert half(x.bfloat16()).dtype == torch.bfloat16  # the mean of squares in float32, the result in the weight's dtype


@pytest.mark.parametrize("bidirectional", [True, False])
def test_buckets_match_transformers(bidirectional):
    from transformers.models.t5.modeling_t5 import T5Attention

    distance = torch.arange(-300, 300)[None]
    for buckets, max_distance in ((4, 6), (32, 128)):
        ours = relative_position_bucket(distance, bidirectional=bidirectional, num_buckets=buckets, max_distance=max_distance)
        theirs = T5Attention._relative_position_bucket(distance, bidirectional=bidirectional, num_buckets=buckets, max_distance=max_distance)
        assert torch.equal(ours, theirs)


# -- round trips and the two head conventions -------------------------------------------
@pytest.mark.parametrize("cls", [T5ForConditionalGeneration, T5Model, T5EncoderModel])
@pytest.mark.parametrize("proj_tie", [("relu", True), ("gated-gelu", False)])
def test_save_pretrained_loads_into_transformers_strictly(tmp_path, cls, proj_tie):
    config = T5Config(vocab_size=50, d_model=16, d_kv=6, d_ff=24, num_layers=2, num_heads=2, dropout_rate=0.0, feed_forward_proj=proj_tie[0],
                      tie_word_embeddings=proj_tie[1], relative_attention_num_buckets=8, relative_attention_max_distance=12)
    model = cls(config).eval()
    model.save_pretrained(tmp_path)
    reference, info = getattr(transformers, cls.__name__).from_pretrained(tmp_path, output_loading_info=True, attn_implementation="eager")
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ids, mask = padded(50, [9, 4])
    decoder = padded(50, [4, 4], seed=2)[0]
    with torch.no_grad():
        if cls is T5EncoderModel:
            ours, theirs = model(ids, mask).last_hidden_state, reference.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
        elif cls is T5Model:
            ours, theirs = model(ids, mask, decoder).last_hidden_state, reference.eval()(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).last_hidden_state
        else:
            ours, theirs = model(ids, mask, decoder).logits, reference.eval()(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
    assert (ours - theirs).abs().max().item() <= ATOL


def test_transformers_5_save_of_a_v1_1_config_is_tied_and_unscaled(pair):
    _, model, directory = pair
    written = json.loads((directory / "config.json").read_text())
    assert written["tie_word_embeddings"] is True and written["scale_decoder_outputs"] is False  # what transformers 5.x writes
    assert model.lm_head.weight is model.shared.weight and model.config.scale_decoder_outputs is False


def test_an_official_v1_1_file_has_its_own_head_and_no_scaling(tmp_path):
    """Flan-T5's files: "tie_word_embeddings": false, no scale_decoder_outputs, and a lm_head.weight of its own."""
    from safetensors.torch import load_file, save_file

    saved(reference_model(hf_config(feed_forward_proj="gated-gelu")), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["lm_head.weight"] = torch.randn(50, 16)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("scale_decoder_outputs")
    config["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = T5ForConditionalGeneration.from_pretrained(tmp_path)
    assert model.lm_head.weight is not model.shared.weight and torch.equal(model.lm_head.weight, tensors["lm_head.weight"])
    assert model.config.scale_decoder_outputs is False
    reference = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, mask = padded(50, [8, 3])
    with torch.no_grad():
        assert (model(ids, mask, ids[:, :4]).logits - reference(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :4]).logits).abs().max() <= ATOL
    out = tmp_path / "again"
    model.save_pretrained(out)
    again, info = transformers.T5ForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and torch.equal(again.lm_head.weight, tensors["lm_head.weight"])


def test_a_v1_0_file_holding_its_tied_head_stays_tied(tmp_path):
    """An old pytorch_model.bin of t5-small writes lm_head.weight beside shared.weight, equal: tied, as transformers
    ties it (untied, fine-tuning drifted from transformers' and the file was written back as another model)."""
    from safetensors.torch import load_file, save_file

    saved(reference_model(hf_config(feed_forward_proj="relu")), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["lm_head.weight"] = tensors["shared.weight"].clone()
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("scale_decoder_outputs", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = T5ForConditionalGeneration.from_pretrained(tmp_path)
    reference = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path)
    assert reference.lm_head.weight.data_ptr() == reference.shared.weight.data_ptr()
    assert model.lm_head.weight is model.shared.weight and model.config.tie_word_embeddings and model.config.scale_decoder_outputs
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())


def test_in_float16_the_feed_forward_output_stays_float32_as_in_transformers(tmp_path):
    """An activation past float16's range (as T5 v1.1 and Flan-T5 have) made the logits NaN; transformers keeps wo in
    float32 and clamps the sums: finite, and near float64."""
    reference = reference_model(hf_config(feed_forward_proj="gated-gelu", tie_word_embeddings=False))
    with torch.no_grad():
        reference.encoder.block[0].layer[1].DenseReluDense.wo.weight.mul_(3e4)  # an output of ~1e5 at the first layer
    saved(reference, tmp_path)
    ids, mask = padded(50, [7, 4])
    decoder = ids[:, :3]
    exact = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float64).eval()
    theirs = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float16).eval()
    ours = T5ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float16)
    assert ours.encoder.layers[0].ffn.wo.weight.dtype == torch.float32 and ours.shared.weight.dtype == torch.float16
    with torch.no_grad():
        target = exact(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
        got = ours(ids, mask, decoder).logits
        expected = theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits
    assert torch.isfinite(got).all() and torch.isfinite(expected).all()
    assert max_diff(got.double(), target) <= 2 * max(max_diff(expected.double(), target), 1e-3 * target.abs().max())


def test_a_model_pickled_with_one_dropout_per_stack_still_runs(tmp_path):
    """Each stack held one dropout module before the stages took them apart: a whole-model pickle of then loads."""
    import pickle

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)).eval()
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        expected = model(ids, decoder_input_ids=ids).logits
    for stack in (model.encoder, model.decoder):  # as the modules were then
        stack._modules = {"dropout": stack._modules.pop("input_dropout"), **{k: v for k, v in stack._modules.items() if k != "output_dropout"}}
    again = pickle.loads(pickle.dumps(model))
    assert list(again.encoder._modules) == ["input_dropout", "layers", "final_norm", "output_dropout"]
    with torch.no_grad():
        assert torch.equal(again(ids, decoder_input_ids=ids).logits, expected)


# -- generation -----------------------------------------------------------------------
@settings(max_examples=4, deadline=None)
@given(feed_forward_proj=st.sampled_from(["relu", "gated-gelu"]), layers=st.integers(1, 2), left=st.booleans(), seed=st.integers(0, 1000))
def test_greedy_generation_matches_reference(feed_forward_proj, layers, left, seed):
    config = hf_config(feed_forward_proj=feed_forward_proj, num_layers=layers, vocab_size=30)
    with tempfile.TemporaryDirectory() as directory:
        saved(reference_model(config, seed), directory)
        reference = transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()
        model = T5ForConditionalGeneration.from_pretrained(directory)
    ids, mask = padded(30, [10, 6, 2], seed, left)
    expected = reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=12), expected)
    # random weights tend to repeat one token; a repetition penalty moves every row through several positions and tokens
    expected = reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, repetition_penalty=3.0)
    assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=12, repetition_penalty=3.0), expected)
    # an example counts only where the reference moved through several tokens (some random weights keep to three even
    # under the penalty): hypothesis then draws another, and fails the health check if too few do
    assume(len(expected.unique()) > 3)


@settings(max_examples=2, deadline=None)
@given(feed_forward_proj=st.sampled_from(["relu", "gated-gelu"]), left=st.booleans(), seed=st.integers(0, 1000))
def test_beam_search_matches_reference(feed_forward_proj, left, seed):
    config = hf_config(feed_forward_proj=feed_forward_proj, vocab_size=30)
    with tempfile.TemporaryDirectory() as directory:
        saved(reference_model(config, seed), directory)
        reference = transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()
        model = T5ForConditionalGeneration.from_pretrained(directory)
    ids, mask = padded(30, [10, 6, 2], seed, left)
    # the stop token: what the first row chooses first, so that hypotheses finish at different lengths while others run on
    eos = int(model.generate(ids, attention_mask=mask, max_new_tokens=1)[0, 1])
    for options, stop in ((dict(num_beams=3), EOS), (dict(num_beams=4, length_penalty=0.5, early_stopping=True), eos),
                          (dict(num_beams=2, length_penalty=2.0, early_stopping="never"), eos), (dict(num_beams=3, early_stopping=True), EOS)):
        expected = reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, eos_token_id=stop, pad_token_id=0, **options)
        assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=stop, pad_token_id=0, **options), expected), (options, stop)


def test_several_sequences_per_input_as_in_transformers(pair):
    """num_return_sequences: the n best hypotheses of beam search, token for token as transformers returns them
    (rows i n .. i n + n - 1 for input i); n samples of each input; greedy decoding has one, as in transformers."""
    reference, model, _ = pair
    ids, mask = padded(50, [9, 5, 3], seed=6)
    eos = int(model.generate(ids, attention_mask=mask, max_new_tokens=1)[1, 1])  # hypotheses of different lengths
    for n, beams in ((2, 3), (3, 3), (4, 5)):
        options = dict(attention_mask=mask, max_new_tokens=7, eos_token_id=eos, pad_token_id=0, num_beams=beams, num_return_sequences=n)
        expected = reference.generate(input_ids=ids, **options)
        produced = model.generate(ids, **options)
        assert produced.shape[0] == 3 * n and torch.equal(produced, expected), (n, beams)
    sampled = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=True, num_return_sequences=4, seed=0)
    assert sampled.shape == (12, 7) and len({tuple(row) for row in sampled[:4].tolist()}) > 1  # four samples of the first input
    with pytest.raises(InputError, match="greedy decoding gives one sequence per prompt"):
        model.generate(ids, num_return_sequences=2)
    with pytest.raises(InputError, match=r"num_return_sequences \(4\) must be at most num_beams \(3\)"):
        model.generate(ids, num_beams=3, num_return_sequences=4)


@pytest.mark.parametrize("options", [dict(), dict(num_beams=3, length_penalty=0.5), dict(num_beams=2, early_stopping="never")])
def test_a_decoder_prompt_continues_as_in_transformers(options):
    """decoder_input_ids: the start token and a few tokens, continued (greedy or beam search) as transformers' generate continues them."""
    config = hf_config(feed_forward_proj="gated-gelu", vocab_size=30)
    with tempfile.TemporaryDirectory() as directory:
        saved(reference_model(config, seed=7), directory)
        reference = transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()
        model = T5ForConditionalGeneration.from_pretrained(directory)
    ids, mask = padded(30, [10, 6, 2], seed=7)
    prompt = torch.cat([torch.zeros(3, 1, dtype=torch.long), padded(30, [3, 3, 3], seed=8)[0]], dim=1)  # (3, 4), the start token first
    eos = int(model.generate(ids, attention_mask=mask, decoder_input_ids=prompt, max_new_tokens=1)[0, -1])  # hypotheses finish at several lengths
    expected = reference.generate(input_ids=ids, attention_mask=mask, decoder_input_ids=prompt, max_new_tokens=7, eos_token_id=eos, pad_token_id=0,
                                  do_sample=False, **options)
    ours = model.generate(ids, attention_mask=mask, decoder_input_ids=prompt, max_new_tokens=7, eos_token_id=eos, pad_token_id=0, **options)
    assert torch.equal(ours, expected) and torch.equal(ours[:, :4], prompt)


def test_cached_decoding_equals_full_recomputation(pair):
    _, model, _ = pair
    ids, mask = padded(50, [9, 5])
    sequences = model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=None)
    with torch.no_grad():
        logits = model(ids, mask, sequences[:, :-1]).logits
    assert torch.equal(logits.argmax(-1), sequences[:, 1:])


@pytest.mark.parametrize("kernel", ["onednn", "blocks"])
def test_the_fused_copy_decodes_as_the_model(pair, kernel, monkeypatch):
    """fuse(): self-attention's Q, K, V in one matmul, the activation and the residual adds inside the matmuls; the same
    tokens, with every product on oneDNN, or in blocks of outputs on two threads (as a CPU may choose for a few rows)."""
    _, model, _ = pair
    monkeypatch.setenv("MINIPT_LINEAR", kernel)
    fused = model.fuse()
    assert fused.decoder.layers[0].attn.qkv_proj is not None and fused.decoder.layers[0].cross_attn.qkv_proj is None
    ids, mask = padded(50, [9, 5])
    blocked = []
    in_blocks = onednn.linear_in_blocks
    monkeypatch.setattr(onednn, "linear_in_blocks", lambda *args: blocked.append(args[-1]) or in_blocks(*args))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for options in (dict(), dict(num_beams=3, length_penalty=0.5), dict(repetition_penalty=3.0)):
            expected = model.generate(ids, attention_mask=mask, max_new_tokens=8, **options)
            assert torch.equal(fused.generate(ids, attention_mask=mask, max_new_tokens=8, **options), expected), options
    finally:
        torch.set_num_threads(threads)
    assert bool(blocked) == (kernel == "blocks")


def test_sampling_goes_through_the_shared_sampler(pair):
    _, model, _ = pair
    ids, mask = padded(50, [9, 5])
    first = model.generate(ids, attention_mask=mask, do_sample=True, top_k=5, seed=3, max_new_tokens=6, eos_token_id=None)
    assert torch.equal(first, model.generate(ids, attention_mask=mask, do_sample=True, top_k=5, seed=3, max_new_tokens=6, eos_token_id=None))
    single = model.generate(ids, attention_mask=mask, do_sample=True, top_k=1, seed=4, max_new_tokens=6, eos_token_id=None)
    assert torch.equal(single, model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=None))


# -- torch.export: the encoder and one decoder step ------------------------------------------
def _decode_with(encoder, step, model, ids, mask, steps):
    """Greedy decoding through the two functions of tensors: the tokens (B, 1 + steps) and each step's logits."""
    config = model.config
    cross_keys, cross_values = encoder(ids, mask)
    keys = torch.zeros(config.num_decoder_layers, ids.shape[0], config.num_heads, steps, config.d_kv)
    values = torch.zeros_like(keys)
    tokens, all_logits = model.start_ids(ids), []
    for i in range(steps):
        logits, keys, values = step(tokens[:, -1:], torch.tensor(i), keys, values, cross_keys, cross_values, mask)
        all_logits.append(logits)
        tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    return tokens, all_logits


@pytest.mark.parametrize("feed_forward_proj", ["relu", "gated-gelu"])  # v1.0 (tied head, scaled output) and v1.1
def test_the_encoder_and_one_decoder_step_export_and_decode_as_generate(tmp_path, feed_forward_proj):
    """Exported with a dynamic batch and input length, the encoder (with the cross-attention keys and values) and the
    decoder step give generate's tokens and, step by step, its logits; the same as the eager modules up to ATOL."""
    model = T5ForConditionalGeneration.from_pretrained(saved(reference_model(hf_config(feed_forward_proj=feed_forward_proj,
                                                                                         tie_word_embeddings=feed_forward_proj == "relu"), seed=4), tmp_path))
    assert model.config.scale_decoder_outputs is (feed_forward_proj == "relu")
    encoder, step = T5EncoderForDecoding(model).eval(), T5DecoderStep(model).eval()
    ids, mask = padded(50, [9, 5, 3], seed=4)
    steps = 7
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length", min=2)
    example_ids, example_mask = padded(50, [6, 4], seed=5)  # the traced shapes: 2 rows of 6
    with torch.no_grad():
        exported_encoder = torch.export.export(encoder, (example_ids, example_mask), dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}))
        cross = encoder(example_ids, example_mask)
        keys = torch.zeros(model.config.num_decoder_layers, 2, model.config.num_heads, steps, model.config.d_kv)
        example = (model.start_ids(example_ids), torch.tensor(0), keys, torch.zeros_like(keys), *cross, example_mask)  # not one tensor twice: export would alias them
        dims = ({0: batch}, None, {1: batch}, {1: batch}, {1: batch, 3: length}, {1: batch, 3: length}, {0: batch, 1: length})
        exported_step = torch.export.export(step, example, dynamic_shapes=dims)
        eager_tokens, eager_logits = _decode_with(encoder, step, model, ids, mask, steps)
        tokens, logits = _decode_with(exported_encoder.module(), exported_step.module(), model, ids, mask, steps)  # another batch and length
        expected = model.generate(ids, attention_mask=mask, max_new_tokens=steps, eos_token_id=None, output_logits=True, return_dict_in_generate=True)
    assert torch.equal(tokens, expected.sequences) and torch.equal(eager_tokens, expected.sequences)
    assert len(expected.sequences[:, 1:].unique()) > 2  # the steps see more than one token
    assert max_diff(logits, eager_logits) <= ATOL
    assert max_diff(eager_logits, expected.logits) <= ATOL


def test_a_decoder_step_writes_only_its_own_place(pair):
    _, model, _ = pair
    ids, mask = padded(50, [6, 4])
    cross = T5EncoderForDecoding(model)(ids, mask)
    keys = torch.randn(model.config.num_decoder_layers, 2, model.config.num_heads, 5, model.config.d_kv)
    with torch.no_grad():
        _, new_keys, new_values = T5DecoderStep(model)(model.start_ids(ids), torch.tensor(2), keys, keys, *cross, mask)
    changed = (new_keys != keys).any(dim=(0, 1, 2, 4))  # (max_len,)
    assert changed.tolist() == [False, False, True, False, False] and torch.equal(new_values[:, :, :, 3:], keys[:, :, :, 3:])


# -- bad input -------------------------------------------------------------------------
def test_generation_past_the_preallocated_places(pair, tmp_path):
    """Relative positions set no limit: transformers generates 521 tokens where minipt refused more than n_positions
    (512) decoder places. The cache now starts at n_positions places and doubles; past them each step computes its
    rows of the position bias. Greedy, repetition-penalised and beam search, token for token, with 8 places."""
    reference, _, directory = pair
    model = T5ForConditionalGeneration.from_pretrained(directory, n_positions=8)
    ids, mask = padded(50, [6, 3])
    for options in (dict(), dict(repetition_penalty=3.0), dict(num_beams=3)):
        expected = reference.generate(input_ids=ids, attention_mask=mask, max_new_tokens=30, eos_token_id=None, pad_token_id=0, **options)
        assert expected.shape[1] == 31
        assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=30, eos_token_id=None, **options), expected), options


@pytest.mark.parametrize("options, message", [(dict(num_beams=0), "num_beams must be a positive integer, got 0"),  # transformers: ZeroDivisionError
                                             (dict(num_beams=51), "num_beams must be at most the vocabulary's 50 tokens"),
                                             (dict(num_beams=2, do_sample=True), "do_sample"),
                                             (dict(num_beams=2, early_stopping="sometimes"), "early_stopping"),
                                             (dict(early_stopping="yes"), "early_stopping"),  # checked without beams too (accepted before)
                                             (dict(length_penalty=float("nan")), "length_penalty must be finite"),
                                             (dict(length_penalty="long"), "length_penalty must be a real number")])
def test_bad_beam_search_arguments_are_named(pair, options, message):
    _, model, _ = pair
    with pytest.raises(InputError, match=message):
        model.generate(padded(50, [4])[0], max_new_tokens=3, **options)


def test_a_decoder_prompt_without_the_start_token(pair):
    _, model, _ = pair
    ids = padded(50, [4, 4])[0]
    with pytest.raises(InputError, match="decoder_input_ids must begin with the decoder start token 0; row 1 begins with 7"):
        model.generate(ids, decoder_input_ids=torch.tensor([[0, 5], [7, 5]]), max_new_tokens=2)
    with pytest.raises(InputError, match="decoder_input_ids must begin with the decoder start token 3; row 0"):
        model.generate(ids, decoder_input_ids=torch.tensor([[0, 5], [3, 5]]), decoder_start_token_id=3, max_new_tokens=2, num_beams=2)
    with pytest.raises(InputError, match=r"decoder_input_ids must be integer ids of shape \(2, prompt_len\)"):
        model.generate(ids, decoder_input_ids=torch.tensor([[0, 5]]), max_new_tokens=2)


def test_relative_attention_fields_that_do_not_fit_the_checkpoint(pair, tmp_path):
    import shutil

    _, _, directory = pair
    with pytest.raises(ConfigError, match="relative_attention_num_buckets"):
        T5ForConditionalGeneration.from_pretrained(directory, relative_attention_num_buckets=16)
    shutil.copytree(directory, tmp_path, dirs_exist_ok=True)
    written = json.loads((tmp_path / "config.json").read_text())
    for field, value, table in (("relative_attention_num_buckets", 16, "decoder"), ("num_heads", 4, "encoder")):  # a config.json that says so
        (tmp_path / "config.json").write_text(json.dumps(written | {field: value}))
        with pytest.raises(ConfigError, match=rf"{field} = {value}, but {table}.block.0.layer.0.SelfAttention.relative_attention_bias.weight has shape \(8, 2\)"):
            T5ForConditionalGeneration.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="relative_attention_max_distance"):
        T5Config(relative_attention_num_buckets=32, relative_attention_max_distance=10)
    # d_kv is in no tensor's shape alone: heads x d_kv against the query projection, before the model is built
    # (2^61 x 8 heads would not fit an int64; the loader fuzz found the TypeError it raised while building)
    for d_kv in (5, 1 << 61):
        (tmp_path / "config.json").write_text(json.dumps(written | {"d_kv": d_kv}))
        with pytest.raises(ConfigError, match=rf"num_heads = 2 x d_kv = {d_kv} make {2 * d_kv} rows, but "
                                              r"encoder.block.0.layer.0.SelfAttention.q.weight has shape \(12, 16\)"):
            T5ForConditionalGeneration.from_pretrained(tmp_path)


def test_transformers_encoder_only_save_loads(tmp_path):
    """transformers' T5EncoderModel writes is_encoder_decoder: false into its config; the encoder loads it, exactly."""
    config = transformers.T5Config(vocab_size=50, d_model=16, d_kv=6, d_ff=24, num_layers=1, num_heads=2, feed_forward_proj="gated-gelu")
    torch.manual_seed(0)
    reference = transformers.T5EncoderModel(config).eval()
    reference.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["is_encoder_decoder"] is False
    ids, mask = padded(50, [7, 4])
    with torch.no_grad():
        encoded = T5EncoderModel.from_pretrained(tmp_path)(ids, mask).last_hidden_state
        assert (encoded - reference(input_ids=ids, attention_mask=mask).last_hidden_state).abs().max().item() <= ATOL
    with pytest.raises(ConfigError, match="encoder only.*T5EncoderModel"):
        T5ForConditionalGeneration.from_pretrained(tmp_path)


def test_an_encoder_only_file_given_to_the_generator(tmp_path):
    T5EncoderModel(T5Config(vocab_size=50, d_model=16, d_kv=6, d_ff=24, num_layers=1, num_heads=2)).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="encoder only.*T5EncoderModel"):
        T5ForConditionalGeneration.from_pretrained(tmp_path)


def test_bad_inputs_are_named(pair):
    _, model, _ = pair
    ids, mask = padded(50, [5, 3])
    with torch.no_grad():  # without decoder inputs: one step from the start token
        assert torch.equal(model(ids, mask).logits, model(ids, mask, torch.zeros(2, 1, dtype=torch.long)).logits)
    with pytest.raises(InputError, match="decoder_input_ids"):
        model(ids, mask, ids[:1])
    with pytest.raises(InputError, match="input_ids"):
        model(ids.float(), mask, ids)
    with pytest.raises(InputError, match="attention_mask"):
        model(ids, mask[:, :2], ids)
    with pytest.raises(InputError, match="labels"):
        model(ids, mask, labels=torch.full((2, 3), 99))
    with pytest.raises(ConfigError, match="feed_forward_proj"):
        T5Config(feed_forward_proj="gated-nothing")
    with pytest.raises(MiniptError, match="top_k"):
        model.generate(ids, top_k=-1, do_sample=True)
    for start, message in (("0", "got str '0'"), (1.0, "got float 1.0"), (-1, r"in \[0, \d+\], got -1")):
        with pytest.raises(InputError, match=f"decoder_start_token_id must be a token id.*{message}"):
            model.generate(ids, decoder_start_token_id=start, max_new_tokens=2)
    with pytest.raises(InputError, match="decoder_input_ids holds 1000, outside the table"):  # not "input_ids holds"
        model.generate(ids, decoder_input_ids=torch.tensor([[0, 1000], [0, 1]]), max_new_tokens=2)


def test_an_empty_batch(pair):
    """No rows in, no rows out (torch's reshape of 0 elements failed inside attention and beam search)."""
    _, model, _ = pair
    empty = torch.zeros(0, 4, dtype=torch.long)
    with torch.no_grad():
        assert model(empty, decoder_input_ids=torch.zeros(0, 2, dtype=torch.long)).logits.shape == (0, 2, model.config.vocab_size)
    assert model.generate(empty, max_new_tokens=3).shape == (0, 4)  # the start token and 3: as long as any row could be
    assert model.generate(empty, max_new_tokens=3, num_beams=2).shape == (0, 4)
    assert model.generate(empty, max_new_tokens=3, return_dict_in_generate=True, output_logits=True).sequences.shape == (0, 4)


# -- reference points, probes, transfer stages ---------------------------------------------
def test_layer_diffs_names_a_planted_change_in_one_decoder_layer(pair):
    from minipt.reference import layer_diffs

    _, _, directory = pair
    model = T5ForConditionalGeneration.from_pretrained(directory)
    ids, mask = padded(50, [10, 7])
    clean = layer_diffs(model, directory, {"input_ids": ids, "attention_mask": mask}, rtol=1e-5)
    assert clean.first_divergence is None, str(clean)
    assert any(row.name == "decoder.layers.1.cross_attn.probs" for row in clean.rows)
    with torch.no_grad():
        model.decoder.layers[1].cross_attn.out_proj.weight.mul_(1.01)
    planted = layer_diffs(model, directory, {"input_ids": ids, "attention_mask": mask}, rtol=1e-5)
    assert planted.first_divergence.name == "decoder.layers.1.cross_attn.out"


def test_layer_diffs_runs_the_decoder_inputs_given(pair):
    """A batch's decoder_input_ids and decoder_attention_mask (or labels, shifted right) are what both decoders read,
    not the inputs' first tokens; a key the comparison does not read is named."""
    from minipt.reference import layer_diffs

    _, _, directory = pair
    model = T5ForConditionalGeneration.from_pretrained(directory)
    ids, mask = padded(50, [10, 7])
    decoder_ids, decoder_mask = torch.tensor([[0, 7, 9], [0, 11, 13]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    seen, forward = [], model.forward
    model.forward = lambda *args, **kwargs: (seen.append(args[2:4]), forward(*args, **kwargs))[1]
    batch = {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": decoder_ids, "decoder_attention_mask": decoder_mask}
    assert layer_diffs(model, directory, batch, rtol=1e-5).first_divergence is None
    assert seen and all(torch.equal(d, decoder_ids) and torch.equal(m, decoder_mask) for d, m in seen)
    seen.clear()
    labels = torch.tensor([[5, 6, 1], [8, 1, -100]])
    assert layer_diffs(model, directory, {"input_ids": ids, "labels": labels}, rtol=1e-5).first_divergence is None
    assert all(torch.equal(d, model.shift_right(labels)) for d, _ in seen)
    from bert_reference import transformers

    encoding = transformers.BatchEncoding({"input_ids": ids, "attention_mask": mask})  # a tokenizer's batch: not a dict
    assert layer_diffs(model, directory, encoding, rtol=1e-5).first_divergence is None
    with pytest.raises(InputError, match="the batch also holds token_type_ids"):
        layer_diffs(model, directory, {"input_ids": ids, "token_type_ids": ids}, rtol=1e-5)


def test_probe_reads_the_attention_blocks(pair):
    from minipt.probe import capture

    _, model, _ = pair
    ids, mask = padded(50, [10, 7])
    with capture(model, "encoder.layers.0.attn.heads", "decoder.layers.1.cross_attn.heads", "decoder.layers.0.attn.out") as seen:
        model(ids, mask, ids[:, :4])
    assert seen["encoder.layers.0.attn.heads"].shape == (2, 2, 10, 6)  # (B, heads, S, d_kv)
    assert seen["decoder.layers.1.cross_attn.heads"].shape == (2, 2, 4, 6)
    assert seen["decoder.layers.0.attn.out"].shape == (2, 4, 16)


def test_transfer_stages_follow_the_stacks():
    from minipt import transfer

    tied = T5ForConditionalGeneration(T5Config(vocab_size=50, d_model=16, d_kv=6, d_ff=24, num_layers=2, num_decoder_layers=1, num_heads=2))
    assert transfer.stages(tied) == ["shared", "encoder.layers.0", "encoder.layers.1", "encoder.final_norm", "decoder.layers.0", "decoder.final_norm"]
    untied = T5ForConditionalGeneration(tied.config.replace(tie_word_embeddings=False))
    assert transfer.stages(untied)[-1] == "lm_head"
