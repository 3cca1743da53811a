"""A seeded generator of damaged checkpoints, and the rule every case must obey.

Each case starts from a small, valid snapshot of one official format, damages
it one way, and loads it with the class that reads that format:

- BERT, Hugging Face layout: ``config.json`` + ``model.safetensors`` (truncated;
  bytes flipped in the length field, the header or the data; the header edited:
  a dtype, a shape, the offsets, a tensor renamed, dropped or added) or
  ``pytorch_model.bin`` (truncated, bytes flipped); ``config.json`` edited
  (wrong types, zero, negative and huge sizes, NaN, unknown names, truncated
  JSON, not an object);
- ``tokenizer.json`` (empty, truncated, bytes flipped, model removed or replaced);
- a torchvision-format ResNet ``.pth`` and g2p-en's ``.npz`` (truncated, bytes flipped).

The rule: every case ends in a ``MiniptError``, or in a load of a file that is
still valid: a model that runs, whose config says exactly what the file says.
Any other exception, a hang (each case has a generous alarm) or a jump in peak
memory fails the case.

    python tests/fuzz_checkpoints.py --cases 10000      # prints a summary by kind of damage
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import resource
import shutil
import signal
import struct
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

CASE_SECONDS = 60  # far beyond any load of these tiny files: only a hang reaches it
MEMORY_JUMP_MB = 1024  # a case that raises peak memory this much allocated for a lie in a header


class Hang(Exception):
    pass


# -- the valid snapshots ---------------------------------------------------------
TINY_BERT = dict(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, max_position_embeddings=12)
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat", "on", "mat", "##s", "hello", "world"]
G2P_SOURCE = """class G2p:
    def __init__(self):
        self.graphemes = ["<pad>", "<unk>", "</s>"] + list("abc")
        self.phonemes = ["<pad>", "<unk>", "<s>", "</s>"] + ["AA0", "B", "K"]
"""


def make_snapshots(root: Path) -> dict[str, Path]:
    """Small valid snapshots of each format under ``root``."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from minipt.models.bert import BertConfig, BertModel
    from minipt.models.g2p import G2P, G2PConfig, KEYMAP as G2P_KEYMAP
    from minipt.models.resnet import KEYMAP as RESNET_KEYMAP, ResNet, ResNetConfig
    from minipt.checkpoint import official_state_dict

    torch.manual_seed(0)
    bert = BertModel(BertConfig(**TINY_BERT)).save_pretrained(root / "bert")
    tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.save(str(bert / "tokenizer.json"))

    bin_dir = root / "bert_bin"
    bin_dir.mkdir()
    shutil.copy(bert / "config.json", bin_dir / "config.json")
    from safetensors.torch import load_file

    torch.save(load_file(bert / "model.safetensors"), bin_dir / "pytorch_model.bin")

    resnet = ResNet(ResNetConfig("basic", (1, 1, 1, 1), num_classes=4))
    (root / "resnet").mkdir()
    torch.save(official_state_dict(resnet, RESNET_KEYMAP), root / "resnet" / "resnet.pth")

    graphemes = ["<pad>", "<unk>", "</s>", "a", "b", "c"]
    phonemes = ["<pad>", "<unk>", "<s>", "</s>", "AA0", "B", "K"]
    g2p = G2P(G2PConfig(graphemes=graphemes, phonemes=phonemes, embed_size=8, hidden_size=8))
    (root / "g2p").mkdir()
    np.savez(root / "g2p" / "checkpoint20.npz", **{k: v.numpy() for k, v in official_state_dict(g2p, G2P_KEYMAP).items()})
    (root / "g2p" / "g2p.py").write_text(G2P_SOURCE)
    return {"bert": bert, "bert_bin": bin_dir, "resnet": root / "resnet", "g2p": root / "g2p"}


# -- the kinds of damage -----------------------------------------------------------
def _flip(data: bytearray, rng: random.Random, start: int = 0, end: int | None = None, count: int | None = None) -> None:
    end = len(data) if end is None else end
    for _ in range(count or rng.randint(1, 4)):
        if end > start:
            data[rng.randrange(start, end)] ^= 1 << rng.randrange(8)


def _split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _join_safetensors(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


ODD_VALUES = ["x", "", [], {}, None, True, False, 1.5, 0, -1, -7, 10**12, 2**63, float("nan"), float("inf"), -float("inf"), [3], {"a": 1}]
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "Q4", "", 7]


