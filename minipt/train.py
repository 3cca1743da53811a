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

Every step checks the loss and the gradients' total norm before the optimiser
applies them. A non-finite one stops ``fit`` with a ``TrainingError`` naming the
epoch, the step and the value (``nonfinite="stop"``), or skips that step
(``nonfinite="skip"``; counted in ``Epoch.skipped``). Checkpoints are written
only at the end of an epoch, each through ``minipt.files.atomic_path``: a failure
at any point (a NaN, an exception in ``loss`` or ``evaluate``, Ctrl-C, a full
disk, a killed process) leaves the previous ``last.safetensors`` and
``best.safetensors`` whole, and the folder resumes.

A checkpoint is one safetensors file. safetensors holds tensors only, so the
optimiser's and scheduler's state dicts are split: their tensors are stored
as tensors (``optimizer/state/0/exp_avg``), and the rest (learning rates,
betas, step counts that are plain numbers, the history) as JSON in the file's
metadata, with the epoch and every random number generator's state (torch's
CPU and CUDA generators as tensors, Python's and NumPy's in the metadata).
A damaged file (unreadable JSON, missing fields or tensors, values of the wrong
type, optimiser state of the wrong shape) is refused with a ``CheckpointError``
or ``TrainingError`` naming the file and the problem, before anything is loaded.

Under ``torch.distributed`` (DDP), every process runs ``fit`` on its shard
(``DistributedSampler.set_epoch`` is called each epoch); the score is the mean of
the processes' ``evaluate`` (the same held-out data, or each its own shard), so all
stop together, and the history's loss is the mean over processes (the global
batch's). Only rank 0 writes checkpoints, with every process's random generators,
so each resumes its own streams; no process goes on before the files are whole.
A non-finite loss or gradient on any process stops or skips the step on all. A
DDP wrapper trains the parameters that were trainable when it was built: freeze
or unfreeze before wrapping; ``fit`` refuses a wrapper whose trainable parameters
changed since it first trained (a change between wrapping and the first ``fit``
it cannot see). With ``accumulate`` > 1, a wrapped model's loader without a
length is read one batch ahead (a loader that refills one buffer in place must
copy its batches). FSDP-sharded models train, but without ``checkpoint_dir`` or ``resume``
(refused: use torch.distributed.checkpoint).
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import json
import math
import numbers
import os
import random
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .checks import check_bool, check_choice, check_float, check_int, check_path, check_tensor, is_quantized
from .errors import CheckpointError, InputError, SaveError, TrainingError
from .files import atomic_path, make_directory
from .transfer import check_param_groups, check_trainable, ddp_wrapper, unwrapped

FORMAT = "minipt.train/1"
LAST, BEST = "last.safetensors", "best.safetensors"


