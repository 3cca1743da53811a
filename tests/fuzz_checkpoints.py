"""A seeded generator of damaged checkpoints, and the rule every case must obey.

Each case starts from a small, valid snapshot, damages it one way, and loads
it with the class that reads it. The snapshots:

- every class of every family in ``minipt.registry``: a tiny model (its
  family's ``tiny`` config, random weights) written by ``save_pretrained``,
  ``config.json`` + ``model.safetensors``. The safetensors file is truncated,
  has bytes flipped in its length field, header or data, or has its header
  edited (a dtype, a shape, the offsets, a tensor renamed, dropped or added);
  or ``config.json`` is edited (a field removed, a wrong type, a zero,
  negative or huge size, NaN, unknown names, truncated JSON, not an object).
  A new family is fuzzed as soon as it is declared;
- official formats ``save_pretrained`` does not write: BERT's
  ``pytorch_model.bin``, ``tokenizer.json`` files of the three models the
  encoder families tokenize with, WordPiece, byte-level BPE (RoBERTa's) and
  Unigram (ALBERT's) (empty, truncated, bytes flipped, model removed or
  replaced), a torchvision-format ResNet ``.pth`` and g2p-en's ``.npz``
  (truncated, bytes flipped); and the formats whose architecture is read off
  the tensors, without a ``config.json``: a torchvision-format ViT and an
  OpenAI-format CLIP (their safetensors damaged as above).

The rule: every case ends in a ``MiniptError``, or in a load of a file that is
still valid: a model that runs on its family's example input, whose config
says exactly what the file says. Any other exception, a hang (each case has a
generous alarm) or a jump in peak memory fails the case.

A case is named by its snapshot and its number; its damage depends only on
those and the seed, so a failure reruns alone with ``--only``.

    python tests/fuzz_checkpoints.py --cases 10000              # prints a summary by kind of damage
    python tests/fuzz_checkpoints.py --cases 200 --only crnn/CRNN
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import random
import re
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
FORMATS = ("bin", "tokenizer", "pth", "npz",  # official files save_pretrained does not write
           "bpe-tokenizer", "unigram-tokenizer", "vit-torchvision", "clip-openai")
TOKENIZERS = ("tokenizer", "bpe-tokenizer", "unigram-tokenizer")  # WordPiece (BERT, DistilBERT), byte-level BPE (RoBERTa), Unigram (ALBERT)
CONFIG_LESS = ("vit-torchvision", "clip-openai")  # architecture read off the tensors
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "cat", "dog", "sat", "on", "mat", "##s", "hello", "world"]
G2P_SOURCE = """class G2p:
    def __init__(self):
        self.graphemes = ["<pad>", "<unk>", "</s>"] + list("abc")
        self.phonemes = ["<pad>", "<unk>", "<s>", "</s>"] + ["AA0", "B", "K"]
