"""The ``minipt`` command line.

    minipt demo                  sentence embeddings from real pretrained weights
    minipt embed TEXT...         print or save embeddings (--out file.npy)
    minipt inspect PATH          per-module shapes, parameters and FLOPs, and the key map of a checkpoint
    minipt diff PATH [--input X]  where a model departs from its reference implementation, point by point (--plot diff.png)
    minipt attention PATH TEXT   attention maps of a BERT model as a PNG (--layer, --heads, --out)
    minipt features IMAGE        feature maps of a CNN stage as a PNG (--model, --stage, --out)
    minipt classify IMAGE...     top-5 ImageNet classes with EfficientNet-Lite0 (--model)
    minipt zero-shot IMAGE... --labels "a cat,a dog" --model PATH   each label's probability per image with a CLIP model
    minipt ocr IMAGE             the words in a photo, line by line, with their boxes and confidences (--boxes out.png)
    minipt fetch NAME|--all      place a catalogued checkpoint under weights/ and verify it
    minipt generate --model PATH PROMPT   continue a prompt with a GPT-2 checkpoint, or answer it with a T5 one, streaming tokens

Each command is a function ``cmd_<name>(args)``; ``COMMANDS`` lists them with
their arguments, each with a help line (``minipt COMMAND --help``). Layers,
heads and stages are counted from 0, as minipt's names (``layers.0``) count them.

Before a command does any work, ``check_arguments`` checks what was typed
(``ARGUMENT_CHECKS``: numbers through ``minipt.checks``, texts that must be
UTF-8, output files whose folder must exist and be writable) and that the
optional packages the command needs are installed (``NEEDS``). Every error a
user can cause is one line, ``minipt COMMAND: what is wrong``, and exit
status 1; argparse's own usage errors keep its status 2.
"""

from __future__ import annotations

import argparse
import os
import sys

DEFAULT_MODEL = "all-MiniLM-L6-v2"


def cmd_demo(args) -> int:
    import time

    from .demo import DEMO_SENTENCES
    from .models.sentence import SentenceEncoder
    from .reference import import_transformers, layer_diffs

    start = time.perf_counter()
    encoder = SentenceEncoder.from_pretrained(args.model)
    print(f"loaded {args.model} ({_count(encoder.encoder):,} parameters) in {time.perf_counter() - start:.2f} s")
    embeddings = encoder.encode(DEMO_SENTENCES)
    similarity = embeddings @ embeddings.T  # unit vectors: dot product = cosine similarity
    print(f"\ncosine similarity of {len(DEMO_SENTENCES)} sentences ({embeddings.shape[1]}-dimensional embeddings):\n")
    for i, sentence in enumerate(DEMO_SENTENCES):
        print(f"  [{i}] {sentence}")
    print("\n      " + "".join(f"[{j}]   " for j in range(len(DEMO_SENTENCES))))
    for i, row in enumerate(similarity.tolist()):
        print(f"  [{i}] " + " ".join(f"{v:5.2f}" for v in row))
    if import_transformers() is None:
        print("\n(install transformers to compare against the reference implementation)")
    else:
        report = layer_diffs(encoder.encoder, args.model, DEMO_SENTENCES)
        print("\nmax abs difference against transformers' BertModel on the same weights and sentences (minipt diff shows every point):")
        for row in report.rows:
            if row.name.count(".") <= 2 and row.name.endswith(".out"):  # embeddings.out, layers.{i}.out, pooler.out
                print(f"  {row.name:<14} {row.max_abs:.2e}")
        first = report.first_divergence
        print(f"  first divergence: {first.name}" if first else f"  all {len(report.rows)} points within {report.rtol:.0e}")
    _demo_photos()
    return 0


def _demo_photos() -> None:
    import importlib.util

    from .demo import demo_photos
    from .errors import CheckpointNotFoundError
    from .models.efficientnet import classify

    photos = demo_photos()
    if not photos or importlib.util.find_spec("PIL") is None:
        print("\n(install pillow and scikit-image to see EfficientNet-Lite0 classify real photos)")
        return
    try:
        results = classify(photos, top=3)
    except CheckpointNotFoundError as err:
        print(f"\n(no EfficientNet-Lite0 weights: {err})")
        return
    print("\nEfficientNet-Lite0 on the official ImageNet weights, top 3 classes:\n")
    for path, classes in zip(photos, results):
        print(f"  {path.parent.parent.name}/{path.parent.name}/{path.name}: " + ", ".join(f"{name} {p:.0%}" for name, p in classes))