@dataclass
class Epoch:
    epoch: int  # 1-based
    train_loss: float  # mean over the epoch's optimiser steps
    score: float | None  # evaluate(model), higher is better
    seconds: float  # training and evaluation of this epoch
    skipped: int = 0  # steps skipped for a non-finite loss or gradient (nonfinite="skip")


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
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool | str | os.PathLike = False,
    restore_best: bool = True,
    max_steps: int | None = None,
    progress: bool = True,
    nonfinite: str = "stop",
    max_grad_norm: float | None = None,
    accumulate: int = 1,
) -> list[Epoch]:
    """Train ``model`` for up to ``epochs`` epochs; returns one ``Epoch`` per epoch trained (resumed ones included).

    ``loss(model, batch)`` returns the scalar loss of a batch. ``resume``: True
    continues from ``checkpoint_dir/last.safetensors``, a path from that file: the run
    as it was, with the checkpoint's optimiser settings and learning rates (a weight
    decay, betas or scheduled initial rate given otherwise is named in a warning) for
    the same trainable parameters (others, such as another stage frozen, are a
    ``TrainingError``).
    ``max_steps`` caps the optimiser steps per epoch (quick runs). An exception
    from ``loss`` or ``evaluate`` propagates as it is; checkpoints already written stay.

    ``nonfinite``: what a step whose loss or gradient norm is NaN or infinite does.
    ``"stop"`` (default) raises a ``TrainingError`` naming the epoch, the step and
    the value; nothing of that step is applied and no checkpoint is written, so the
    last one is that of the previous epoch. ``"skip"`` drops the step (no optimiser or
    scheduler step; BatchNorm's running statistics as they were before it) and counts it
    in ``Epoch.skipped``; an epoch whose every step is skipped raises. Under ``torch.distributed`` all processes stop or skip together.

    ``max_grad_norm``: the gradients are scaled down to this total norm before each step
    (``torch.nn.utils.clip_grad_norm_``; 1.0 is the usual choice for fine-tuning Transformers).

    ``accumulate``: batches per optimiser step. Their gradients are averaged, so
    ``accumulate=4`` over batches of 8 steps as one batch of 32 would (for a loss that
    is a mean over the batch); an epoch's last step averages the batches left. Under
    DDP the gradients are synchronised once per step (``no_sync`` on the others; FSDP2:
    ``set_requires_gradient_sync``). ``max_steps``, the scheduler, the loss in the
    history and the non-finite checks count optimiser steps.

    ``restore_best`` (needs ``evaluate``; without it nothing is restored) puts the
    weights of the best-scoring epoch back at the end: from ``best.safetensors``
    with a ``checkpoint_dir``, else from a copy of the state dict kept in CPU memory
    (one more copy of the weights, taken at each improvement). A run resumed from
    a path without ``checkpoint_dir`` falls back on the ``best.safetensors`` beside it.

    ``scheduler`` steps after every optimiser step and must schedule ``optimizer``;
    ``ReduceLROnPlateau``, which steps on a metric, is stepped by the caller (in
    ``evaluate``). A loader with its own ``torch.Generator`` (``DataLoader(...,
    generator=g)``) has that generator's state saved in ``last.safetensors``, so a
    resumed run draws the same batches as an uninterrupted one.

    Arguments are checked before any work: a ``checkpoint_dir`` that is a file or
    cannot be created raises ``SaveError``; the folder is created at the start.
    An epoch in which the loader gives no batch raises ``TrainingError``.
    """
    if not isinstance(model, nn.Module):
        raise InputError(f"fit trains a torch.nn.Module, got {type(model).__name__} {model!r:.80}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise InputError(f"optimizer must be a torch.optim.Optimizer over the model's parameters, got {type(optimizer).__name__}")
    if not hasattr(train_loader, "__iter__") or isinstance(train_loader, (str, bytes, dict)):
        raise InputError(f"train_loader must be an iterable of batches (a DataLoader, a list), got {type(train_loader).__name__} {train_loader!r:.80}")
    _check_scheduler(scheduler, optimizer)
    step = inspect.signature(optimizer.step).parameters.get("closure")
    if step is not None and step.default is inspect.Parameter.empty:
        raise InputError(f"{type(optimizer).__name__} steps with a closure that recomputes the loss (torch's LBFGS); fit calls "
                         "optimizer.step() once per batch: use an optimiser without one (SGD, AdamW), or write the loop for it")
    check_trainable(model)
    _check_ddp_parameters(model)
    _check_partly_sharded(model)
    check_param_groups(unwrapped(model), optimizer)
    epochs = check_int("epochs", epochs, low=1)
    patience = check_int("patience", patience, low=1, optional=True)
    max_steps = check_int("max_steps", max_steps, low=1, optional=True)
    accumulate = check_int("accumulate", accumulate, low=1)
    restore_best = check_bool("restore_best", restore_best)
    progress = check_bool("progress", progress)
    nonfinite = check_choice("nonfinite", nonfinite, ("stop", "skip"))
    max_grad_norm = check_float("max_grad_norm", max_grad_norm, low=0, optional=True)
    if max_grad_norm == 0:
        raise InputError("max_grad_norm must be above 0 (it scales the gradients to that norm), or None for no clipping")
    _check_callable("loss", loss)
    if evaluate is not None:
        _check_callable("evaluate", evaluate)
    if patience is not None and evaluate is None:
        raise TrainingError("early stopping (patience) needs an evaluate function")
    folder = check_path("checkpoint_dir", checkpoint_dir) if checkpoint_dir is not None else None
    if isinstance(resume, (str, os.PathLike)):
        resume_path = check_path("resume", resume)
    elif isinstance(resume, (bool, np.bool_)):
        if resume and folder is None:
            raise TrainingError("resume=True needs checkpoint_dir (or pass the checkpoint's path as resume)")
        resume_path = folder / LAST if resume else None
    else:
        raise InputError(f"resume must be True, False or a checkpoint's path, got {type(resume).__name__} {resume!r:.80}")
    if folder is not None or resume_path is not None:
        _refuse_sharded(model, "checkpoint_dir" if folder is not None else "resume")
    main = not _distributed() or torch.distributed.get_rank() == 0
    if folder is not None and main:
        make_directory(folder, "checkpoint_dir")  # now: a path that cannot take checkpoints fails before training

    history: list[Epoch] = []
    best, since_best = float("-inf"), 0
    loader_generators = _loader_generators(train_loader)
    if resume_path is not None:
        history, best, since_best, loader_states = _load_checkpoint(resume_path, model, optimizer, scheduler, everything=True,
                                                                    check=lambda path, fields: _resumed(path, fields, len(loader_generators)))
        for generator, generator_state in zip(loader_generators, loader_states):
            generator.set_state(generator_state)
    keep_best = restore_best and evaluate is not None
    best_in_memory = None  # restore_best without a folder: a CPU copy of the best weights
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    # BatchNorm's running statistics change in the forward pass, before a step is known to be finite: kept to be put back
    statistics = [b for m in unwrapped(model).modules() if isinstance(m, nn.modules.batchnorm._NormBase) for b in m.buffers(recurse=False)]
    for epoch in range(len(history) + 1, epochs + 1):
        if patience is not None and since_best >= patience:
            break  # a resumed run that had already stopped
        start = time.perf_counter()
        sampler = getattr(train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        model.train()
        total, steps, skipped = 0.0, 0, 0
        bar = _progress(train_loader, f"epoch {epoch}/{epochs}", progress and main,
                        None if max_steps is None else max_steps * accumulate)
        try:
            batches = iter(bar)
            length, consumed = _length(train_loader), 0
            for step in itertools.count(1):
                optimizer.zero_grad(set_to_none=True)
                left = None if length is None else length - consumed
                kept = [b.clone() for b in statistics]
                summed, micro = _accumulated_backward(model, loss, batches, accumulate, left)
                consumed += micro
                if not micro:
                    break  # the loader is used up
                if micro > 1:
                    for p in parameters:  # the mean of the micro-batches' gradients, however many the last group held
                        if p.grad is not None:
                            p.grad.div_(micro)
                loss_value, problem = _check_step(summed / micro, parameters, model)
                if problem is not None:
                    optimizer.zero_grad(set_to_none=True)
                    with torch.no_grad():
                        for buffer, before in zip(statistics, kept):  # the step's NaN batch statistics are not kept either
                            buffer.copy_(before)
                    if nonfinite == "stop":
                        raise TrainingError(
                            f"epoch {epoch}, step {step}: {problem}; the step was not applied and no checkpoint "
                            "was written (nonfinite='skip' skips such steps)"
                        )
                    skipped += 1
                    continue
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                total, steps = total + loss_value, steps + 1
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{total / steps:.4f}")
                if max_steps is not None and steps >= max_steps:
                    break
        finally:
            if hasattr(bar, "close"):
                bar.close()
        if skipped and not steps:
            raise TrainingError(f"epoch {epoch}: all {skipped} steps had a non-finite loss or gradient; nothing was trained")
        if not steps:
            raise TrainingError(f"epoch {epoch}: train_loader gave no batch; nothing was trained"
                                + (" (a generator is used up after one pass: pass a DataLoader or a list)" if epoch > 1 or history else ""))
        score = None
        if evaluate is not None:
            model.eval()
            with torch.no_grad():
                score = _score(evaluate(model), epoch)
            if _distributed():  # the mean over processes: all stop together, also where each scores its own shard
                mean = torch.tensor([score], dtype=torch.float64, device=_collective_device(parameters))
                torch.distributed.all_reduce(mean)
                score = mean.item() / torch.distributed.get_world_size()
        history.append(Epoch(epoch, total / max(steps, 1), score, time.perf_counter() - start, skipped))
        improved = score is not None and score > best
        if improved:
            best, since_best = score, 0
            if keep_best and folder is None:
                best_in_memory = {k: v.detach().to("cpu", copy=True) for k, v in unwrapped(model).state_dict().items()}
        elif score is not None:
            since_best += 1
        processes = _process_states(loader_generators) if folder is not None else None
        failure = None
        if folder is not None and main:
            extra = {"history": [asdict(e) for e in history], "best": best, "since_best": since_best,
                     "loader_generators": [g.get_state() for g in loader_generators]}
            if processes is not None:
                extra["processes"] = processes
            try:
                # best before last: a run killed between the two resumes from the previous last
                # and redoes this epoch, never pairing a new best score with the old best weights
                if improved:
                    save_checkpoint(folder / BEST, model, epoch=epoch, extra=extra)
                save_checkpoint(folder / LAST, model, optimizer, scheduler, epoch=epoch, extra=extra)
            except BaseException as err:  # noqa: B036  (every process must hear of it, then it is raised)
                failure = err
        if folder is not None and _distributed():
            # a barrier that carries rank 0's outcome: no process goes on (or returns, and resumes) before the
            # checkpoint is whole, and none waits for ever on a rank 0 that could not write it
            failed = torch.tensor([float(failure is not None)], device=_collective_device(parameters))
            torch.distributed.all_reduce(failed)
            if failure is None and failed.item():
                raise TrainingError(f"epoch {epoch}: process 0 could not write the checkpoint in {folder} (its error says why)")
        if failure is not None:
            raise failure
        if progress and main:
            shown = f", score {score:.4f}" if score is not None else ""
            shown += f", {skipped} step(s) skipped (non-finite)" if skipped else ""
            print(f"epoch {epoch}: loss {history[-1].train_loss:.4f}{shown} ({history[-1].seconds:.1f} s)", flush=True)
        if patience is not None and since_best >= patience:
            break
    if best_in_memory is not None:
        unwrapped(model).load_state_dict(best_in_memory)
    elif keep_best:
        if folder is not None and _distributed():
            torch.distributed.barrier()  # rank 0 has written best.safetensors
        # this run's best, else (no better epoch since a resume, into this folder, another or none) the resumed run's
        beside_resumed = resume_path.parent / BEST if resume_path is not None and resume_path.name == LAST else None
        best_file = next((f for f in (None if folder is None else folder / BEST, beside_resumed) if f is not None and f.is_file()), None)
        if best_file is not None:
            load_checkpoint(best_file, model)
    model.eval()
    return history


# -- arguments and per-step checks ---------------------------------------------------
def _accumulated_backward(model: nn.Module, loss: Callable, batches, accumulate: int, left: int | None) -> tuple[torch.Tensor | None, int]:
    """Backward through up to ``accumulate`` batches of ``batches``: the sum of their losses (detached) and how many
    there were. Only a group's last backward synchronises the gradients of a wrapped model (DDP, FSDP2), which must
    be known before its forward pass: from the loader's length (``left``: batches left in the epoch) where it has
    one; else, for a wrapped model only, by fetching the next batch before this one's forward."""
    wrapped = ddp_wrapper(model) is not None or hasattr(model, "set_requires_gradient_sync")
    group = accumulate if left is None else max(1, min(accumulate, left))
    summed, micro = None, 0
    following = next(batches, _END)
    while following is not _END and micro < group:
        batch, micro = following, micro + 1
        if micro == group:
            following, last = _END, True
        elif left is None and wrapped:
            following = next(batches, _END)  # a loader without a length: is there another batch in this group?
            last = following is _END
        else:
            following, last = _NEXT, False
        with _gradient_sync(model, last):  # DDP decides in the forward pass
            value = loss(model, batch)
            _check_loss_value(value)
            value.backward()
        value = value.detach().reshape(()).double()  # summed in float64: a bfloat16 model's losses lose no digits in the sum
        summed = value if summed is None else summed + value
        if following is _NEXT:
            following = next(batches, _END)
            if following is _END and wrapped:
                raise TrainingError(f"train_loader ended {group - micro} batch(es) before its len() said, inside a group of "
                                    f"accumulate={accumulate}: the group's gradients were never synchronised across processes")
    return summed, micro


_NEXT = object()
_END = object()


@contextlib.contextmanager
def _gradient_sync(model: nn.Module, last: bool):
    """Where the gradients of a micro-batch are reduced across processes: only at a group's last backward."""
    ddp = ddp_wrapper(model)
    if last:
        yield
    elif ddp is not None:
        with ddp.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # FSDP2 (fully_shard)
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def _check_callable(name: str, value: Any) -> None:
    if not callable(value):
        raise InputError(f"{name} must be a function, got {type(value).__name__} {value!r:.80}")


def _check_loss_value(value: Any) -> None:
    check_tensor("loss(model, batch)", value, kind="floating")
    if value.numel() != 1:
        raise TrainingError(f"loss(model, batch) must return a scalar, got a tensor of shape {tuple(value.shape)}")
    if not value.requires_grad:
        raise TrainingError("loss(model, batch) returned a loss with no gradient to follow: it was computed under torch.no_grad() or "
                            "inference_mode, or from no trainable parameter")


def _check_step(value: torch.Tensor, parameters: list[torch.Tensor], model: nn.Module) -> tuple[float, str | None]:
    """The loss as a float and, when the loss or the gradients' total norm is not finite (here or, under
    torch.distributed, on any process), what is wrong. One device sync per step, as ``loss.item()`` would be."""
    grads = [p.grad for p in parameters if p.grad is not None]
    norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    if hasattr(norm, "full_tensor"):  # gradients sharded as DTensors (FSDP)
        norm = norm.full_tensor()
    numbers = torch.stack([value.detach().reshape(()).float(), norm.detach().float().to(value.device)])
    bad = (~torch.isfinite(numbers)).any().float().reshape(1)
    shared = torch.cat([bad, numbers[:1].nan_to_num(0.0, 0.0, 0.0)])
    if _distributed():
        # one all-reduce: whether any process went non-finite (all skip or stop together), and the sum of the
        # processes' losses, whose mean is the loss of the global batch (the history's)
        torch.distributed.all_reduce(shared)
    loss_value, norm_value, anywhere, summed = torch.cat([numbers, shared]).tolist()
    if not anywhere:
        return (summed / torch.distributed.get_world_size() if _distributed() else loss_value), None
    if not math.isfinite(loss_value):
        return loss_value, f"the loss is {loss_value}"
    if not math.isfinite(norm_value):
        names = {id(p): n for n, p in unwrapped(model).named_parameters()}
        first = next((names.get(id(p), "?") for p in parameters if p.grad is not None and not hasattr(p.grad, "full_tensor")
                      and not bool(torch.isfinite(p.grad).all())), None)
        return loss_value, f"the gradient norm is {norm_value}" + (f" (first non-finite gradient: {first})" if first else "")
    return loss_value, "another process had a non-finite loss or gradient"


def _score(value: Any, epoch: int) -> float:
    """``evaluate``'s return as a float: a real number, or a tensor or array of one element (not a bool or a string)."""
    if isinstance(value, torch.Tensor):
        number = value.numel() == 1 and value.dtype != torch.bool and not value.is_complex()
    elif isinstance(value, np.ndarray):
        number = value.size == 1 and (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating))
    else:
        number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not number:
        raise TrainingError(f"epoch {epoch}: evaluate(model) must return a number, got {type(value).__name__} {value!r:.80} (higher is better)")
    score = float(value.item() if hasattr(value, "item") else value)
    if not math.isfinite(score):
        raise TrainingError(f"epoch {epoch}: evaluate(model) returned {score}; no checkpoint was written")
    return score


def _progress(loader, description: str, show: bool, total: int | None):
    if not show:
        return loader
    from tqdm.auto import tqdm

    length = _length(loader)
    if total is not None and length is not None:
        length = min(total, length)
    return tqdm(loader, desc=description, total=length, leave=False, dynamic_ncols=True)


def _length(loader) -> int | None:
    """The loader's number of batches, or None where it has none (a generator; a DataLoader over an IterableDataset,
    whose len() raises TypeError)."""
    try:
        return len(loader) if hasattr(loader, "__len__") else None
    except TypeError:
        return None


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _collective_device(parameters: list[torch.Tensor]) -> torch.device:
    """Where a tensor all-reduced across processes lives: the parameters' device (NCCL reduces CUDA tensors only)."""
    return parameters[0].device if parameters else torch.device("cpu")


def _refuse_sharded(model: nn.Module, what: str) -> None:
    """fit's checkpoints hold whole tensors; FSDP's parameters are shards (DTensors)."""
    if any(hasattr(p, "full_tensor") for p in model.parameters()):
        raise TrainingError(f"{what}: the model's parameters are sharded (FSDP), and minipt's checkpoints hold whole tensors; "
                            "save a sharded model with torch.distributed.checkpoint, or train it without checkpoint_dir/resume")


def _check_partly_sharded(model: nn.Module) -> None:
    """FSDP synchronises the gradients of the parameters it shards; trainable parameters outside every fully_shard
    (the root left unsharded: CLIP's 0-d logit_scale, which fully_shard refuses) would train apart on each process."""
    trainable = [(name, hasattr(p, "full_tensor")) for name, p in unwrapped(model).named_parameters() if p.requires_grad]
    plain = [name for name, sharded in trainable if not sharded]
    if plain and len(plain) < len(trainable):
        raise TrainingError(f"{len(trainable) - len(plain)} trainable parameters are sharded (FSDP's fully_shard) and {len(plain)} are not "
                            f"({', '.join(plain[:4])}): FSDP synchronises only the sharded ones' gradients, and the others would train "
                            "apart on each process; shard the modules that hold them too (fully_shard(model) last), or freeze them")


def _check_ddp_parameters(model: nn.Module) -> None:
    """DDP synchronises the gradients of the parameters that were trainable when it first trained (when it was
    built, to be exact); a stage frozen or unfrozen since would train apart on each process, silently."""
    model = ddp_wrapper(model)  # or the one inside torch.compile's wrapper
    if model is None:
        return
    parameters = {name: id(p) for name, p in model.module.named_parameters() if p.requires_grad}
    trainable = frozenset(parameters)
    first = getattr(model, "_minipt_trainable", None)
    if first is None:
        model._minipt_trainable, model._minipt_parameters = trainable, parameters
        return
    replaced = sorted(name for name, at in parameters.items() if name in first and getattr(model, "_minipt_parameters", parameters)[name] != at)
    if replaced:  # a new head (reset_classifier) under the old names: DDP synchronises the old tensors
        raise TrainingError(f"parameters were replaced since this DistributedDataParallel first trained ({', '.join(replaced[:4])}); DDP "
                            "synchronises the tensors it was built with: wrap the model in a new DistributedDataParallel after "
                            "replacing a head (or reset it before wrapping)")
    if first != trainable:
        changed = sorted(trainable - first) or sorted(first - trainable)
        raise TrainingError(f"the model's trainable parameters changed since this DistributedDataParallel first trained ({len(changed)} "
                            f"now {'trainable' if trainable - first else 'frozen'}: {', '.join(changed[:4])}); DDP synchronises the "
                            "gradients of the parameters trainable when it was built: wrap the model in a new DistributedDataParallel "
                            "after freezing or unfreezing")


def _check_scheduler(scheduler, optimizer: torch.optim.Optimizer) -> None:
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise InputError("ReduceLROnPlateau steps on a metric, which fit does not pass it: call scheduler.step(metric) in "
                         "evaluate and leave scheduler out of fit (fit steps a scheduler after every optimiser step)")
    if not callable(getattr(scheduler, "step", None)) or not callable(getattr(scheduler, "state_dict", None)):
        raise InputError(f"scheduler must be a torch.optim.lr_scheduler scheduler (step(), state_dict()), got {type(scheduler).__name__} {scheduler!r:.80}")
    if getattr(scheduler, "optimizer", optimizer) is not optimizer:
        raise InputError("scheduler schedules another optimizer than the one fit steps: build it on this optimizer")


def _process_states(loader_generators: list[torch.Generator]) -> list[dict] | None:
    """Under torch.distributed with several processes, each one's random generators and loader generators
    (gathered on every process, written by rank 0), so each resumes its own streams; None otherwise."""
    if not _distributed() or torch.distributed.get_world_size() == 1:
        return None
    mine = {"rng": _rng_state(), "loader_generators": [g.get_state() for g in loader_generators]}
    everyone: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, mine)
    return everyone