"""


def model_subjects() -> dict[str, tuple]:
    """'<model_type>/<class>' -> (family, class), for every class of every declared family."""
    from minipt import registry

    return {f"{family.model_type}/{cls.__name__}": (family, cls) for family in registry.families() for cls in family.classes}


def _bert():
    from minipt import registry

    return next(family for family in registry.families() if family.model_type == "bert")


def subjects() -> list[str]:
    """Every snapshot a case can start from: each model class, then each official format."""
    return [*model_subjects(), *FORMATS]


def make_snapshot(subject: str, directory: Path) -> Path:
    """A small valid snapshot of ``subject`` in ``directory``."""
    from minipt.checkpoint import official_state_dict

    torch.manual_seed(0)
    models = model_subjects()
    if subject in models:
        family, cls = models[subject]
        return family.tiny_model(cls).save_pretrained(directory)
    directory.mkdir(parents=True)
    if subject == "bin":  # BERT's older pickle beside its config.json
        _bert().tiny_model().save_pretrained(directory)
        from safetensors.torch import load_file

        torch.save(load_file(directory / "model.safetensors"), directory / "pytorch_model.bin")
        (directory / "model.safetensors").unlink()
    elif subject in TOKENIZERS:
        _tokenizer(subject).save(str(directory / "tokenizer.json"))
    elif subject in CONFIG_LESS:
        _config_less(subject).save_pretrained(directory)
        (directory / "config.json").unlink()  # the official format has none: the loader reads the architecture off the tensors
    elif subject == "pth":
        from minipt.models.resnet import ResNet, ResNetConfig

        resnet = ResNet(ResNetConfig("basic", (1, 1, 1, 1), num_classes=4))
        torch.save(official_state_dict(resnet, ResNet.keymap()), directory / "resnet.pth")
    elif subject == "npz":
        from minipt.models.g2p import G2P, G2PConfig

        graphemes = ["<pad>", "<unk>", "</s>", "a", "b", "c"]
        phonemes = ["<pad>", "<unk>", "<s>", "</s>", "AA0", "B", "K"]
        g2p = G2P(G2PConfig(graphemes=graphemes, phonemes=phonemes, embed_size=8, hidden_size=8))
        np.savez(directory / "checkpoint20.npz", **{k: v.numpy() for k, v in official_state_dict(g2p, G2P.keymap()).items()})
        (directory / "g2p.py").write_text(G2P_SOURCE)
    else:
        raise ValueError(f"no snapshot named {subject!r}; known: {', '.join(subjects())}")
    return directory


def _tokenizer(subject: str):
    """A small tokenizers.Tokenizer of the kind ``subject`` names, with its family's special tokens and post-processing."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    if subject == "tokenizer":
        tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        return tokenizer
    if subject == "bpe-tokenizer":  # RoBERTa's: the 256 byte symbols, a few merges, <s> ... </s> around each text
        special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        vocab = {token: i for i, token in enumerate(special + sorted(pre_tokenizers.ByteLevel.alphabet()))}
        merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("c", "a"), ("ca", "t")]
        vocab.update({a + b: len(vocab) + i for i, (a, b) in enumerate(merges)})
        tokenizer = Tokenizer(models.BPE(vocab, merges))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    else:  # ALBERT's: SentencePiece's Unigram pieces with their log probabilities, [CLS] ... [SEP]
        special = ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
        pieces = [(token, 0.0) for token in special] + [("▁the", -1.0), ("▁cat", -2.0), ("▁", -2.5)] + [(c, -3.0) for c in "acehlost"]
        tokenizer = Tokenizer(models.Unigram(pieces, unk_id=1))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
        tokenizer.decoder = decoders.Metaspace()
        tokenizer.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                                 special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tokenizer.add_special_tokens(special)
    return tokenizer


def _config_less(subject: str):
    """A tiny model whose save_pretrained writes the official config-less layout (heads 64 wide, as those files imply)."""
    if subject == "vit-torchvision":
        from minipt.models.vit import ViTConfig, ViTForImageClassification

        return ViTForImageClassification(ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=1, intermediate_size=32, image_size=16,
                                                   patch_size=8, num_labels=3, layer_norm_eps=1e-6, weights_format="torchvision"))
    from minipt.models.clip import CLIPConfig, CLIPModel

    text = dict(vocab_size=40, hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=1, max_position_embeddings=8,
                bos_token_id=38, eos_token_id=2, pad_token_id=1)  # eos_token_id 2: pooled at the highest id, as OpenAI's files
    vision = dict(hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=1, image_size=16, patch_size=8)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)
    config.weights_format = "openai"
    return CLIPModel(config)


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
        names = sorted(k for k in header if k != "__metadata__")
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
        elif kind == "extra":  # a tensor the model does not have: a deeper layer, or a name beside a real one
            extra = re.sub(r"\d+", "9", name, count=1) if re.search(r"\d", name) and rng.random() < 0.5 else f"{name}.extra"
            header[extra] = dict(entry)
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


EXTRA_FIELDS = ["model_type", "architectures", "unknown_field"]  # besides the fields the file holds


def _wrong_type(value):
    """A value of another JSON type than ``value``."""
    if isinstance(value, bool):
        return [0, "true", None]
    if isinstance(value, (int, float)):
        return [str(value), [value], {"value": value}, True, None]
    if isinstance(value, str):
        return [1, [value], {value: value}, False, None]
    if isinstance(value, list):
        return [",".join(map(str, value)), len(value), {"0": value[:1]}, None]
    return [1, "x", [], None]


def _bad_size(value):
    """Zero, negative and huge versions of a size (an int, or an int inside a list)."""
    return [0, -1, -value if value else -3, 10**12, 2**63, value + 1, value * 3]