def cmd_embed(args) -> int:
    from .models.sentence import SentenceEncoder

    encoder = SentenceEncoder.from_pretrained(args.model)  # a pipeline's pooling, or a plain encoder's mean
    embeddings = encoder.encode(args.texts, batch_size=args.batch_size, normalize=False if args.no_normalize else None)
    if args.out:
        import numpy as np

        from .files import atomic_path

        with atomic_path(args.out) as temporary, open(temporary, "wb") as file:
            np.save(file, embeddings.numpy())  # to the file object: numpy adds no .npy to the name given
        print(f"saved {tuple(embeddings.shape)} embeddings to {args.out}")
        return 0
    for text, vector in zip(args.texts, embeddings.tolist()):
        print(f"{text!r}: [{', '.join(f'{v:.4f}' for v in vector[:6])}, ...] ({len(vector)} values)")
    return 0


def cmd_inspect(args) -> int:
    import torch

    from .checkpoint import Checkpoint, model_keys
    from .hub import resolve
    from .registry import model_class_for
    from .summary import summary

    path = resolve(args.path)
    checkpoint = Checkpoint(path)  # reads names and shapes only
    cls = model_class_for(path, checkpoint)
    config = cls.load_config(path, checkpoint)
    with torch.device("meta"):
        model = cls(config)
    report = summary(model, input_size=args.input_size, depth=args.depth)  # shapes only: no weight is read
    print(f"{cls.__name__} from {path}\n\n{report}")
    keymap = cls.keymap(config)
    print(f"\nkey map ({len(checkpoint.keys())} tensors in the checkpoint):")
    for row in keymap.table(list(model_keys(model)), checkpoint.keys()):
        if row.status == "missing":
            print(f"  {row.official or '(no official name)'} (absent) -> {row.minipt}  (MISSING)")
            continue
        shown = row.file_key if row.file_key == row.official else f"{row.file_key} (= {row.official})"
        if row.status == "mapped":
            note = f"  [{row.transform}]" if row.transform else ""
        else:
            note = f"  (tied: {keymap.tied[row.official]})" if row.status == "tied" else f"  ({row.status.upper() if row.status == 'unexpected' else row.status})"
        print(f"  {shown} {tuple(checkpoint.shape(row.file_key))} -> {row.minipt or '-'}{note}")
    return 0


def cmd_diff(args) -> int:
    from .checkpoint import Checkpoint
    from .errors import InputError
    from .hub import resolve
    from .registry import model_class_for
    from .reference import layer_diffs

    path = resolve(args.path)
    cls = model_class_for(path, Checkpoint(path))  # names and shapes only
    model = cls.from_pretrained(path)
    inputs = args.input
    if inputs and cls.__name__ in ("CharLM", "CRNN", "G2P"):  # one text, line or word
        if len(inputs) > 1:
            raise InputError(f"minipt diff compares a {cls.__name__} on one --input, got {len(inputs)}")
        inputs = inputs[0]
    report = layer_diffs(model, path, inputs)
    print(report)
    if args.plot:
        from .plot import layer_diff, save_png

        save_png(layer_diff(report), args.plot)
        print(f"wrote {args.plot}")
    return 0 if report.first_divergence is None else 3


def _bert_at(name_or_path):
    """A BertModel and its tokenizer from a BERT checkpoint (with any head), or a ConfigError saying what the file is."""
    from .checkpoint import Checkpoint
    from .errors import ConfigError
    from .hub import resolve
    from .registry import model_class_for
    from .models.bert import BertForMaskedLM, BertForSequenceClassification, BertModel
    from .tokenizer import Tokenizer

    path = resolve(name_or_path)
    found = model_class_for(path, Checkpoint(path))  # names and shapes only
    if not issubclass(found, (BertModel, BertForMaskedLM, BertForSequenceClassification)):
        raise ConfigError(f"{path} holds a {found.__name__} checkpoint; attention maps are drawn for BERT encoders")
    return BertModel.from_pretrained(path).eval(), Tokenizer.from_pretrained(path)


