"""A minimal training loop that can stop and resume exactly: ``fit``.

    history = fit(model, optimizer, train_loader, loss=lambda m, batch: m(**batch).loss,
                  evaluate=accuracy_on_validation, epochs=10, patience=2,
                  scheduler=scheduler, checkpoint_dir="runs/bert")
    # ... interrupted after epoch 4? The same call with resume=True continues from
    # runs/bert/last.safetensors and ends with exactly the weights of an uninterrupted run.

Each epoch: one pass over ``train_loader`` (a tqdm progress bar on the first
process), ``scheduler.step()`` after every optimiser step, ``evaluate(model)``
(a score, higher is better), then a checkpoint. Training stops early after
``patience`` epochs without a better score; the best weights are written to
``best.safetensors`` and put back in the model at the end (``restore_best``).

A checkpoint is one safetensors file. safetensors holds tensors only, so the
optimiser's and scheduler's state dicts are split: their tensors are stored
as tensors (``optimizer/state/0/exp_avg``), and the rest (learning rates,
betas, step counts that are plain numbers, the history) as JSON in the file's
metadata, with the epoch and every random number generator's state (torch's
CPU and CUDA generators as tensors, Python's and NumPy's in the metadata).

Under ``torch.distributed`` (DDP), every process runs ``fit`` on its shard
(``DistributedSampler.set_epoch`` is called each epoch), evaluates the same
held-out data, so all stop together, and only rank 0 writes checkpoints.
Checkpointing FSDP-sharded models is not handled here (use torch.distributed.checkpoint).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .errors import CheckpointError, TrainingError
from .transfer import check_param_groups, check_trainable

FORMAT = "minipt.train/1"
LAST, BEST = "last.safetensors", "best.safetensors"


@dataclass
class Epoch:
    epoch: int  # 1-based
    train_loss: float  # mean over the epoch's batches
    score: float | None  # evaluate(model), higher is better
    seconds: float  # training and evaluation of this epoch


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader,
    *,
    loss: Callable[[nn.Module, Any], torch.Tensor],
    epochs: int,
    evaluate: Callable[[nn.Module], float] | None = None,
    scheduler=None,
    patience: int | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool | str | Path = False,
    restore_best: bool = True,
    max_steps: int | None = None,
    progress: bool = True,
) -> list[Epoch]:
    """Train ``model`` for up to ``epochs`` epochs; returns one ``Epoch`` per epoch trained (resumed ones included).

    ``loss(model, batch)`` returns the scalar loss of a batch. ``resume``: True
    continues from ``checkpoint_dir/last.safetensors``, a path from that file.
    ``max_steps`` caps the optimiser steps per epoch (quick runs).
    """
    check_trainable(model)
    check_param_groups(_unwrap(model), optimizer)
    if not isinstance(epochs, int) or epochs < 1:
        raise TrainingError(f"epochs must be a positive integer, got {epochs!r}")
    if patience is not None and evaluate is None:
        raise TrainingError("early stopping (patience) needs an evaluate function")
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    history: list[Epoch] = []
    best, since_best = float("-inf"), 0
    if resume:
        path = folder / LAST if resume is True and folder is not None else Path(resume) if resume is not True else None
        if path is None:
            raise TrainingError("resume=True needs checkpoint_dir (or pass the checkpoint's path as resume)")
        state = load_checkpoint(path, model, optimizer, scheduler)
        history = [Epoch(**e) for e in state["history"]]
        best, since_best = state["best"], state["since_best"]
    main = not _distributed() or torch.distributed.get_rank() == 0
    for epoch in range(len(history) + 1, epochs + 1):
        if patience is not None and since_best >= patience:
            break  # a resumed run that had already stopped
        start = time.perf_counter()
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        model.train()
        total, steps = 0.0, 0
        bar = _progress(train_loader, f"epoch {epoch}/{epochs}", progress and main, max_steps)
        for batch in bar:
            optimizer.zero_grad(set_to_none=True)
            value = loss(model, batch)
            value.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            total, steps = total + value.item(), steps + 1
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{total / steps:.4f}")
            if max_steps is not None and steps >= max_steps:
                break
        if hasattr(bar, "close"):
            bar.close()
        score = None
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                score = float(evaluate(model))
        history.append(Epoch(epoch, total / max(steps, 1), score, time.perf_counter() - start))
        improved = score is not None and score > best
        if improved:
            best, since_best = score, 0
        elif score is not None:
            since_best += 1
        if folder is not None and main:
            folder.mkdir(parents=True, exist_ok=True)
            extra = {"history": [asdict(e) for e in history], "best": best, "since_best": since_best}
            save_checkpoint(folder / LAST, model, optimizer, scheduler, epoch=epoch, extra=extra)
            if improved:
                save_checkpoint(folder / BEST, model, epoch=epoch, extra=extra)
        if progress and main:
            shown = f", score {score:.4f}" if score is not None else ""
            print(f"epoch {epoch}: loss {history[-1].train_loss:.4f}{shown} ({history[-1].seconds:.1f} s)", flush=True)
        if patience is not None and since_best >= patience:
            break
    if restore_best and folder is not None and (folder / BEST).is_file() and evaluate is not None:
        if _distributed():
            torch.distributed.barrier()  # rank 0 has written best.safetensors
        load_checkpoint(folder / BEST, model)
    model.eval()
    return history


def _progress(loader, description: str, show: bool, total: int | None):
    if not show:
        return loader
    from tqdm.auto import tqdm

    length = len(loader) if hasattr(loader, "__len__") else None
    if total is not None and length is not None:
        length = min(total, length)
    return tqdm(loader, desc=description, total=length, leave=False, dynamic_ncols=True)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# -- checkpoints: one safetensors file ---------------------------------------------
def _split(value: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """A JSON skeleton of ``value`` whose tensors are moved into ``tensors`` under their path."""
    if isinstance(value, torch.Tensor):
        tensors[prefix] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": prefix}
    if isinstance(value, dict):
        if not all(isinstance(k, (str, int)) for k in value):
            raise TrainingError(f"{prefix}: cannot store a dict with keys of type {sorted({type(k).__name__ for k in value})}")
        # JSON keys are strings: remember which were ints (optimizer state is keyed by parameter index)
        return {"__dict__": [[k, _split(v, f"{prefix}/{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        items = [_split(v, f"{prefix}/{i}", tensors) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TrainingError(f"{prefix}: cannot store a {type(value).__name__} in a checkpoint (tensors, numbers, strings, lists and dicts only)")


def _join(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__tuple__" in skeleton:
            return tuple(_join(v, tensors) for v in skeleton["__tuple__"])
        return {k: _join(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [_join(v, tensors) for v in skeleton]
    return skeleton


def _rng_state() -> dict:
    import numpy as np

    kind, keys, position, gauss_next, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), position, gauss_next, cached],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, gauss_next, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, gauss_next, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save_checkpoint(path, model: nn.Module, optimizer=None, scheduler=None, *, epoch: int, extra: dict | None = None) -> Path:
    """Write the model's weights and, if given, the optimiser's and scheduler's state and the RNG states."""
    from safetensors.torch import save_file

    model = _unwrap(model)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = {
        "format": FORMAT,
        "model": type(model).__name__,
        "epoch": epoch,
        "extra": _split(extra or {}, "extra", tensors),
        "model_state": _split(model.state_dict(), "model", tensors),
    }
    if optimizer is not None:
        skeleton["optimizer"] = type(optimizer).__name__
        skeleton["optimizer_state"] = _split(optimizer.state_dict(), "optimizer", tensors)
        skeleton["rng"] = _split(_rng_state(), "rng", tensors)
    if scheduler is not None:
        skeleton["scheduler"] = type(scheduler).__name__
        skeleton["scheduler_state"] = _split(scheduler.state_dict(), "scheduler", tensors)
    path = Path(path)
    partial = path.with_suffix(".partial")
    save_file(tensors, str(partial), metadata={"minipt": json.dumps(skeleton)})
    partial.replace(path)  # a crash while writing leaves the previous checkpoint whole
    return path