def damage_safetensors(path: Path, rng: random.Random) -> str:
    data = bytearray(path.read_bytes())
    kind = rng.choice(["truncate", "length", "header_bytes", "data_bytes", "dtype", "shape", "offsets", "rename", "drop", "extra", "metadata"])
    if kind == "truncate":
        del data[rng.randrange(len(data)) :]
    elif kind == "length":
        _flip(data, rng, 0, 8)
    elif kind == "header_bytes":
        (length,) = struct.unpack("<Q", data[:8])
        _flip(data, rng, 8, 8 + length)
    elif kind == "data_bytes":
        (length,) = struct.unpack("<Q", data[:8])
        _flip(data, rng, 8 + length, count=rng.randint(1, 16))
    else:
        header, body = _split_safetensors(bytes(data))
        names = [k for k in header if k != "__metadata__"]
        name = rng.choice(names)
        entry = header[name]
        if kind == "dtype":
            entry["dtype"] = rng.choice(DTYPES)
        elif kind == "shape":
            shape = list(entry["shape"])
            choice = rng.randrange(4)
            if choice == 0 and shape:
                shape[rng.randrange(len(shape))] = rng.choice([0, 1, 2, 3, 16, 10**9, 2**40, -1])
            elif choice == 1:
                shape = shape[::-1]
            elif choice == 2:
                shape = shape + [1] if rng.random() < 0.5 else shape[:-1]
            else:
                shape = [math.prod(shape)]
            entry["shape"] = shape
        elif kind == "offsets":
            start, end = entry["data_offsets"]
            entry["data_offsets"] = rng.choice([[end, start], [start, end + 4], [start + 4, end], [0, end - start], [start, 10**15], [-1, end], [start, "x"]])
        elif kind == "rename":
            header[name + rng.choice(["", "x", ".extra"]) if rng.random() < 0.5 else rng.choice(names)] = header.pop(name)
        elif kind == "drop":
            del header[name]
        elif kind == "extra":
            header[f"encoder.layer.{rng.choice([0, 2, 9])}.extra.weight"] = dict(entry)
        else:
            header["__metadata__"] = rng.choice([{"format": 1}, [1], "x", {"format": "pt", "n": None}])
        data = bytearray(_join_safetensors(header, body))
    path.write_bytes(bytes(data))
    return f"safetensors:{kind}"


def damage_bytes(path: Path, rng: random.Random, label: str) -> str:
    data = bytearray(path.read_bytes())
    if rng.random() < 0.4:
        del data[rng.randrange(len(data)) :]
        kind = "truncate"
    else:
        _flip(data, rng, count=rng.randint(1, 12))
        kind = "flip"
    path.write_bytes(bytes(data))
    return f"{label}:{kind}"


CONFIG_FIELDS = [
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "layer_norm_eps", "initializer_range", "pad_token_id", "position_embedding_type", "tie_word_embeddings",
    "classifier_dropout", "problem_type", "id2label", "model_type", "architectures", "is_decoder", "unknown_field",
]


def damage_config(path: Path, rng: random.Random) -> str:
    text = path.read_text()
    kind = rng.choice(["value", "value", "value", "drop", "truncate", "not_object", "nan_text"])
    if kind == "truncate":
        text = text[: rng.randrange(len(text))]
    elif kind == "not_object":
        text = rng.choice(["[]", "1", '"bert"', "null", "true"])
    else:
        config = json.loads(text)
        field = rng.choice(CONFIG_FIELDS)
        if kind == "drop":
            config.pop(field, None)
        elif kind == "nan_text":
            config[field] = float("nan")
        else:
            config[field] = rng.choice(ODD_VALUES + ["gelu", "relu", "mish", "gpt2", "absolute", 1, 2, 16, 1e-12, 0.5])
        text = json.dumps(config)
    path.write_text(text)
    return f"config:{kind}"


def damage_tokenizer(path: Path, rng: random.Random) -> str:
    kind = rng.choice(["empty", "truncate", "flip", "no_model", "junk_model", "no_vocab", "not_object"])
    if kind in ("truncate", "flip"):
        return "tokenizer:" + damage_bytes(path, rng, "x").split(":")[1]
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_object":
        path.write_text(rng.choice(["[]", "3", "null"]))
    else:
        tokenizer = json.loads(path.read_text())
        if kind == "no_model":
            del tokenizer["model"]
        elif kind == "junk_model":
            tokenizer["model"] = rng.choice([None, 1, "WordPiece", {"type": "Nope"}, {"type": "WordPiece"}])
        else:
            tokenizer["model"].pop("vocab", None)
        path.write_text(json.dumps(tokenizer))
    return f"tokenizer:{kind}"