def cmd_attention(args) -> int:
    import torch

    from .plot import attention_maps, save_png

    model, tokenizer = _bert_at(args.path)
    batch = tokenizer([args.text])
    with torch.inference_mode():
        out = model(**batch, output_attentions=True)
    tokens = [tokenizer.backend.id_to_token(i) for i in batch["input_ids"][0].tolist()]
    heads = "mean" if args.heads == "mean" else _numbers(args.heads, "--heads")
    save_png(attention_maps(out.attentions, tokens, layers=_numbers(args.layer, "--layer"), heads=heads), args.out)
    whole = len(tokenizer([args.text], truncation=False)["input_ids"][0])
    specials = whole - len(tokenizer([args.text], truncation=False, add_special_tokens=False)["input_ids"][0])
    cut = (f" (the text's first {len(tokens) - specials} of {whole - specials} tokens: the tokenizer cuts at {len(tokens)} "
           "with its special tokens)") if whole > len(tokens) else ""
    print(f"wrote {args.out}: attention of {len(tokens)} tokens{cut}, layer(s) {args.layer or 'all'}, heads {args.heads or 'all'}")
    return 0


def cmd_features(args) -> int:
    import torch

    from .checkpoint import Checkpoint
    from .errors import ConfigError, InputError
    from .hub import resolve
    from .registry import model_class_for
    from .models.efficientnet import EfficientNet
    from .models.resnet import ResNet
    from .plot import feature_maps, save_png
    from .vision import image_batch

    path = resolve(args.model)
    cls = model_class_for(path, Checkpoint(path))
    if not issubclass(cls, (EfficientNet, ResNet)):
        raise ConfigError(f"{path} holds a {cls.__name__} checkpoint; feature maps are drawn for ResNet and EfficientNet")
    model = cls.from_pretrained(path).eval()
    stages = [name for name in model.transfer_stages if name.startswith("stages.")]
    count = len(model.stages) if isinstance(model, ResNet) else len(stages)
    if not 0 <= args.stage < count:
        raise InputError(f"--stage {args.stage} does not exist: {cls.__name__} has stages 0..{count - 1}")
    if isinstance(model, ResNet):
        stage = model.stages[args.stage]
        pixels = image_batch([args.image], resize=256, crop=224)  # (1, 3, 224, 224) in 0..255, as drawn behind the maps
    else:
        stage = model.get_submodule(model.transfer_stages[f"stages.{args.stage}"][-1])  # the stage's last block
        pixels = image_batch([args.image], resize=model.config.resize, crop=model.config.crop)
    x = model.preprocess([args.image])
    captured = []
    handle = stage.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        handle.remove()
    maps = captured[0][0]  # (C, H, W)
    shown = min(args.channels, maps.shape[0])  # --channels above the stage's width shows them all
    title = f"{cls.__name__} stage {args.stage}: {maps.shape[0]} channels of {maps.shape[1]}x{maps.shape[2]}, the {shown} most active"
    save_png(feature_maps(maps, channels=shown, image=pixels[0], title=title), args.out)
    print(f"wrote {args.out}: {title}")
    return 0


def _numbers(text: str | None, option: str) -> list[int] | None:
    """"2" or "0,3,5" -> [2] or [0, 3, 5]; None stays None (all)."""
    from .errors import InputError

    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise InputError(f"{option} {text!r}: give numbers counted from 0, such as 2 or 0,3,5") from None


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- what is checked before a command runs -------------------------------------------
def _output_file(option: str, what: str, suffix: str | None = None):
    """A check that a file can be written at the path given: not a folder, in a folder that exists and is writable,
    and named with ``suffix`` where the file has one format (a picture is a PNG file)."""

    def check(path: str) -> str:
        from .errors import InputError

        folder = os.path.dirname(path) or "."
        if not path:
            reason = "no file named"
        elif os.path.isdir(path):
            reason = "it is a folder"
        elif not os.path.isdir(folder):
            reason = f"no folder {folder}"
        elif not os.access(folder, os.W_OK | os.X_OK):
            reason = f"the folder {folder} is not writable"
        elif suffix is not None and not path.lower().endswith(suffix):
            reason = f"it is written as a {suffix[1:].upper()} file: name it {suffix}"
        else:
            return path
        raise InputError(f"{option} {path or repr(path)}: cannot write {what} ({reason})")

    return check


def _text(option: str, *, or_path: bool = False):
    """A check that a text typed on the command line is UTF-8 (an undecodable byte arrives as a lone surrogate);
    where ``or_path``, a path that exists is taken as it is."""

    def check(text: str) -> str:
        from .errors import InputError

        if or_path and os.path.exists(text):
            return text
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            shown = ascii(text if len(text) <= 60 else text[:57] + "...")
            raise InputError(f"{option} {shown} is not UTF-8 text (character {err.start}); check the terminal's encoding") from None
        return text

    return check