def load_checkpoint(path, model: nn.Module, optimizer=None, scheduler=None) -> dict:
    """Put a ``save_checkpoint`` file back into the model (and optimiser, scheduler, RNGs); returns its extra fields.

    A checkpoint of another model class, other parameter names or shapes, or
    another optimiser or scheduler is refused with a ``TrainingError`` naming the difference.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from err
    if "minipt" not in metadata:
        raise TrainingError(f"{path} is not a minipt training checkpoint (no 'minipt' metadata); load model weights with from_pretrained")
    skeleton = json.loads(metadata["minipt"])
    model = _unwrap(model)
    if skeleton.get("format") != FORMAT:
        raise TrainingError(f"{path} has format {skeleton.get('format')!r}, expected {FORMAT!r}")
    if skeleton["model"] != type(model).__name__:
        raise TrainingError(f"{path} is a checkpoint of a {skeleton['model']}, not of this {type(model).__name__}")
    state = _join(skeleton["model_state"], tensors)
    ours = model.state_dict()
    problems = [f"missing {k}" for k in ours if k not in state] + [f"unexpected {k}" for k in state if k not in ours]
    problems += [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}" for k, v in ours.items() if k in state and state[k].shape != v.shape]
    if problems:
        raise TrainingError(f"{path} does not fit this {type(model).__name__}: " + "; ".join(problems[:8]) + (f" ... ({len(problems)} in all)" if len(problems) > 8 else ""))
    for what, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is None:
            continue
        if what not in skeleton:
            raise TrainingError(f"{path} holds no {what} state (it holds the weights only); start a new run or resume from last.safetensors")
        if skeleton[what] != type(obj).__name__:
            raise TrainingError(f"{path} was written with the {what} {skeleton[what]}, not {type(obj).__name__}")
    if optimizer is not None:
        saved = _join(skeleton["optimizer_state"], tensors)
        sizes = [len(g["params"]) for g in saved["param_groups"]]
        if sizes != [len(g["params"]) for g in optimizer.param_groups]:
            raise TrainingError(
                f"{path}: the optimiser had parameter groups of sizes {sizes}, this one {[len(g['params']) for g in optimizer.param_groups]} "
                "(another set of trainable stages?)"
            )
    model.load_state_dict(state)
    if optimizer is not None:
        optimizer.load_state_dict(saved)
        _set_rng_state(_join(skeleton["rng"], tensors))
    if scheduler is not None:
        scheduler.load_state_dict(_join(skeleton["scheduler_state"], tensors))
    return {"epoch": skeleton["epoch"], **_join(skeleton["extra"], tensors)}
