"""minipt.nn.sampling.choose_next_token: the next-token sampler GPT-2 and the char LM share."""

import math

import pytest
import torch

from minipt.errors import InputError
from minipt.nn.sampling import apply_repetition_penalty, check_sampling, choose_next_token
from minipt.reference import import_transformers


def random_logits(B=4, V=50, seed=0):
    return torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * 3


def draws(logits, n=200, **kw):
    """The set of ids drawn per row over ``n`` seeded draws: a list of B sets."""
    seen = [set() for _ in range(logits.shape[0])]
    for i in range(n):
        for row, token in enumerate(choose_next_token(logits, generator=torch.Generator().manual_seed(i), **kw).tolist()):
            seen[row].add(token)
    return seen


def test_greedy_is_argmax():
    logits = random_logits()
    chosen = choose_next_token(logits, do_sample=False, temperature=0.3, top_k=3, top_p=0.5)
    assert chosen.shape == (4,) and chosen.dtype == torch.long
    assert torch.equal(chosen, logits.argmax(-1))


def test_top_k_never_picks_outside_the_k_largest():
    logits = random_logits(V=30)
    k = 4
    allowed = logits.topk(k, dim=-1).indices
    for row, drawn in enumerate(draws(logits, temperature=5.0, top_k=k)):  # a high temperature spreads the draws
        assert drawn <= set(allowed[row].tolist())
        assert len(drawn) > 1
    assert torch.equal(choose_next_token(logits, top_k=1, generator=torch.Generator().manual_seed(0)), logits.argmax(-1))


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.05, 0.25, 0.15, 0.05]])
    logits = probs.log()
    # sorted: 0.5 (id 0), 0.25 (id 2), 0.15 (id 3), 0.05, 0.05; top_p 0.7 needs ids 0 and 2 (0.75)
    assert draws(logits, top_p=0.7) == [{0, 2}]
    assert draws(logits, top_p=0.75) == [{0, 2}]  # reached exactly: no third token
    assert draws(logits, top_p=0.8) == [{0, 2, 3}]
    assert draws(logits, top_p=0.4) == [{0}]  # the most likely token always stays
    assert draws(logits, top_p=1.0, n=400) == [{0, 1, 2, 3, 4}]


def test_temperature_towards_zero_approaches_greedy():
    logits = random_logits(B=8, V=100)
    greedy = logits.argmax(-1)
    for seed in range(20):
        assert torch.equal(choose_next_token(logits, temperature=1e-4, generator=torch.Generator().manual_seed(seed)), greedy)
    # and the probability mass outside the argmax shrinks as the temperature does
    mass = [1 - (logits / t).softmax(-1).max(-1).values.mean().item() for t in (1.0, 0.3, 0.1, 0.03, 0.01)]
    assert all(a > b for a, b in zip(mass, mass[1:])) and mass[-1] < mass[0] / 100, mass


def test_a_seeded_generator_reproduces():
    logits = random_logits(B=16, V=1000)
    kw = dict(temperature=0.9, top_k=200, top_p=0.95)
    first = choose_next_token(logits, generator=torch.Generator().manual_seed(7), **kw)
    assert torch.equal(first, choose_next_token(logits, generator=torch.Generator().manual_seed(7), **kw))
    assert not torch.equal(first, choose_next_token(logits, generator=torch.Generator().manual_seed(8), **kw))


@pytest.mark.parametrize("penalty", [1.0, 1.3, 2.0, 0.7])
def test_repetition_penalty_matches_transformers(penalty):
    transformers = import_transformers()
    if transformers is None:
        pytest.skip("transformers is not installed")
    logits = random_logits(B=3, V=40, seed=1)
    input_ids = torch.randint(0, 40, (3, 12), generator=torch.Generator().manual_seed(2))  # with repeats
    processor = transformers.RepetitionPenaltyLogitsProcessor(penalty=penalty)
    expected = processor(input_ids, logits.clone())
    assert torch.allclose(apply_repetition_penalty(logits, input_ids, penalty), expected, rtol=0, atol=0)
    greedy = choose_next_token(logits, do_sample=False, repetition_penalty=penalty, input_ids=input_ids)
    assert torch.equal(greedy, expected.argmax(-1))
    # padding (attention_mask 0) does not count, as transformers' prompt_ignore_length
    mask = torch.ones_like(input_ids)
    mask[:, :3] = 0
    ignoring = transformers.RepetitionPenaltyLogitsProcessor(penalty=penalty, prompt_ignore_length=torch.tensor([3, 3, 3]))
    assert torch.equal(apply_repetition_penalty(logits, input_ids, penalty, mask), ignoring(input_ids, logits.clone()))


