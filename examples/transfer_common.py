"""What the two fine-tuning examples share: the run of one way of training, the table, the curves, torchrun.

Not part of the library: each example imports it from its own folder.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from minipt import transfer
from minipt.quantize import size_bytes
from minipt.train import fit


# -- torchrun: one process per device, or a single process ---------------------------------
def start_distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    torch.distributed.init_process_group(backend)
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    return rank, world, device


def stop_distributed() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def train_loader(data: TensorDataset, batch_size: int, world: int, rank: int, seed: int = 0) -> DataLoader:
    """Shuffled batches; under torchrun each process gets its shard (batch_size is per process)."""
    if world > 1:
        return DataLoader(data, batch_size=batch_size, sampler=DistributedSampler(data, world, rank, shuffle=True, seed=seed))
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


# -- one way of training, measured ---------------------------------------------------------
@dataclass
class Result:
    name: str
    accuracy: float
    seconds: float
    trainable: int
    size_mb: float
    scores: list = field(default_factory=list)  # held-out accuracy after each epoch
    losses: list = field(default_factory=list)


@torch.no_grad()
def accuracy(model, data: TensorDataset, logits_of, batch_size: int = 64, device="cpu") -> float:
    model.eval()
    correct = 0
    for batch in DataLoader(data, batch_size=batch_size):
        batch = [t.to(device) for t in batch]
        correct += (logits_of(model, batch).argmax(-1) == batch[-1]).sum().item()
    return correct / len(data)


def run(name, model, optimizer, train: DataLoader, test: TensorDataset, logits_of, *, epochs, device, scheduler=None, max_steps=None, out=None):
    """Train with minipt.train.fit (early stopping on held-out accuracy) and measure the result."""
    transfer.check_labels(model, test.tensors[-1])
    trainable = transfer.trainable_parameters(model)
    wrapped = model
    if torch.distributed.is_initialized():
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    def loss(m, batch):
        batch = [t.to(device) for t in batch]
        return torch.nn.functional.cross_entropy(logits_of(m, batch), batch[-1])

    start = time.perf_counter()
    history = fit(
        wrapped, optimizer, train, loss=loss, epochs=epochs, scheduler=scheduler, max_steps=max_steps,
        evaluate=lambda m: accuracy(model, test, logits_of, device=device), patience=2,
        checkpoint_dir=None if out is None else f"{out}/checkpoints/{name.replace(' ', '_')}",
    )
    seconds = time.perf_counter() - start
    return Result(name, max(e.score for e in history), seconds, trainable, size_bytes(model) / 1e6,
                  [e.score for e in history], [e.train_loss for e in history])


def table(results: list[Result], title: str) -> str:
    lines = [f"### {title}", "", "| training | held-out accuracy | time (s) | trainable parameters | size (MB) |", "|---|---:|---:|---:|---:|"]
    for r in results:
        trainable = f"{r.trainable:,}" if r.trainable else "-"
        lines.append(f"| {r.name} | {r.accuracy:.3f} | {r.seconds:.0f} | {trainable} | {r.size_mb:.1f} |")
    return "\n".join(lines)


def plot(results: list[Result], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for r in results:
        if r.scores:
            epochs = range(1, len(r.scores) + 1)
            left.plot(epochs, r.losses, marker="o", label=r.name)
            right.plot(epochs, r.scores, marker="o", label=r.name)
    left.set(xlabel="epoch", ylabel="training loss", title="training loss")
    right.set(xlabel="epoch", ylabel="held-out accuracy", title="held-out accuracy")
    right.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
