"""Looking inside two models with one API (minipt.probe): a Transformer's attention and an LSTM's memory.

1. all-MiniLM-L6-v2 (real weights): capture every layer's attention maps for
   two sentences, show where one head looks, then silence each head of one
   layer in turn and measure how much the sentences' cosine similarity moves.
2. A byte-level LSTM language model (``runs/char_lm`` if it exists, else one
   trained here for a few hundred steps on gensim's Lee news corpus): find the
   cell-state unit that varies most over a prompt, pin it to a fixed value at
   every step, and compare the generated text with and without the patch.

    python examples/look_inside.py [--layer 2] [--steps 300]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

from minipt import SentenceEncoder, probe
from minipt.models.char_lm import CharLM, CharLMConfig


# -- 1. attention in all-MiniLM-L6-v2 --------------------------------------------------------
def attention(layer: int) -> None:
    """Attention maps of every layer, one head's focus, and each head of ``layer`` silenced in turn."""
    encoder = SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")
    bert = encoder.encoder
    bert.set_backend("math")  # attention probabilities exist only where attention is written out
    pair = ["A man is playing a guitar.", "Someone plays an instrument."]

    with probe.capture(bert, "layers.*.attn.probs") as seen:
        vectors = encoder.encode(pair)  # (2, 384), unit norm
    baseline = (vectors[0] @ vectors[1]).item()
    maps = seen[f"layers.{layer}.attn.probs"]  # (B, heads, T, T); encode() sorts by length, so row 0 is the longer sentence
    print(f"all-MiniLM-L6-v2: cosine similarity {baseline:.4f} for {pair}")
    print(f"captured {len(seen)} attention maps, layer {layer}: {tuple(maps.shape)} (batch, heads, queries, keys)")

    batch = encoder.tokenizer([pair[0]])
    words = [encoder.tokenizer.decode([i], skip_special_tokens=False) for i in batch["input_ids"][0].tolist()]
    first = maps[0, :, : len(words), : len(words)]  # the first sentence's map (it is the longer one)
    head = int(first.max(-1).values.mean(-1).argmax())  # the most focused head: highest average peak probability
    print(f"\nlayer {layer}, head {head} (its most focused head), where each token of {pair[0]!r} looks most:")
    for query, word in enumerate(words):
        key = int(first[head, query].argmax())
        print(f"  {word:>12} -> {words[key]:<12} {first[head, query, key].item():.2f}")

    print(f"\nsilencing one head of layer {layer} at a time (its output zeroed before the output projection):")
    heads = maps.shape[1]
    for h in range(heads):
        silence = lambda out, h=h: out.index_fill(1, torch.tensor([h]), 0.0)  # noqa: E731  (B, heads, T, head_dim)
        with probe.capture(bert, edit={f"layers.{layer}.attn.heads": silence}):
            ablated = encoder.encode(pair)
        change = (ablated[0] @ ablated[1]).item() - baseline
        print(f"  head {h:2d}: similarity {baseline + change:.4f} ({change:+.4f}) " + "#" * min(60, int(abs(change) * 2000)))


# -- 2. the cell state of an LSTM language model ---------------------------------------------
def lee_corpus() -> bytes:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the corpus ships with gensim: pip install gensim (it is only read, never imported)")
    return (Path(list(spec.submodule_search_locations)[0]) / "test/test_data/lee_background.cor").read_bytes()


def char_lm(steps: int) -> CharLM:
    if (Path("runs/char_lm") / "config.json").is_file():
        print("\nloading the LSTM language model from runs/char_lm")
        return CharLM.from_pretrained("runs/char_lm")
    print(f"\ntraining a small LSTM language model for {steps} steps on gensim's Lee corpus (no runs/char_lm found)")
    torch.manual_seed(0)
    data = torch.tensor(list(lee_corpus()), dtype=torch.long)
    model = CharLM(CharLMConfig(embed_size=32, hidden_size=128, num_layers=1, dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    start = time.time()
    for step in range(steps):
        starts = torch.randint(0, len(data) - 65, (16,), generator=generator).tolist()
        windows = torch.stack([data[s : s + 65] for s in starts])  # (16, 65): inputs and next-byte targets
        logits, _ = model(windows[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 100 == 0:
            print(f"  step {step + 1}: loss {loss.item():.2f} nats/byte ({time.time() - start:.0f} s)")
    return model.eval()


def cell_state(steps: int) -> None:
    model = char_lm(steps)
    model.lstm.backend = "math"  # per-step states exist only where the cells run one step at a time
    last = model.config.num_layers - 1
    prompt = "The government said on Tuesday that "
    with probe.capture(model, f"lstm.layers.{last}.c") as seen, torch.no_grad():
        model(model.encode(prompt)[None])
    cells = seen[f"lstm.layers.{last}.c"][:, 0]  # (T, hidden): the cell state after every byte of the prompt
    unit = int(cells.tanh().std(0).argmax())  # h = o * tanh(c): a unit far in tanh's flat tails shows nothing
    low, high = cells[:, unit].min().item(), cells[:, unit].max().item()
    value = -3.0 if cells[:, unit].mean() > 0 else 3.0  # the far side of its usual range
    print(f"\ncell unit {unit} of layer {last} swings most over the prompt ({low:+.2f} .. {high:+.2f}); pinned to {value:+.1f} at every step:")

    pin = lambda c: c.index_fill(1, torch.tensor([unit]), value)  # noqa: E731  (B, hidden), every step
    sample = lambda: model.decode(model.generate(model.encode(prompt)[None], max_new_tokens=160, do_sample=True, temperature=0.6, top_k=10, seed=0)[0])  # noqa: E731
    plain = sample()
    with probe.capture(model, edit={f"lstm.layers.{last}.c": pin}):
        patched = sample()
    print(f"\n  as trained: {plain!r}\n  patched:    {patched!r}")
    same = sum(a == b for a, b in zip(plain, patched))
    print(f"\n  the two agree on {same} of {len(plain)} characters (the prompt is {len(prompt)})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", type=int, default=2, help="the BERT layer whose heads are silenced one by one, counted from 0 (layers.N)")
    parser.add_argument("--steps", type=int, default=300, help="training steps of the LSTM when runs/char_lm does not exist")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps must be a positive integer, got {args.steps}")
    layers = SentenceEncoder.from_pretrained("all-MiniLM-L6-v2").encoder.config.num_hidden_layers
    if not 0 <= args.layer < layers:
        parser.error(f"--layer must be a layer of all-MiniLM-L6-v2, 0 to {layers - 1}, got {args.layer}")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    attention(args.layer)
    cell_state(args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