def _loader_generators(loader) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a loader draws its order and workers' seeds from, when it has its own
    (``DataLoader(..., generator=g)``, a sampler with one); the global generator is saved with the RNG states."""
    found: list[torch.Generator] = []
    for owner in (loader, getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def _resumed(path: Path, state: dict, loader_generators: int) -> tuple[list[Epoch], float, int, list[torch.Tensor]]:
    """The history, best score and epochs since the best that fit stored in a checkpoint's fields ``state``, and the
    states of the ``loader_generators`` generators of the loader (``_loader_generators``)."""
    kinds = {"epoch": int, "train_loss": float, "score": (float, type(None)), "seconds": float, "skipped": int}
    history = state.get("history")
    if not isinstance(history, list):
        raise CheckpointError(f"{path}: no training history (field 'history'); was it written by fit?")
    epochs = []
    for number, entry in enumerate(history, start=1):
        if not isinstance(entry, dict) or not {"epoch", "train_loss", "score", "seconds"} <= entry.keys() <= kinds.keys():
            raise CheckpointError(f"{path}: history entry {number} is not an epoch record: {entry!r:.120}")
        wrong = [k for k, v in entry.items() if not _is_kind(v, kinds[k])]
        if wrong or entry["epoch"] != number:
            raise CheckpointError(f"{path}: history entry {number} has fields of the wrong type or order ({', '.join(wrong) or 'epoch'}): {entry!r:.120}")
        epochs.append(Epoch(**entry))
    best, since_best = state.get("best"), state.get("since_best")
    if not _is_kind(best, float) or not _is_kind(since_best, int) or since_best < 0:
        raise CheckpointError(f"{path}: 'best' must be a number and 'since_best' a count, got {best!r:.40} and {since_best!r:.40}")
    if state["epoch"] != len(epochs):
        raise CheckpointError(f"{path}: written after epoch {state['epoch']} but its history has {len(epochs)} epochs")
    saved = state.get("loader_generators", [])
    processes = state.get("processes")
    if processes is not None and _distributed() and torch.distributed.get_world_size() == _count(path, processes):
        # written by as many processes as resume it: each continues its own streams (other counts: rank 0's)
        saved = processes[torch.distributed.get_rank()].get("loader_generators") if isinstance(processes[torch.distributed.get_rank()], dict) else None
    if not isinstance(saved, list) or not all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 for s in saved):
        raise CheckpointError(f"{path}: 'loader_generators' must be a list of generator states, got {saved!r:.80}")
    if len(saved) != loader_generators:
        raise TrainingError(f"{path} holds the state of {len(saved)} loader generator(s); this train_loader has {loader_generators}: "
                            "resume with a loader built as before (DataLoader(..., generator=...) or not)")
    return epochs, float(best), since_best, saved


def _count(path: Path, processes: Any) -> int:
    if not isinstance(processes, list) or not processes:
        raise CheckpointError(f"{path}: 'processes' must be a list of each process's generator states, got {processes!r:.80}")
    return len(processes)


def _rank_rng(path: Path, extra: dict) -> dict | None:
    """This process's random generators' state where the checkpoint holds one per process, for as many processes."""
    processes = extra.get("processes")
    if processes is None or not _distributed() or torch.distributed.get_world_size() != _count(path, processes):
        return None
    mine = processes[torch.distributed.get_rank()]
    if not isinstance(mine, dict) or not isinstance(mine.get("rng"), dict):
        raise CheckpointError(f"{path}: process {torch.distributed.get_rank()}'s generator states are damaged: {mine!r:.80}")
    return mine["rng"]


def _is_kind(value: Any, kind) -> bool:
    """``value`` is of ``kind`` (a type or tuple), where a bool is never a number and an int is also a float."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    return any(isinstance(value, numbers.Real if k is float else numbers.Integral if k is int else k) for k in kinds)


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