def _integer(option: str, low: int, high: int | None = None):
    from .checks import check_int

    return lambda value: check_int(option, value, low=low, high=high)


# (command or None for every command, argument's dest) -> the check of its value, run before the command's work
ARGUMENT_CHECKS: dict = {
    (None, "batch_size"): _integer("--batch-size", 1),
    (None, "depth"): _integer("--depth", 0),
    (None, "stage"): _integer("--stage", 0),
    (None, "channels"): _integer("--channels", 1),
    (None, "top"): _integer("--top", 1),
    (None, "max_new_tokens"): _integer("--max-new-tokens", 1),
    (None, "max_length"): _integer("--max-length", 1),
    (None, "num_beams"): _integer("--num-beams", 1),
    (None, "seed"): _integer("--seed", 0, 2**64 - 1),  # what a torch.Generator takes
    ("embed", "out"): _output_file("--out", "it"),
    ("attention", "out"): _output_file("--out", "the picture", ".png"),
    ("features", "out"): _output_file("--out", "the picture", ".png"),
    ("diff", "plot"): _output_file("--plot", "the picture", ".png"),
    ("ocr", "boxes"): _output_file("--boxes", "the picture", ".png"),
    ("zero-shot", "labels"): _text("--labels"),
    ("zero-shot", "templates"): _text("--templates"),
    (None, "texts"): _text("text"),
    (None, "text"): _text("text"),
    (None, "prompt"): _text("prompt"),
    (None, "input"): _text("--input", or_path=True),
}

# import name -> what installs it
INSTALL = {
    "PIL": "pip install pillow",
    "matplotlib": 'pip install "minipt[plot]"',
    "transformers": "pip install transformers",
    "torchvision": "pip install torchvision",
    "timm": "pip install timm",
    "sentence_transformers": "pip install sentence-transformers",
    "onnxruntime": 'pip install "minipt[onnx]"',
    "open_clip": "pip install open_clip_torch",
    "easyocr": "pip install easyocr",
    "skimage": "pip install scikit-image",
    "scipy": 'pip install "minipt[ocr]"',
}
# command -> the optional packages it cannot run without (diff's reference package depends on the checkpoint: it says so itself)
NEEDS = {"attention": ("matplotlib",), "features": ("PIL", "matplotlib"), "ocr": ("PIL", "scipy")}  # classify needs Pillow for images only: vision.pillow() says so


def _missing(module: str):
    from .errors import MissingDependencyError

    return MissingDependencyError(f"this command needs {module}, which is not installed here: {INSTALL.get(module, f'pip install {module}')}")


def check_arguments(args) -> None:
    """Check ``args`` before the command runs: every value in ``ARGUMENT_CHECKS``, then the packages in ``NEEDS``."""
    import importlib.util

    for (command, dest), check in ARGUMENT_CHECKS.items():
        value = getattr(args, dest, None)
        if value is None or command not in (None, args.command):
            continue
        if isinstance(value, list):
            setattr(args, dest, [check(item) for item in value])
        else:
            setattr(args, dest, check(value))
    needs = NEEDS.get(args.command, ()) + (("matplotlib",) if getattr(args, "plot", None) or getattr(args, "boxes", None) else ())
    for module in needs:
        if importlib.util.find_spec(module) is None:
            raise _missing(module)


def _missing_package(err: ImportError):
    """The MissingDependencyError for an ImportError of an optional package (in ``INSTALL``), seen anywhere in its chain; else None."""
    seen = err
    while seen is not None:
        if isinstance(seen, ImportError) and seen.name and seen.name.split(".")[0] in INSTALL:
            return _missing(seen.name.split(".")[0])
        seen = seen.__cause__ or seen.__context__
    return None


def cmd_fetch(args) -> int:
    from .hub import catalog, fetch

    names = list(catalog()) if args.all else args.names
    if not names:
        print("minipt fetch: name a catalogued checkpoint or pass --all; known: " + ", ".join(catalog()), file=sys.stderr)
        return 2
    for name in names:
        print(f"{name}: {fetch(name)}")
    return 0


