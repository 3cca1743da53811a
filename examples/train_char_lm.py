"""Train minipt's byte-level LSTM language model on English news text, then sample from it.

    python examples/train_char_lm.py --quick        # about a minute on a CPU core
    python examples/train_char_lm.py                # a 2-layer model, 2000 steps: about half an hour

The corpus is the Lee background corpus that ships with gensim's test data
(``gensim/test/test_data/lee_background.cor``: 300 news articles, one per line,
about 60k words). gensim is LGPL-2.1; the corpus is news text redistributed
with its tests. It is found with ``importlib.util.find_spec("gensim")``; gensim
itself is never imported and nothing is downloaded.

Writes to ``--out`` (default ``runs/char_lm``): ``config.json`` and
``model.safetensors`` (reload with ``CharLM.from_pretrained``), ``loss.png``,
``samples.txt`` and ``results.md``: held-out loss and size of the trained model
in float32 and with int8 LSTM and Linear weights (``minipt.quantize``).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).parent))
from options import check_options, given_or  # noqa: E402

from minipt.models.char_lm import CharLM, CharLMConfig  # noqa: E402
from minipt.quantize import quantize_int8, size_bytes

CORPUS = "test/test_data/lee_background.cor"


def corpus_path() -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the corpus ships with gensim: pip install gensim (it is only read, never imported)")
    path = Path(list(spec.submodule_search_locations)[0]) / CORPUS
    if not path.is_file():
        sys.exit(f"{path} is missing from this gensim installation")
    return path


def progress(total: int):
    """tqdm when it is installed, else a plain one-line bar."""
    try:
        from tqdm import tqdm

        return tqdm(total=total, unit="step", dynamic_ncols=True)
    except ImportError:
        return _PlainBar(total)


class _PlainBar:
    def __init__(self, total: int):
        self.total, self.done, self.start, self.postfix = total, 0, time.time(), ""

    def update(self, n: int = 1) -> None:
        self.done += n
        filled = int(30 * self.done / self.total)
        rate = self.done / max(time.time() - self.start, 1e-9)
        print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {rate:.1f} step/s {self.postfix}", end="", flush=True)

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text

    def close(self) -> None:
        print()


def batches(data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """Random windows of ``seq_len + 1`` bytes: inputs and next-byte targets (B, T)."""
    while True:
        starts = torch.randint(0, len(data) - seq_len - 1, (batch_size,), generator=generator)
        windows = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()])
        yield windows[:, :-1], windows[:, 1:]


@torch.no_grad()
def evaluate(model: CharLM, data: torch.Tensor, seq_len: int) -> float:
    """Mean next-byte cross-entropy (nats) over all of ``data``, cut into consecutive windows."""
    was_training = model.training
    model.eval()
    n = (len(data) - 1) // seq_len
    inputs = data[: n * seq_len].view(n, seq_len)
    targets = data[1 : n * seq_len + 1].view(n, seq_len)
    logits, _ = model(inputs)
    model.train(was_training)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)).item()


def compare_int8(model: CharLM, held_out: torch.Tensor, seq_len: int) -> str:
    """A markdown table: held-out loss, size and evaluation time of ``model`` in float32 and in int8."""
    rows = ["| weights | held-out loss (nats/byte) | bits/byte | evaluation (s) | size (MB) |", "|---|---:|---:|---:|---:|"]
    for name, candidate in (("float32", model), ("int8 LSTM and Linear", quantize_int8(model))):
        start = time.perf_counter()
        loss = evaluate(candidate, held_out, seq_len)
        seconds = time.perf_counter() - start
        rows.append(f"| {name} | {loss:.3f} | {loss / math.log(2):.3f} | {seconds:.1f} | {size_bytes(candidate) / 1e6:.2f} |")
    return "\n".join(rows)


def plot(losses: list[float], evals: list[tuple[int, float]], path: Path) -> None:
    import matplotlib  # imported only here: plotting is the example's, not the library's

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(losses) + 1), losses, lw=0.8, alpha=0.6, label="train (per step)")
    if evals:
        ax.plot(*zip(*evals), "o-", label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats per byte)")
    ax.set_title("byte-level LSTM on the Lee news corpus")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small model and few steps: about a minute on 2 cores")
    parser.add_argument("--steps", type=int, help="training steps (default 400 with --quick, else 2000)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, help="bytes per training window (default 96 with --quick, else 128)")
    parser.add_argument("--hidden-size", type=int, help="LSTM width (default 256 with --quick, else 384)")
    parser.add_argument("--num-layers", type=int, help="LSTM layers (default 1 with --quick, else 2)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 1e-2 with --quick, else 4e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--out", default="runs/char_lm", help="where the model, loss.png and samples.txt go")
    parser.add_argument("--prompt", action="append", help="prompt(s) to continue (repeatable)")
    parser.add_argument("--sample-length", type=int, default=300)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    check_options(parser, args, counts=("steps", "batch_size", "seq_len", "hidden_size", "num_layers", "eval_every", "sample_length", "threads"),
                  naturals=("top_k",), rates=("lr", "temperature"), out=args.out)
    steps = given_or(args.steps, 400 if args.quick else 2000)
    seq_len = given_or(args.seq_len, 96 if args.quick else 128)
    lr = given_or(args.lr, 1e-2 if args.quick else 4e-3)
    # A small LSTM multiplies small matrices at every time step; there one thread is
    # faster than two, which spend the step synchronising (and stall when the CPU is shared).
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    path = corpus_path()
    data = torch.tensor(list(path.read_bytes()), dtype=torch.long)
    split = int(0.95 * len(data))
    train, held_out = data[:split], data[split:]
    print(f"corpus: {path.name} ({len(data):,} bytes; {len(train):,} train, {len(held_out):,} held out)")

    config = CharLMConfig(
        hidden_size=given_or(args.hidden_size, 256 if args.quick else 384),
        num_layers=given_or(args.num_layers, 1 if args.quick else 2),
        dropout=0.0 if args.quick else 0.1,
    )
    model = CharLM(config)
    print(f"model: {config} ({sum(p.numel() for p in model.parameters()):,} parameters)")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    windows = batches(train, args.batch_size, seq_len, torch.Generator().manual_seed(args.seed))

    losses, evals = [], [(0, evaluate(model, held_out, seq_len))]
    bar = progress(steps)
    start = time.time()
    for step in range(1, steps + 1):
        inputs, targets = next(windows)
        logits, _ = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, config.vocab_size), targets.reshape(-1))
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
    elapsed = time.time() - start
    final = evals[-1][1]
    print(f"trained {steps} steps in {elapsed:.0f} s; held-out loss {evals[0][1]:.3f} -> {final:.3f} nats/byte ({final / math.log(2):.2f} bits/byte)")

    out = Path(args.out)
    model.save_pretrained(out)
    plot(losses, evals, out / "loss.png")
    model.eval()
    comparison = compare_int8(model, held_out, seq_len)
    (out / "results.md").write_text(comparison + "\n")
    print(comparison)
    prompts = args.prompt or ["The government ", "Australian police "]
    samples = [
        model.decode(model.generate(model.encode(p)[None], max_new_tokens=args.sample_length, do_sample=True,
                                    temperature=args.temperature, top_k=args.top_k, seed=args.seed + i)[0])
        for i, p in enumerate(prompts)
    ]
    (out / "samples.txt").write_text("\n\n".join(samples) + "\n")
    print(f"saved {out}/config.json, model.safetensors, loss.png, samples.txt, results.md")
    for text in samples:
        print("---")
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