def _join(skeleton: Any, tensors: dict[str, torch.Tensor], path: Path, where: str) -> Any:
    """The value ``_split`` made ``skeleton`` of; a skeleton that is not one raises ``CheckpointError``."""
    if isinstance(skeleton, list):
        return [_join(v, tensors, path, f"{where}/{i}") for i, v in enumerate(skeleton)]
    if not isinstance(skeleton, dict):
        return skeleton
    if skeleton.keys() == {"__tensor__"}:
        name = skeleton["__tensor__"]
        if not isinstance(name, str) or name not in tensors:
            raise CheckpointError(f"{path}: the tensor {name!r:.80} that {where} refers to is not in the file")
        return tensors[name]
    if skeleton.keys() == {"__tuple__"} and isinstance(skeleton["__tuple__"], list):
        return tuple(_join(v, tensors, path, f"{where}/{i}") for i, v in enumerate(skeleton["__tuple__"]))
    items = skeleton.get("__dict__") if skeleton.keys() == {"__dict__"} else None
    if not isinstance(items, list) or not all(isinstance(i, list) and len(i) == 2 and _is_kind(i[0], (str, int)) for i in items):
        raise CheckpointError(f"{path}: {where} in the metadata is damaged: {json.dumps(skeleton)[:120]}")
    return {k: _join(v, tensors, path, f"{where}/{k}") for k, v in items}