def cmd_info(args) -> int:
    import torch

    from .ops import cpu_report, cuda_report

    print(f"minipt {version()}\n{cpu_report()}")
    if torch.cuda.is_available():
        print(cuda_report())
    return 0


def cmd_classify(args) -> int:
    from .checkpoint import Checkpoint
    from .hub import resolve
    from .models.text_encoder import SequenceClassifier, classify_texts
    from .registry import model_class_for

    from .files import read_json
    from .registry import family_of

    path = resolve(args.model)
    with Checkpoint(path) as checkpoint:
        family = family_of(model_class_for(path, checkpoint))
    regression = False
    if family is not None and any(issubclass(cls, SequenceClassifier) for cls in family.classes):  # a text family: the inputs are texts
        results = classify_texts(args.inputs, model=path, top=args.top)
        config = read_json((path if path.is_dir() else path.parent) / "config.json", default={})
        regression = config.get("problem_type") == "regression"  # a score, not a probability
    else:
        from .models.efficientnet import classify

        results = classify(args.inputs, model=str(path), top=args.top)
    for given, classes in zip(args.inputs, results):
        print(given)
        for name, probability in classes:
            print(f"  {probability:9.4f}  {name}" if regression else f"  {probability:7.2%}  {name}")
    return 0


def cmd_zero_shot(args) -> int:
    from .checkpoint import Checkpoint
    from .demo import tokenizer_beside
    from .errors import InputError
    from .hub import resolve
    from .models.clip import CLIPModel, zero_shot
    from .registry import model_class_for
    from .tokenizer import Tokenizer

    labels = [label.strip() for label in (args.labels or "").split(",") if label.strip()]
    if not labels:
        raise InputError('--labels: give the labels to choose between, separated by commas (--labels "a cat,a dog")')
    path = resolve(args.model)
    with Checkpoint(path) as checkpoint:
        cls = model_class_for(path, checkpoint)
    if cls is not CLIPModel:
        raise InputError(f"--model {args.model} holds a {cls.__name__} checkpoint; zero-shot classification needs a CLIP model (CLIPModel: both towers)")
    model = CLIPModel.from_pretrained(path, **({"hidden_act": args.hidden_act} if args.hidden_act else {})).eval()
    tokenizer = Tokenizer.from_pretrained(args.tokenizer) if args.tokenizer else tokenizer_beside(path) or Tokenizer.from_pretrained("clip-tokenizer")
    probabilities = zero_shot(args.images, labels, model, tokenizer, templates=args.templates)  # (images, labels)
    for image, row in zip(args.images, probabilities.tolist()):
        print(image)
        for probability, label in sorted(zip(row, labels), key=lambda pair: -pair[0]):
            print(f"  {probability:7.2%}  {label}")
    return 0


def cmd_ocr(args) -> int:
    from .ocr import load_detector, read_lines

    def corners(box) -> str:
        return " ".join(f"{x:.0f},{y:.0f}" for x, y in box)

    detector = None
    if args.dtype:  # else read_lines' default: the detector in minipt.ops.detector_dtype()
        import torch

        detector = load_detector(getattr(torch, args.dtype))
    lines = read_lines(args.image, detector=detector)
    words = [word for line in lines for word in line.words]
    print(f"{args.image}: {len(words)} words in {len(lines)} lines (confidence, box corners x,y clockwise from the top left, text)")
    for number, line in enumerate(lines):
        print(f"line {number}  {line.confidence:.2f}  {corners(line.box)}  {line.text}")
        for word in line.words:
            print(f"    {word.confidence:.2f}  {corners(word.box)}  {word.text}")
    if args.boxes:
        from .plot import ocr_boxes, save_png

        save_png(ocr_boxes(args.image, words, lines), args.boxes)
        print(f"wrote {args.boxes}")
    return 0