# -- one case -------------------------------------------------------------------
def _check_config_matches_file(model, directory: Path) -> None:
    """A load that succeeded must say exactly what the file says (no silent coercion)."""
    written = json.loads((directory / "config.json").read_text())
    for name, value in model.config.to_dict().items():
        if name in written and name not in ("id2label", "label2id") and written[name] != value:
            raise AssertionError(f"config.json says {name} = {written[name]!r}, the loaded model has {value!r}")


def run_case(index: int, seed: int, snapshots: dict[str, Path], work: Path) -> tuple[str, str]:
    """Damage one copy of a snapshot and load it: ('error', kind) or ('loaded', kind); anything else raises."""
    from minipt.errors import MiniptError
    from minipt.models.bert import BertModel
    from minipt.models.g2p import G2P
    from minipt.models.resnet import ResNet
    from minipt.tokenizer import Tokenizer

    rng = random.Random(seed * 1_000_003 + index)
    target = rng.choices(["safetensors", "config", "bin", "tokenizer", "pth", "npz"], weights=[5, 4, 2, 2, 1, 1])[0]
    source = {"safetensors": "bert", "config": "bert", "tokenizer": "bert", "bin": "bert_bin", "pth": "resnet", "npz": "g2p"}[target]
    directory = work / f"case{index}"
    shutil.copytree(snapshots[source], directory)
    if target == "safetensors":
        kind = damage_safetensors(directory / "model.safetensors", rng)
    elif target == "config":
        kind = damage_config(directory / "config.json", rng)
    elif target == "tokenizer":
        kind = damage_tokenizer(directory / "tokenizer.json", rng)
    elif target == "bin":
        kind = damage_bytes(directory / "pytorch_model.bin", rng, "bin")
    elif target == "pth":
        kind = damage_bytes(directory / "resnet.pth", rng, "pth")
    else:
        kind = damage_bytes(directory / "checkpoint20.npz", rng, "npz")
    try:
        if target == "tokenizer":
            Tokenizer.from_pretrained(directory)(["the cat sat", "hello"])
        elif target == "pth":
            ResNet.from_pretrained(directory / "resnet.pth")(torch.zeros(1, 3, 32, 32))
        elif target == "npz":
            G2P.from_pretrained(directory)(torch.tensor([[3, 4, 2]]), torch.tensor([[2, 4]]))
        else:
            model = BertModel.from_pretrained(directory)
            model(torch.tensor([[1, 5, 7, 2]]))
            _check_config_matches_file(model, directory)
        outcome = "loaded"
    except MiniptError:
        outcome = "error"
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return outcome, kind


def run(cases: int, seed: int, work: Path, on_case=None) -> tuple[collections.Counter, list[str]]:
    """Run ``cases`` cases; returns counts by (kind, outcome) and the failures (exception, hang, memory)."""
    work.mkdir(parents=True, exist_ok=True)
    snapshots = make_snapshots(work / "snapshots")
    counts: collections.Counter = collections.Counter()
    failures: list[str] = []

    def alarm(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    try:
        for index in range(cases):
            signal.alarm(CASE_SECONDS)
            try:
                outcome, kind = run_case(index, seed, snapshots, work)
                counts[kind, outcome] += 1
            except Hang:
                failures.append(f"case {index} (seed {seed}): still running after {CASE_SECONDS} s")
            except Exception:  # the failure this generator exists to find
                failures.append(f"case {index} (seed {seed}): {traceback.format_exc(limit=-3)}")
            finally:
                signal.alarm(0)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            if peak - baseline > MEMORY_JUMP_MB:
                failures.append(f"case {index} (seed {seed}): peak memory rose {peak - baseline:.0f} MiB")
                baseline = peak
            if on_case is not None:
                on_case(index)
    finally:
        signal.signal(signal.SIGALRM, previous)
    return counts, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        counts, failures = run(args.cases, args.seed, args.work or Path(scratch))
        seconds = time.perf_counter() - start
    by_kind = collections.defaultdict(dict)
    for (kind, outcome), n in counts.items():
        by_kind[kind][outcome] = n
    print(f"{args.cases} cases, seed {args.seed}, {seconds:.0f} s: "
          f"{sum(n for (_, o), n in counts.items() if o == 'error')} refused with a MiniptError, "
          f"{sum(n for (_, o), n in counts.items() if o == 'loaded')} loaded (still valid), {len(failures)} failures")
    print(f"\n| damage | MiniptError | loaded |\n|---|---:|---:|")
    for kind in sorted(by_kind):
        print(f"| {kind} | {by_kind[kind].get('error', 0)} | {by_kind[kind].get('loaded', 0)} |")
    for failure in failures[:20]:
        print("\nFAILURE", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