def _rng_state() -> dict:
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
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, gauss_next, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, gauss_next, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def save_checkpoint(path, model: nn.Module, optimizer=None, scheduler=None, *, epoch: int, extra: dict | None = None) -> Path:
    """Write the model's weights and, if given, the optimiser's and scheduler's state and the RNG states.

    The file is written through ``minipt.files.atomic_path``: a failure (full disk,
    Ctrl-C, a killed process) leaves the previous file at ``path`` as it was and
    raises ``SaveError`` for what the disk refused."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    model = unwrapped(model)
    _refuse_sharded(model, "save_checkpoint")
    if is_quantized(model):  # named, where safetensors failed on torchao's storage
        raise TrainingError(f"{type(model).__name__} is quantised (int8 torchao tensors): save_checkpoint writes float models; "
                            "save the float model, and quantise it after loading")
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
        skeleton["optimizer_parameters"] = _group_names(optimizer, model)  # which parameter each state entry is for
        skeleton["trainable"] = _trainable(model)  # which stages trained: an optimiser over model.parameters() does not say
        skeleton["rng"] = _split(_rng_state(), "rng", tensors)
    if scheduler is not None:
        skeleton["scheduler"] = type(scheduler).__name__
        skeleton["scheduler_state"] = _split(scheduler.state_dict(), "scheduler", tensors)
    path = Path(path)
    try:
        with atomic_path(path) as temporary:
            save_file(tensors, str(temporary), metadata={"minipt": json.dumps(skeleton)})
    except SafetensorError as err:  # safetensors reports the disk's refusal (full, too large) as its own error
        raise SaveError(f"cannot write {path}: {err}") from err
    return path


def load_checkpoint(path, model: nn.Module, optimizer=None, scheduler=None) -> dict:
    """Put a ``save_checkpoint`` file back into the model (and optimiser, scheduler, RNGs); returns its extra fields.

    Everything is checked before anything is loaded. A damaged file (metadata that
    is not JSON, missing fields or tensors, values of the wrong type) raises
    ``CheckpointError`` naming the file and the problem; a checkpoint of another model
    class, other parameter names or shapes, another optimiser or scheduler, or
    optimiser state whose shapes do not fit the parameters raises ``TrainingError``
    naming the difference.
    """
    return _load_checkpoint(path, model, optimizer, scheduler)


def _load_checkpoint(path, model: nn.Module, optimizer=None, scheduler=None, check: Callable[[Path, dict], Any] | None = None,
                     everything: bool = False) -> Any:
    """``load_checkpoint``, where ``check(path, fields)`` (fit's, on its history) also runs before anything is
    loaded; returns what ``check`` returns, or the fields. ``everything`` (fit's resume): a scheduler's state in
    the file with no scheduler to take it is an error, not dropped."""
    path = Path(path)
    model = unwrapped(model)
    _refuse_sharded(model, "load_checkpoint")
    skeleton, tensors = _read_checkpoint(path)
    if skeleton["model"] != type(model).__name__:
        raise TrainingError(f"{path} is a checkpoint of a {skeleton['model']}, not of this {type(model).__name__}")
    state = _join(skeleton["model_state"], tensors, path, "model_state")
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"{path}: model_state is not a state dict of named tensors")
    ours = model.state_dict()
    problems = [f"missing {k}" for k in ours if k not in state] + [f"unexpected {k}" for k in state if k not in ours]
    problems += [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(v.shape)}" for k, v in ours.items() if k in state and state[k].shape != v.shape]
    if problems:
        raise TrainingError(f"{path} does not fit this {type(model).__name__}: " + "; ".join(problems[:8]) + (f" ... ({len(problems)} in all)" if len(problems) > 8 else ""))
    if everything and scheduler is None and "scheduler" in skeleton:
        raise TrainingError(f"{path} was written with the scheduler {skeleton['scheduler']}: pass one built as before to resume "
                            "its schedule (resuming without it would drop the schedule)")
    for what, obj in (("optimizer", optimizer), ("scheduler", scheduler)):
        if obj is None:
            continue
        if what not in skeleton:
            raise TrainingError(f"{path} holds no {what} state (it holds the weights only); start a new run or resume from last.safetensors")
        if skeleton[what] != type(obj).__name__:
            raise TrainingError(f"{path} was written with the {what} {skeleton[what]}, not {type(obj).__name__}")
    if optimizer is not None:
        saved = _join(skeleton["optimizer_state"], tensors, path, "optimizer_state")
        _check_optimizer_state(path, saved, optimizer, model)
        _check_group_names(path, skeleton.get("optimizer_parameters"), _group_names(optimizer, model))
        _check_trainable(path, skeleton.get("trainable"), _trainable(model))
        rng = _join(skeleton["rng"], tensors, path, "rng")
    if scheduler is not None:
        scheduled = _join(skeleton["scheduler_state"], tensors, path, "scheduler_state")
        _check_kinds(path, "scheduler_state", scheduled, scheduler.state_dict())
    extra = _join(skeleton["extra"], tensors, path, "extra")
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path}: extra is a {type(extra).__name__}, not a dict")
    fields = {"epoch": skeleton["epoch"], **extra}
    checked = check(path, fields) if check is not None else fields
    if optimizer is not None and everything:
        rng = _rank_rng(path, extra) or rng
    if optimizer is not None:  # the last check, since it sets the generators: undone if the state is damaged
        before = _rng_state()
        try:
            _set_rng_state(rng)
        except (TypeError, ValueError, RuntimeError, KeyError, IndexError, OverflowError) as err:
            _set_rng_state(before)
            raise CheckpointError(f"{path}: the random number generators' state is damaged ({type(err).__name__}: {err})") from None
    model.load_state_dict(state)
    if optimizer is not None:
        _warn_settings_replaced(path, saved, optimizer)
        optimizer.load_state_dict(saved)
    if scheduler is not None:
        scheduler.load_state_dict(scheduled)
    return checked


_FIELDS = {"format": str, "model": str, "epoch": int, "extra": (dict, list), "model_state": (dict, list),
           "trainable": list, "optimizer": str, "optimizer_state": (dict, list), "rng": (dict, list),
           "scheduler": str, "scheduler_state": (dict, list)}
_REQUIRED = ("format", "model", "epoch", "extra", "model_state")


def _read_checkpoint(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata outline and the tensors of a checkpoint file, the outline's fields checked."""
    from safetensors import safe_open

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
    try:
        skeleton = json.loads(metadata["minipt"])
    except (json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path}: its 'minipt' metadata is not valid JSON ({err})") from None
    if not isinstance(skeleton, dict):
        raise CheckpointError(f"{path}: its 'minipt' metadata is a JSON {type(skeleton).__name__}, not an object")
    if skeleton.get("format") != FORMAT:
        raise TrainingError(f"{path} has format {skeleton.get('format')!r:.80}, expected {FORMAT!r}")
    fields = list(_REQUIRED) + [k for k in ("optimizer_state", "rng") if "optimizer" in skeleton]
    fields += ["scheduler_state"] if "scheduler" in skeleton else []
    missing = [k for k in fields if k not in skeleton]
    if missing:
        raise CheckpointError(f"{path}: its metadata misses the field(s) {', '.join(missing)}")
    wrong = [f"{k} ({type(v).__name__})" for k, v in skeleton.items() if k in _FIELDS and not _is_kind(v, _FIELDS[k])]
    if wrong or skeleton["epoch"] < 0:
        raise CheckpointError(f"{path}: metadata field(s) of the wrong type: {', '.join(wrong) or 'epoch < 0'}")
    return skeleton, tensors


def _check_optimizer_state(path: Path, saved: Any, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """``saved`` is a state dict ``optimizer.load_state_dict`` takes, for these parameters: groups of the same sizes,
    hyperparameters of the same kinds, and per-parameter tensors shaped like the parameter."""
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    per_parameter = saved.get("state") if isinstance(saved, dict) else None
    if not isinstance(groups, list) or not isinstance(per_parameter, dict) or not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) and all(_is_kind(i, int) for i in g["params"]) for g in groups
    ):
        raise CheckpointError(f"{path}: optimizer_state is not an optimizer state dict (state, param_groups with params)")
    sizes = [len(g["params"]) for g in groups]
    if sizes != [len(g["params"]) for g in optimizer.param_groups]:
        raise TrainingError(
            f"{path}: the optimiser had parameter groups of sizes {sizes}, this one {[len(g['params']) for g in optimizer.param_groups]} "
            "(another set of trainable stages?)"
        )
    for number, (group, ours) in enumerate(zip(groups, optimizer.param_groups)):
        _check_kinds(path, f"optimizer param group {number}", {k: v for k, v in group.items() if k != "params"}, ours)
    names = {id(p): n for n, p in model.named_parameters()}
    parameters = {i: p for g, o in zip(groups, optimizer.param_groups) for i, p in zip(g["params"], o["params"])}
    for index, entry in per_parameter.items():
        if index not in parameters or not isinstance(entry, dict):
            raise CheckpointError(f"{path}: optimizer state {index!r} is for no parameter of its groups, or not a dict")
        param = parameters[index]
        for key, value in entry.items():
            # the same shape as the parameter, or with dimensions reduced to 1 (Adafactor's factored moments);
            # scalars (step counts) have no shape to check
            if isinstance(value, torch.Tensor) and value.dim() and (
                value.dim() != param.dim() or any(s not in (1, p) for s, p in zip(value.shape, param.shape))
            ):
                raise TrainingError(
                    f"{path}: the optimiser's {key!r} for parameter {names.get(id(param), index)} has shape "
                    f"{tuple(value.shape)}, the parameter {tuple(param.shape)}"
                )


def _group_names(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[list[str]]:
    """Each optimiser group's parameters by their names in the model (a parameter from elsewhere: "?")."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [[names.get(id(p), "?") for p in group["params"]] for group in optimizer.param_groups]


def _check_group_names(path: Path, saved: Any, current: list[list[str]]) -> None:
    """The checkpoint's optimiser state was for the same parameters, group by group (files written before it was
    recorded are not checked): another stage frozen on resume keeps the group sizes but gives one stage's moments
    and learning rate to another's weights."""
    if saved is None:
        return
    if not isinstance(saved, list) or not all(isinstance(g, list) and all(isinstance(n, str) for n in g) for g in saved):
        raise CheckpointError(f"{path}: optimizer_parameters is not a list of groups of parameter names")
    for number, (then, now) in enumerate(zip(saved, current)):
        if then != now:
            first = next((f"{a} then, {b} now" for a, b in zip(then, now) if a != b), f"{len(then)} parameters then, {len(now)} now")
            raise TrainingError(f"{path}: the optimiser's group {number} was for other parameters ({first}): the trainable stages "
                                "differ from the run that wrote it (freeze and unfreeze as then, or start a new run from its weights)")


def _trainable(model: nn.Module) -> list[str]:
    return [name for name, param in model.named_parameters() if param.requires_grad]


def _check_trainable(path: Path, saved: Any, current: list[str]) -> None:
    """The same parameters train as in the run that wrote the checkpoint (files written before it was recorded are
    not checked): with one optimiser group over ``model.parameters()`` the group names agree whatever is frozen."""
    if saved is None:
        return
    if not isinstance(saved, list) or not all(isinstance(n, str) for n in saved):
        raise CheckpointError(f"{path}: trainable is not a list of parameter names")
    if saved != current:
        then, now = set(saved), set(current)
        differences = [f"{n} frozen now" for n in saved if n not in now] + [f"{n} trainable now" for n in current if n not in then]
        listed = "; ".join(differences[:4]) + (f" ... ({len(differences)} in all)" if len(differences) > 4 else "")
        raise TrainingError(f"{path}: {len(saved)} parameters trained in the run that wrote it, {len(current)} are trainable now "
                            f"({listed or 'in another order'}): freeze and unfreeze as then, or start a new run from its weights")


def _warn_settings_replaced(path: Path, saved: dict, optimizer: torch.optim.Optimizer) -> None:
    """A resumed optimiser takes the checkpoint's settings (torch's load_state_dict): say so where the one given was
    built with others (weight decay, eps, betas, a scheduled run's initial learning rate), which would otherwise be
    dropped in silence. The current learning rate, and the momentum or betas a cyclic schedule moves, change during
    a run by design (a schedule, ReduceLROnPlateau in evaluate): not compared."""
    changed = []
    for number, (then, now) in enumerate(zip(saved["param_groups"], optimizer.param_groups)):
        cycled = {"momentum", "betas"} if "max_momentum" in now or "base_momentum" in now else set()
        for key, value in now.items():
            if key in ("params", "lr") or key in cycled or key not in then:
                continue
            if key == "initial_lr" or (isinstance(value, (numbers.Real, tuple, list)) and not isinstance(value, bool)):
                if _differs(then[key], value):
                    changed.append(f"group {number} {key} {then[key]!r} (given {value!r})")
    if changed:
        warnings.warn(f"{path}: resuming continues the run as it was, with its optimiser settings: {'; '.join(changed[:4])}"
                      f"{' ...' if len(changed) > 4 else ''}; to train on with other settings, start a new run from its weights",
                      UserWarning, stacklevel=4)


def _differs(a: Any, b: Any) -> bool:
    a = a.tolist() if isinstance(a, torch.Tensor) else a
    b = b.tolist() if isinstance(b, torch.Tensor) else b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) != len(b) or any(_differs(x, y) for x, y in zip(a, b))
    if isinstance(a, numbers.Real) and isinstance(b, numbers.Real):
        return not math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    return a != b


def _check_kinds(path: Path, what: str, saved: Any, current: dict) -> None:
    """``saved`` is a dict whose values have the kinds of ``current``'s where both have the key and a value:
    numbers (and tensors) for numbers, bools for bools, strings for strings, sequences for sequences."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: {what} is a {type(saved).__name__}, not a dict")
    kinds = ((bool,), (numbers.Real, torch.Tensor), (str,), (list, tuple), (dict,))
    for key, value in current.items():
        if key not in saved or saved[key] is None or value is None:
            continue
        kind = next((k for k in kinds if isinstance(value, k)), None)
        if kind is not None and (not isinstance(saved[key], kind) or (kind != (bool,) and isinstance(saved[key], bool))):
            raise CheckpointError(f"{path}: {what}[{key!r}] is {type(saved[key]).__name__} {saved[key]!r:.60}, expected {type(value).__name__} like {value!r:.40}")