def cmd_generate(args) -> int:
    from .checkpoint import Checkpoint
    from .errors import InputError
    from .hub import resolve
    from .models.gpt2 import GPT2LMHeadModel
    from .models.t5 import T5Model
    from .nn.sampling import DEFAULT_TOP_K, check_sampling
    from .nn.streamer import TextStreamer
    from .registry import model_class_for

    temperature = 1.0 if args.temperature is None else args.temperature  # 0 is refused, as generate refuses it
    check_sampling(temperature, args.top_k, args.top_p, args.repetition_penalty)  # generate's own check, before the model loads
    sample = any(v is not None for v in (args.temperature, args.top_k, args.top_p))
    if args.seed is not None and not sample:
        raise InputError("--seed seeds sampling, and no sampling option (--temperature, --top-k, --top-p) was given: the text would be greedy, the same for every seed")
    max_new_tokens = 50 if args.max_new_tokens is None and args.max_length is None else args.max_new_tokens
    options = dict(max_new_tokens=max_new_tokens, max_length=args.max_length, do_sample=sample, temperature=temperature,
                   top_k=DEFAULT_TOP_K if args.top_k is None else args.top_k,
                   top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)
    path = resolve(args.model)
    with Checkpoint(path) as checkpoint:
        cls = model_class_for(path, checkpoint)
    if issubclass(cls, T5Model):
        return _text_to_text(args, path, cls, options)
    if args.num_beams != 1:
        raise InputError(f"--num-beams is for text-to-text models (T5); --model {args.model} is a {cls.__name__} checkpoint, which decodes greedily or samples")
    model = GPT2LMHeadModel.from_pretrained(path)
    tokenizer = _tokenizer_for(args.model)
    prompt = tokenizer(args.prompt, padding=False, truncation=False)["input_ids"]  # (1, T)

    class TypedPromptStreamer(TextStreamer):
        """The prompt as typed, printed once generate has taken it (after its checks: nothing for a refused
        argument), then the new text as it is generated, then a newline."""

        def put(self, token_ids) -> None:
            if self._at_prompt:
                print(args.prompt, end="", flush=True)
            super().put(token_ids)

    model.generate(prompt, **options, streamer=TypedPromptStreamer(tokenizer, skip_prompt=True))
    return 0


def _text_to_text(args, path, cls, options: dict) -> int:
    """A T5 checkpoint: the prompt is the encoder's input, the decoder's text is printed (streamed, unless by beam search)."""
    from .demo import tokenizer_beside
    from .errors import InputError
    from .models.t5 import T5ForConditionalGeneration
    from .nn.streamer import TextStreamer

    if cls is not T5ForConditionalGeneration:
        raise InputError(f"--model {args.model} is a {cls.__name__} checkpoint, which has no language-model head to generate with: "
                         "give a T5ForConditionalGeneration checkpoint")
    tokenizer = tokenizer_beside(path)
    if tokenizer is None:
        raise InputError(f"--model {args.model} has no tokenizer beside it (tokenizer.json): T5 has no default tokenizer to fall back on")
    model = T5ForConditionalGeneration.from_pretrained(path).eval()
    input_ids = tokenizer(args.prompt, padding=False, truncation=False)["input_ids"]  # (1, S), </s> at the end
    if args.num_beams > 1:  # beam search knows its text only at the end
        sequences = model.generate(input_ids, **options, num_beams=args.num_beams)
        print(tokenizer.decode(sequences[0]))
    else:  # the decoder's start token is its prompt: left out
        model.generate(input_ids, **options, num_beams=1, streamer=TextStreamer(tokenizer, skip_prompt=True))  # not the folder's beams
    return 0


def _tokenizer_for(model: str):
    """The tokenizer saved beside the model, else GPT-2's from the catalogue."""
    from .demo import tokenizer_beside
    from .hub import resolve
    from .tokenizer import Tokenizer

    return tokenizer_beside(resolve(model)) or Tokenizer.from_pretrained("gpt2-tokenizer")


