"""Train a small GPT-2 (the architecture and the tokenizer, not the weights) on English news text, then sample.

    python examples/train_gpt2.py --quick        # 2 layers, width 128: a few minutes on 2 cores
    python examples/train_gpt2.py                # 6 layers, width 384, 1500 steps: a few hours on 2 cores

The corpus is the Lee background corpus that ships with gensim's test data
(``gensim/test/test_data/lee_background.cor``: 300 news articles, one per line,
about 60k words), read from the installed package; gensim is never imported and
nothing is downloaded. Articles are tokenized with GPT-2's byte-level BPE
(``minipt fetch gpt2-tokenizer`` builds it) and joined with ``<|endoftext|>``.

Writes to ``--out`` (default ``runs/gpt2``): ``config.json`` and
``model.safetensors`` (reload with ``GPT2LMHeadModel.from_pretrained``, or
with transformers' GPT2LMHeadModel), the tokenizer's ``vocab.json`` and
``merges.txt`` (so ``minipt generate --model runs/gpt2 "..."`` works),
``loss.png`` and ``samples.txt``.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from options import check_options, given_or  # noqa: E402

from minipt import Tokenizer  # noqa: E402
from minipt.hub import resolve
from minipt.models.gpt2 import GPT2Config, GPT2LMHeadModel
from minipt.tokenizer import BPE_MERGES, BPE_VOCAB, ENDOFTEXT

from train_char_lm import corpus_path, progress  # the same corpus and progress bar as the LSTM example


def tokenize_corpus(tokenizer: Tokenizer, path: Path) -> torch.Tensor:
    """Every article's tokens, each followed by <|endoftext|>, as one long (N,) tensor."""
    articles = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    ids = tokenizer(articles, padding=False, truncation=False, return_tensors=None)["input_ids"]
    eos = tokenizer.convert_tokens_to_ids([ENDOFTEXT])[0]
    return torch.tensor([token for article in ids for token in (*article, eos)], dtype=torch.long)


def batches(data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """Random windows of ``seq_len`` tokens (B, T); the model shifts them into next-token targets itself."""
    while True:
        starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator)
        yield torch.stack([data[s : s + seq_len] for s in starts.tolist()])


@torch.no_grad()
def evaluate(model: GPT2LMHeadModel, data: torch.Tensor, seq_len: int, max_windows: int = 32) -> float:
    """Mean next-token cross-entropy (nats) over consecutive windows of ``data``."""
    model.eval()
    n = min(max_windows, len(data) // seq_len)
    windows = data[: n * seq_len].view(n, seq_len)
    loss = sum(model(w[None], labels=w[None]).loss.item() for w in windows) / n
    model.train()
    return loss


def plot(losses: list[float], evals: list[tuple[int, float]], path: Path, title: str) -> None:
    import matplotlib  # imported only here: plotting is the example's, not the library's

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8, alpha=0.6, label="train (per step)")
    ax.plot(*zip(*evals), "o-", label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model and few steps: a few minutes on 2 cores")
    parser.add_argument("--steps", type=int, help="training steps (default 150 with --quick, else 1500)")
    parser.add_argument("--batch-size", type=int, help="windows per step (default 8 with --quick, else 16)")
    parser.add_argument("--seq-len", type=int, help="tokens per window (default 64 with --quick, else 128)")
    parser.add_argument("--n-layer", type=int, help="blocks (default 2 with --quick, else 6)")
    parser.add_argument("--n-embd", type=int, help="width (default 128 with --quick, else 384)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 2e-3 with --quick, else 6e-4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--tokenizer", default="gpt2-tokenizer", help="folder or catalogue name of GPT-2's vocab.json + merges.txt")
    parser.add_argument("--out", default="runs/gpt2", help="where the model, tokenizer, loss.png and samples.txt go")
    parser.add_argument("--prompt", action="append", help="prompt(s) to continue (repeatable)")
    parser.add_argument("--sample-length", type=int, default=60, help="new tokens per sample")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=40)
    args = parser.parse_args(argv)
    check_options(parser, args, counts=("steps", "batch_size", "seq_len", "n_layer", "n_embd", "eval_every", "sample_length"),
                  naturals=("top_k",), rates=("lr", "temperature"), out=args.out)
    steps = given_or(args.steps, 150 if args.quick else 1500)
    batch_size = given_or(args.batch_size, 8 if args.quick else 16)
    seq_len = given_or(args.seq_len, 64 if args.quick else 128)
    lr = given_or(args.lr, 2e-3 if args.quick else 6e-4)
    torch.manual_seed(args.seed)

    tokenizer = Tokenizer.from_pretrained(args.tokenizer)
    path = corpus_path()
    data = tokenize_corpus(tokenizer, path)
    split = int(0.95 * len(data))
    train, held_out = data[:split], data[split:]
    print(f"corpus: {path.name} ({len(data):,} GPT-2 tokens; {len(train):,} train, {len(held_out):,} held out)")

    n_embd = given_or(args.n_embd, 128 if args.quick else 384)
    config = GPT2Config(
        vocab_size=tokenizer.vocab_size,
        n_positions=max(256, seq_len),
        n_embd=n_embd,
        n_layer=given_or(args.n_layer, 2 if args.quick else 6),
        n_head=max(1, n_embd // 64),
        resid_pdrop=0.0 if args.quick else 0.1,
        embd_pdrop=0.0 if args.quick else 0.1,
        attn_pdrop=0.0 if args.quick else 0.1,
    )
    model = GPT2LMHeadModel(config).train()
    print(f"model: {config.n_layer} layers, width {config.n_embd}, {config.n_head} heads ({sum(p.numel() for p in model.parameters()):,} parameters, the tied embedding counted once)")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    windows = batches(train, batch_size, seq_len, torch.Generator().manual_seed(args.seed))

    losses, evals = [], [(0, evaluate(model, held_out, seq_len))]
    bar = progress(steps)
    start = time.time()
    for step in range(1, steps + 1):
        inputs = next(windows)
        loss = model(inputs, labels=inputs).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % args.eval_every == 0 or step == steps:
            evals.append((step, evaluate(model, held_out, seq_len)))
        bar.set_postfix_str(f"loss {loss.item():.3f} held-out {evals[-1][1]:.3f}")
        bar.update(1)
    bar.close()
    final = evals[-1][1]
    print(f"trained {steps} steps in {time.time() - start:.0f} s; held-out loss {evals[0][1]:.2f} -> {final:.2f} nats/token (perplexity {math.exp(final):.0f})")

    out = Path(args.out)
    model.eval().save_pretrained(out)
    source = resolve(args.tokenizer)
    for name in (BPE_VOCAB, BPE_MERGES):
        shutil.copyfile(source / name, out / name)
    plot(losses, evals, out / "loss.png", f"GPT-2 ({config.n_layer} layers, width {config.n_embd}) on the Lee news corpus")
    samples = []
    for i, prompt in enumerate(args.prompt or ["The government", "Australian police said"]):
        ids = tokenizer(prompt, padding=False)["input_ids"]
        generator = torch.Generator().manual_seed(args.seed + i)
        # a sample ends at the config's eos_token_id, <|endoftext|> (generate's default stop, as in transformers)
        tokens = model.generate(ids, max_new_tokens=args.sample_length, do_sample=True, temperature=args.temperature, top_k=args.top_k, generator=generator)
        samples.append(tokenizer.decode(tokens[0]))
    (out / "samples.txt").write_text("\n\n".join(samples) + "\n")
    print(f"saved {out}/config.json, model.safetensors, vocab.json, merges.txt, loss.png, samples.txt")
    for text in samples:
        print("---")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