def damage_config(path: Path, rng: random.Random) -> str:
    text = path.read_text()
    kind = rng.choice(["value", "type", "size", "size", "drop", "truncate", "not_object", "nan_text"])
    if kind == "truncate":
        text = text[: rng.randrange(len(text))]
    elif kind == "not_object":
        text = rng.choice(["[]", "1", '"bert"', "null", "true", "{", ""])
    else:
        config = json.loads(text)
        fields = sorted(config) + EXTRA_FIELDS
        field = rng.choice(fields)
        value = config.get(field)
        if kind == "size":  # a size made zero, negative or huge: a top-level int, or an int in a list
            sizes = [f for f in sorted(config) if _is_int(config[f]) or (isinstance(config[f], list) and any(_is_int(v) for v in config[f]))]
            if sizes:
                field = rng.choice(sizes)
                value = config[field]
                if isinstance(value, list):
                    at = rng.choice([i for i, v in enumerate(value) if _is_int(v)])
                    value = list(value)
                    value[at] = rng.choice(_bad_size(value[at]))
                    config[field] = value
                else:
                    config[field] = rng.choice(_bad_size(value))
            else:
                config[field] = rng.choice(ODD_VALUES)
        elif kind == "type":
            config[field] = rng.choice(_wrong_type(value))
        elif kind == "drop":
            config.pop(field, None)
        elif kind == "nan_text":
            config[field] = float("nan")
        else:
            config[field] = rng.choice(ODD_VALUES + ["gelu", "relu", "mish", "gpt2", "bert", "absolute", 1, 2, 16, 1e-12, 0.5])
        text = json.dumps(config)
    path.write_text(text)
    return f"config:{kind}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    """A load that succeeded must say exactly what the file says (no silent coercion).

    A null is the one value a config may fill in, and only as its own class does for that field
    (GPT-2's ``"n_inner": null`` is 4 x n_embd): the field set to None again must build the same value."""
    written = json.loads((directory / "config.json").read_text())
    config = model.config
    for name, value in config.to_dict().items():
        if name not in written or name in ("id2label", "label2id") or written[name] == value:
            continue
        if written[name] is None and _fills_null(config, name):
            continue
        if name == "eos_token_id" and written[name] in ([], [value]) and (value is None) == (written[name] == []):
            continue  # transformers' list of stop ids read as its one id (minipt.config.first_stop_id): the same stops
        raise AssertionError(f"config.json says {name} = {written[name]!r}, the loaded model has {value!r}")


def _fills_null(config, name: str) -> bool:
    from minipt.errors import MiniptError

    try:
        return getattr(config.replace(**{name: None}), name) == getattr(config, name)
    except MiniptError:  # the field takes no null: the load should have refused it
        return False


def _rng(seed: int, subject: str, index: int) -> random.Random:
    return random.Random(f"{seed}/{subject}/{index}")  # a string seed: the same case in every process and selection


def run_case(subject: str, index: int, seed: int, snapshot: Path, work: Path) -> tuple[str, str]:
    """Damage one copy of ``subject``'s snapshot and load it: ('error', kind) or ('loaded', kind); anything else raises."""
    from minipt.errors import MiniptError

    rng = _rng(seed, subject, index)
    directory = work / f"case{index}"
    shutil.copytree(snapshot, directory)
    models = model_subjects()
    try:
        if subject in models:
            if rng.random() < 0.5:
                kind = damage_safetensors(directory / "model.safetensors", rng)
            else:
                kind = damage_config(directory / "config.json", rng)
        elif subject in CONFIG_LESS:
            kind = damage_safetensors(directory / "model.safetensors", rng)
        elif subject == "bin":
            kind = damage_bytes(directory / "pytorch_model.bin", rng, "bin")
        elif subject in TOKENIZERS:
            kind = damage_tokenizer(directory / "tokenizer.json", rng)
        elif subject == "pth":
            kind = damage_bytes(directory / "resnet.pth", rng, "pth")
        else:
            kind = damage_bytes(directory / "checkpoint20.npz", rng, "npz")
        try:
            load_and_run(subject, directory)
            outcome = "loaded"
        except MiniptError:
            outcome = "error"
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return outcome, kind


def load_and_run(subject: str, directory: Path) -> None:
    """Load the (damaged) snapshot with the class that reads it, and use what loaded."""
    models = model_subjects()
    if subject in models:
        family, cls = models[subject]
        model = cls.from_pretrained(directory)
        args, kwargs = family.inputs(cls)
        with torch.no_grad():
            model(*args, **kwargs)
        _check_config_matches_file(model, directory)
    elif subject == "bin":
        bert = _bert()
        model = bert.classes[0].from_pretrained(directory)
        args, kwargs = bert.inputs(bert.classes[0])
        with torch.no_grad():
            model(*args, **kwargs)
        _check_config_matches_file(model, directory)
    elif subject in TOKENIZERS:
        from minipt.tokenizer import Tokenizer

        Tokenizer.from_pretrained(directory)(["the cat sat", "hello 🙂"])
    elif subject == "vit-torchvision":
        from minipt.models.vit import ViTForImageClassification

        with torch.no_grad():
            ViTForImageClassification.from_pretrained(directory)(torch.zeros(1, 3, 16, 16))
    elif subject == "clip-openai":
        from minipt.models.clip import CLIPModel

        with torch.no_grad():
            CLIPModel.from_pretrained(directory)(torch.tensor([[38, 5, 7, 39]]), torch.zeros(1, 3, 16, 16))
    elif subject == "pth":
        from minipt.models.resnet import ResNet

        ResNet.from_pretrained(directory / "resnet.pth")(torch.zeros(1, 3, 32, 32))
    else:
        from minipt.models.g2p import G2P

        G2P.from_pretrained(directory)(torch.tensor([[3, 4, 2]]), torch.tensor([[2, 4]]))


def _explain(error: Exception) -> str:
    """The exception, and the deepest line of minipt it came through (torch's own frames say little)."""
    frames = traceback.extract_tb(error.__traceback__)
    ours = [frame for frame in frames if "/minipt/" in frame.filename or "fuzz_checkpoints" in frame.filename] or frames
    message = (str(error).splitlines() or [""])[0][:300]
    where = f"\n  through {ours[-1].filename}:{ours[-1].lineno} ({ours[-1].name}): {ours[-1].line}" if ours else ""
    return f"{type(error).__name__}: {message}{where}"


def run(cases: int, seed: int, work: Path, only: list[str] | None = None, on_case=None) -> tuple[collections.Counter, list[str]]:
    """Run ``cases`` cases, spread in turn over the snapshots (``only``: these; default: every one).

    Returns counts by (snapshot, kind of damage, outcome) and the failures (exception, hang, memory)."""
    chosen = list(only) if only else subjects()
    unknown = sorted(set(chosen) - set(subjects()))
    if unknown:
        raise ValueError(f"no snapshot named {', '.join(unknown)}; known: {', '.join(subjects())}")
    work.mkdir(parents=True, exist_ok=True)
    snapshots = {subject: make_snapshot(subject, work / "snapshots" / subject.replace("/", "-")) for subject in chosen}
    counts: collections.Counter = collections.Counter()
    failures: list[str] = []

    def alarm(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    try:
        for case in range(cases):
            subject, index = chosen[case % len(chosen)], case // len(chosen)
            name = f"{subject} case {index} (seed {seed})"
            signal.alarm(CASE_SECONDS)
            try:
                outcome, kind = run_case(subject, index, seed, snapshots[subject], work)
                counts[subject, kind, outcome] += 1
            except Hang:
                failures.append(f"{name}: still running after {CASE_SECONDS} s")
            except Exception as error:  # the failure this generator exists to find
                failures.append(f"{name}: {_explain(error)}")
            finally:
                signal.alarm(0)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            if peak - baseline > MEMORY_JUMP_MB:
                failures.append(f"{name}: peak memory rose {peak - baseline:.0f} MiB")
                baseline = peak
            if on_case is not None:
                on_case(case)
    finally:
        signal.signal(signal.SIGALRM, previous)
    return counts, failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", action="append", default=None, metavar="SNAPSHOT",
                        help="a snapshot to damage (repeatable): a model class as model_type/Class, or " + ", ".join(FORMATS))
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        counts, failures = run(args.cases, args.seed, args.work or Path(scratch), args.only)
        seconds = time.perf_counter() - start
    refused = sum(n for (_, _, o), n in counts.items() if o == "error")
    loaded = sum(n for (_, _, o), n in counts.items() if o == "loaded")
    print(f"{args.cases} cases, seed {args.seed}, {seconds:.0f} s: {refused} refused with a MiniptError, "
          f"{loaded} loaded (still valid), {len(failures)} failures")
    for column, title in ((1, "damage"), (0, "snapshot")):
        table = collections.defaultdict(collections.Counter)
        for key, n in counts.items():
            table[key[column]][key[2]] += n
        print(f"\n| {title} | MiniptError | loaded |\n|---|---:|---:|")
        for row in sorted(table):
            print(f"| {row} | {table[row]['error']} | {table[row]['loaded']} |")
    for failure in failures[:20]:
        print("\nFAILURE", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