# name -> (function, help, argument adder)
COMMANDS: dict = {
    "demo": (
        cmd_demo,
        "embed sentences with all-MiniLM-L6-v2 (compared with transformers) and classify photos with EfficientNet-Lite0",
        lambda p: p.add_argument("--model", default=DEFAULT_MODEL, help=f"sentence-transformers checkpoint: catalogue name or folder (default {DEFAULT_MODEL})"),
    ),
    "embed": (
        cmd_embed,
        "print or save sentence embeddings",
        lambda p: (
            p.add_argument("texts", nargs="+", help="the sentences to embed, one argument each"),
            p.add_argument("--model", default=DEFAULT_MODEL,
                           help=f"sentence-transformers checkpoint, or a BERT, RoBERTa, DistilBERT or ALBERT checkpoint (mean pooling, as "
                                f"sentence-transformers makes for one): catalogue name or folder (default {DEFAULT_MODEL})"),
            p.add_argument("--out", help="save the embeddings in NumPy's .npy format to exactly this file"),
            p.add_argument("--batch-size", type=int, default=32, help="sentences encoded together (default 32)"),
            p.add_argument("--no-normalize", action="store_true", help="keep the pooled vectors' lengths (default: as the checkpoint's pipeline says)"),
        ),
    ),
    "inspect": (
        cmd_inspect,
        "per-module output shapes, parameters and FLOPs for an input size, and the official -> minipt key map of a checkpoint",
        lambda p: (
            p.add_argument("path", help="a checkpoint of any family (folder, file or catalogue name); no weight is read"),
            p.add_argument("--input-size", help="BxT for token models (default 1x128), BxCxHxW for images (default 1x3x224x224)"),
            p.add_argument("--depth", type=int, default=3, help="how deep to show the module tree (default 3)"),
        ),
    ),
    "diff": (
        cmd_diff,
        "compare a checkpoint's minipt model with its reference implementation (transformers, torchvision, timm, torch.nn) "
        "at every shared point and name the first that differs; exit status 3 when one does",
        lambda p: (
            p.add_argument("path", help="a checkpoint of any family (folder, file or catalogue name)"),
            p.add_argument("--input", action="append", metavar="X",
                           help="a text (BERT, GPT-2; repeat for several), an image path (ResNet, EfficientNet), a line of text "
                                "to render or an image path (CRNN), a text (CharLM) or a word (G2P); default: a demo input per family"),
            p.add_argument("--plot", help="also draw the differences on a log scale into this PNG file"),
        ),
    ),
    "attention": (
        cmd_attention,
        "draw a BERT model's attention maps for one text as a PNG",
        lambda p: (
            p.add_argument("path", help="catalogue name or path of a BERT checkpoint"),
            p.add_argument("text", help="the text whose tokens attend to each other"),
            p.add_argument("--layer", help="layer(s), counted from 0 as in layers.N: 2 or 0,3,5 (default: all)"),
            p.add_argument("--heads", help="head(s), counted from 0: 3 or 0,2 (default: all), or mean"),
            p.add_argument("--out", default="attention.png", help="the PNG file to write (default attention.png)"),
        ),
    ),
    "features": (
        cmd_features,
        "draw the most active channels of a CNN stage for one image as a PNG",
        lambda p: (
            p.add_argument("image", help="path of the image (any format Pillow reads)"),
            p.add_argument("--model", default="efficientnet_lite0", help="catalogue name or path of EfficientNet-Lite or ResNet weights"),
            p.add_argument("--stage", type=int, default=1, help="stage number as in minipt's names (stages.N), from 0"),
            p.add_argument("--channels", type=int, default=15, help="how many channels to show (the most active)"),
            p.add_argument("--out", default="features.png", help="the PNG file to write (default features.png)"),
        ),
    ),
    "classify": (
        cmd_classify,
        "top classes of images (EfficientNet-Lite0's official ImageNet weights by default) or of texts (a text classifier's folder)",
        lambda p: (
            p.add_argument("inputs", nargs="+", help="paths of images (any format Pillow reads), or texts where --model is a text classifier"),
            p.add_argument("--model", default="efficientnet_lite0",
                           help="catalogue name or path of EfficientNet-Lite weights, or of a *ForSequenceClassification folder with its tokenizer"),
            p.add_argument("--top", type=int, default=5, help="how many classes to print per input (default 5)"),
        ),
    ),
    "zero-shot": (
        cmd_zero_shot,
        "each label's probability for images, with a CLIP model comparing the images with captions of the labels",
        lambda p: (
            p.add_argument("images", nargs="+", help="paths of images (any format Pillow reads)"),
            p.add_argument("--labels", help='the labels to choose between, separated by commas: "a cat,a dog"'),
            p.add_argument("--model", required=True, help="folder or catalogue name of a CLIP checkpoint (Hugging Face's or OpenAI's layout)"),
            p.add_argument("--templates", nargs="+", metavar="TEMPLATE", default=["a photo of a {}."],
                           help='captions with {} where the label goes, averaged over (default: "a photo of a {}."); put them after the images'),
            p.add_argument("--tokenizer", help="folder or catalogue name of CLIP's tokenizer (default: the one beside the model, else clip-tokenizer)"),
            p.add_argument("--hidden-act", choices=("quick_gelu", "gelu"),
                           help="the activation of an OpenAI-layout file, which does not store it: quick_gelu (OpenAI's weights, "
                                "the default) or gelu (open_clip's LAION-trained weights)"),
        ),
    ),
    "ocr": (
        cmd_ocr,
        "find and read the words in a photo (EasyOCR's CRAFT detector and English recogniser): each line's and word's "
        "confidence, box and text, in reading order",
        lambda p: (
            p.add_argument("image", help="path of the image (any format Pillow reads; grayscale, 16-bit and transparent ones too)"),
            p.add_argument("--boxes", help="also draw the boxes and texts over the image into this PNG file"),
            p.add_argument("--dtype", choices=("float32", "bfloat16"),
                           help="the detector's dtype (default: bfloat16 where this CPU computes it natively, else float32; `minipt info` says which)"),
        ),
    ),
    "fetch": (
        cmd_fetch,
        "place catalogued checkpoints under weights/ and verify their sha256",
        lambda p: (
            p.add_argument("names", nargs="*", help="catalogue names (weights/catalog.json); none: say which there are"),
            p.add_argument("--all", action="store_true", help="every catalogued checkpoint"),
        ),
    ),
    "info": (
        cmd_info,
        "this CPU's capabilities (instruction sets, native bfloat16) and the kernel each fast path takes (and the GPU's choices, where there is one)",
        lambda p: (),
    ),
    "generate": (
        cmd_generate,
        "continue a prompt with a GPT-2 checkpoint, or answer it with a T5 checkpoint (the prompt is the encoder's input), printing "
        "tokens as they are generated (greedy unless a sampling option or --num-beams is given)",
        lambda p: (
            p.add_argument("prompt", help="the text to continue (GPT-2) or to answer (T5: the encoder's input)"),
            p.add_argument("--model", required=True, help="folder or catalogue name of a GPT-2 checkpoint, or of a T5 checkpoint with its tokenizer"),
            p.add_argument("--max-new-tokens", type=int, help="how many tokens to add (default 50 unless --max-length is given)"),
            p.add_argument("--max-length", type=int, help="GPT-2: stop when prompt and new tokens together reach this many tokens; T5: when the decoder's "
                                                             "start token and new tokens do (instead of --max-new-tokens)"),
            p.add_argument("--temperature", type=float, help="sample, dividing the logits by this (> 0; without a sampling option the text is greedy)"),
            p.add_argument("--top-k", type=int, help="sample among the k most likely tokens (when sampling: 50 unless given, transformers' default; 0: all)"),
            p.add_argument("--top-p", type=float, help="sample among the most likely tokens holding this much probability"),
            p.add_argument("--repetition-penalty", type=float, default=1.0,
                           help="above 1, make tokens already in the text less likely, as transformers does (default 1.0: off)"),
            p.add_argument("--seed", type=int, help="seed of the sampling generator, 0 to 2**64-1"),
            p.add_argument("--num-beams", type=int, default=1, help="T5: beam search with this many beams, the best text printed at the end (default 1: off)"),
        ),
    ),
}