def test_repetition_penalty_steers_greedy_away_from_a_repeat():
    logits = torch.tensor([[3.0, 2.9, -1.0]])
    assert choose_next_token(logits, do_sample=False).item() == 0
    assert choose_next_token(logits, do_sample=False, repetition_penalty=1.2, input_ids=torch.tensor([[0, 0]])).item() == 1


BAD = [
    ("temperature", 0.0),
    ("temperature", -1.0),
    ("temperature", math.inf),
    ("temperature", math.nan),
    ("temperature", True),
    ("temperature", "1.0"),
    ("top_k", -3),
    ("top_k", True),
    ("top_k", 2.0),
    ("top_k", "5"),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("top_p", -0.1),
    ("top_p", math.nan),
    ("top_p", True),
    ("top_p", "0.9"),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.2),
    ("repetition_penalty", math.inf),
    ("repetition_penalty", False),
    ("repetition_penalty", "1.2"),
    ("generator", 0),
    ("generator", "seed"),
]


@pytest.mark.parametrize("name, value", BAD, ids=[f"{n}={v!r}" for n, v in BAD])
def test_each_bad_argument_is_named(name, value):
    with pytest.raises(InputError) as caught:
        choose_next_token(random_logits(), input_ids=torch.zeros(4, 1, dtype=torch.long), **{name: value})
    message = str(caught.value)
    assert message.startswith(name) and repr(value) in message, message
    with pytest.raises(InputError, match=name):
        check_sampling(**{name: value})


def test_zero_temperature_only_where_it_means_greedy():
    check_sampling(0.0, zero_temperature_is_greedy=True)
    with pytest.raises(InputError, match=r"temperature must be >= 0"):
        check_sampling(-0.5, zero_temperature_is_greedy=True)



def test_top_k_as_transformers_reads_it():
    """0 (and None) is no top-k filter, and more than the vocabulary is all of it, as transformers' TopKLogitsWarper
    reads top_k; generate samples with its default, 50 (minipt sampled from the whole vocabulary: 94 distinct
    tokens of 97 over 300 seeds where transformers drew from 50)."""
    import inspect

    from minipt.models.char_lm import CharLM
    from minipt.models.gpt2 import GPT2LMHeadModel
    from minipt.models.t5 import T5ForConditionalGeneration
    from minipt.nn.sampling import DEFAULT_TOP_K

    transformers = import_transformers()
    assert DEFAULT_TOP_K == transformers.GenerationConfig._get_default_generation_params()["top_k"] == 50  # unless a generation_config.json says
    for model in (GPT2LMHeadModel, T5ForConditionalGeneration, CharLM):
        assert inspect.signature(model.generate).parameters["top_k"].default == DEFAULT_TOP_K, model
    logits = random_logits(V=30)
    for top_k in (0, None, 30, 31, 1000):
        seeded = lambda k: choose_next_token(logits, top_k=k, generator=torch.Generator().manual_seed(3))  # noqa: E731
        assert torch.equal(seeded(top_k), seeded(None)), top_k
    warper = transformers.TopKLogitsWarper(top_k=1000)
    assert torch.equal(warper(None, logits), logits)  # transformers keeps the whole vocabulary too


def test_logits_no_token_can_be_drawn_from_are_named():
    """A temperature or repetition penalty so small that the logits overflow, and a model's NaN or +inf logits,
    reached torch.multinomial's RuntimeError ("probability tensor contains either inf, nan or element < 0")."""
    logits = random_logits()
    with pytest.raises(InputError, match=r"temperature=1e-45 is so small that logits / temperature overflow float32"):
        choose_next_token(logits, temperature=1e-45)
    with pytest.raises(InputError, match=r"repetition_penalty=1e-39 .* overflow float32"):
        choose_next_token(logits.abs() + 1, repetition_penalty=1e-39, input_ids=torch.zeros(4, 1, dtype=torch.long))
    for bad in (math.nan, math.inf):
        broken = logits.clone()
        broken[2, 7] = bad
        with pytest.raises(InputError, match=r"the logits of rows \[2\] hold NaN, \+inf or only -inf"):
            choose_next_token(broken)
    masked = logits.clone()
    masked[1] = -math.inf
    with pytest.raises(InputError, match=r"rows \[1\]"):
        choose_next_token(masked)
    assert choose_next_token(logits, temperature=1e-30).shape == (4,)  # small, but finite: the argmax, drawn


def test_bad_logits_and_missing_ids_are_named():
    with pytest.raises(InputError, match=r"logits must have 2 dimensions, got shape \(5,\)"):
        choose_next_token(torch.zeros(5))
    with pytest.raises(InputError, match="logits must hold floating values, got dtype torch.int64"):
        choose_next_token(torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(InputError, match=r"input_ids holds 50, outside the table of 50 entries"):
        choose_next_token(random_logits(), repetition_penalty=1.2, input_ids=torch.full((4, 2), 50))
    with pytest.raises(InputError, match="repetition_penalty needs input_ids"):
        choose_next_token(random_logits(), repetition_penalty=1.2)
    with pytest.raises(InputError, match=r"input_ids must be integer ids of shape \(4, seq_len\)"):
        choose_next_token(random_logits(), repetition_penalty=1.2, input_ids=torch.zeros(3, 2, dtype=torch.long))


def test_the_char_lm_takes_the_penalty():
    from minipt.models.char_lm import CharLM, CharLMConfig

    model = CharLM(CharLMConfig(embed_size=8, hidden_size=16, num_layers=1, dropout=0.0)).eval()
    prompt = torch.stack([CharLM.encode("aaaa"), CharLM.encode("abcd")])  # (2, 4)
    out = model.generate(prompt, max_new_tokens=12, repetition_penalty=1.5, output_logits=True, return_dict_in_generate=True)
    ids = out.sequences
    for n, logits in enumerate(out.logits):  # each greedy byte is the argmax of its step's logits, penalised by the row so far
        penalised = apply_repetition_penalty(logits, ids[:, : 4 + n], 1.5)
        assert torch.equal(ids[:, 4 + n], penalised.argmax(-1)), n
    assert torch.equal(model.generate(prompt, max_new_tokens=12), model.generate(prompt, max_new_tokens=12, repetition_penalty=1.0))
    with pytest.raises(InputError, match="repetition_penalty"):
        model.generate(prompt, max_new_tokens=3, repetition_penalty=0)


def test_generated_ids_feed_a_computation_with_gradients():
    """generate() runs without gradients but not in inference mode: its ids (and encode()'s sentence vectors) go
    into a forward pass that is trained, as when a model scores its own samples."""
    from minipt.models.char_lm import CharLM, CharLMConfig
    from minipt.models.gpt2 import GPT2Config, GPT2LMHeadModel
    from minipt.models.t5 import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    char_lm = CharLM(CharLMConfig(embed_size=8, hidden_size=16, num_layers=1, dropout=0.0)).eval()
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=1, n_head=2)).eval()
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=24, num_layers=1, num_heads=2)).eval()
    prompt = torch.tensor([[5, 6, 7]])
    for model, out in ((char_lm, char_lm.generate(char_lm.encode("The ")[None], max_new_tokens=4)),
                       (gpt2, gpt2.generate(prompt, max_new_tokens=4)),
                       (t5, t5.generate(prompt, max_new_tokens=4))):
        assert not out.is_inference()
        logits = model(out)[0] if model is char_lm else model(out).logits if model is gpt2 else model(prompt, decoder_input_ids=out).logits
        logits.float().logsumexp(-1).mean().backward()  # inference tensors cannot be saved for backward
        assert any(p.grad is not None for p in model.parameters()), type(model).__name__