def version() -> str:
    """The installed package's version, or the source tree's when minipt runs uninstalled."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("minipt")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The ``minipt`` parser: one subcommand per entry of ``COMMANDS``."""
    parser = argparse.ArgumentParser(prog="minipt", description="minimal, readable models on official weights")
    parser.add_argument("--version", action="version", version=f"minipt {version()}", help="print minipt's version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (function, help_text, add_arguments) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_arguments(sub)
        sub.set_defaults(function=function)
    return parser


def _one_line(message: str) -> str:
    """A message of several lines (a key mismatch lists its keys) as the one line an error gets on stderr."""
    parts = [part.strip() for part in message.splitlines() if part.strip()]
    line = parts[0] if parts else ""
    for part in parts[1:]:
        line += (" " if line.endswith(":") else "; ") + part
    return line


def main(argv: list[str] | None = None) -> int:
    from .errors import MiniptError

    if argv is None and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")  # a path typed in another encoding is printed back as its bytes
    args = build_parser().parse_args(argv)
    try:
        check_arguments(args)
        return args.function(args) or 0
    except MiniptError as err:
        print(f"minipt {args.command}: {_one_line(str(err))}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (minipt inspect ... | head): stop quietly, as Unix tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit would fail on the closed pipe again
        return 1
    except ImportError as err:  # an optional package missing below the command: said as above; any other is a bug, shown in full
        missing = _missing_package(err)
        if missing is None:
            raise
        print(f"minipt {args.command}: {missing}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"minipt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
