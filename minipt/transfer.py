"""Transfer learning: freeze, unfreeze and re-head a pretrained model by the names of its stages.

Each model class declares its stages in data-flow order, as data:

    class ResNet(...):
        transfer_stages = {"stem": "stem", "stages.{i}": "stages.{i}", "head": "head"}
        transfer_head = ("head", "num_classes")   # the task head and the config field of its size

A stage is one module path or a tuple of them; ``{i}`` runs over the children
of a numbered container (``nn.ModuleList``/``nn.Sequential``), giving
``stages.0``, ``stages.1``, ... A model whose grouping depends on its config
(EfficientNet groups its flat list of blocks into the paper's stages) computes
the same dict in a property. Every parameter belongs to exactly one stage; a
tied parameter (a language-model head that reuses the token embedding) counts
in the first stage that holds it.

The four ways to adapt a pretrained model are then a few lines each:

    freeze_up_to(model, "layers.5")        # feature extraction: only the head trains
    freeze_up_to(model, "layers.3")        # partial fine-tuning: the top blocks and the head
    unfreeze(model)                        # full fine-tuning, with
    torch.optim.AdamW(param_groups(model, lr=2e-5, layer_decay=0.8))   # smaller steps lower down
    print(stage_table(model))              # trainable and frozen parameters per stage

A frozen stage also keeps its BatchNorm statistics and dropout fixed: its
modules ignore ``train(True)`` and stay in eval mode until ``unfreeze`` (the
default ``bn="eval"``; ``bn="train"`` lets them follow the model's mode). This
is done by replacing ``train`` on the frozen modules themselves, so
``model.train()``, ``DistributedDataParallel.train()`` and ``module.training``
all agree with what the forward pass does.
"""

from __future__ import annotations

import functools
from collections import namedtuple
from contextvars import ContextVar
from typing import Iterable

import torch
from torch import nn

from .checks import check_choice, check_float, check_int, check_str, fused_inside, is_quantized
from .errors import InputError, StageError, TrainingError
from .nn.backend import BackendBlock

BN_MODES = ("eval", "train")


# -- the declared stages ---------------------------------------------------------
def ddp_wrapper(model: nn.Module) -> nn.parallel.DistributedDataParallel | None:
    """The DistributedDataParallel wrapper ``model`` is, or holds under torch.compile's wrapper; None without one."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            return model
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return None
        model = inner


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside torch's wrappers: DistributedDataParallel (``.module``) and torch.compile (``._orig_mod``)."""
    if not isinstance(model, nn.Module):
        raise InputError(f"expected a model (a torch.nn.Module), got {type(model).__name__} {model!r:.80}")
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def _declared(model: nn.Module) -> dict:
    found = getattr(model, "transfer_stages", None)
    if not isinstance(found, dict) or not found:
        raise TrainingError(f"{type(model).__name__} declares no transfer_stages (a dict of stage name -> module path)")
    return found


def _resolve(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Stage name -> its modules, in data-flow order; a path that holds None (no pooler) gives no stage."""
    resolved: dict[str, list[nn.Module]] = {}
    for name, paths in _declared(model).items():
        paths = (paths,) if isinstance(paths, str) else tuple(paths)
        if "{i}" in name:  # one stage per child of a numbered container
            (path,) = paths
            container = _module(model, path.split(".{i}")[0])
            for index in range(len(container)):
                resolved[name.format(i=index)] = [_module(model, path.format(i=index))]
            continue
        modules = [m for m in (_module(model, p) for p in paths) if m is not None]
        if modules:
            resolved[name] = modules
    return resolved


def _module(model: nn.Module, path: str) -> nn.Module | None:
    module = model
    for part in path.split("."):
        module = getattr(module, part, None) if not part.isdigit() else module[int(part)]
        if module is None:
            return None
    return module


def stage_parameters(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Stage name -> its (parameter name, parameter) pairs; every parameter of the model in exactly one stage."""
    model = unwrapped(model)
    stage_of = {}
    for stage, modules in _resolve(model).items():
        for module in modules:
            for param in module.parameters():
                stage_of.setdefault(id(param), stage)  # a tied parameter stays with the first stage
    params: dict[str, list] = {stage: [] for stage in _resolve(model)}
    left_out = []
    for name, param in model.named_parameters():  # named_parameters lists a tied parameter once
        if id(param) in stage_of:
            params[stage_of[id(param)]].append((name, param))
        else:
            left_out.append(name)
    if left_out:
        raise TrainingError(f"{type(model).__name__}.transfer_stages leaves parameters in no stage: {', '.join(left_out[:8])}")
    return params


def stages(model: nn.Module) -> list[str]:
    """The model's stage names, input first: ``["embeddings", "layers.0", ..., "pooler", "head"]``."""
    model = unwrapped(model)
    return list(_resolve(model))


def _check_names(model: nn.Module, names: Iterable[str]) -> list[str]:
    names = [check_str("stage name", name) for name in names]
    known = stages(model)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise StageError(f"{type(model).__name__} has no stage {', '.join(map(repr, unknown))}; its stages: {', '.join(known)}")
    return list(names)


# -- freezing ----------------------------------------------------------------------
def freeze(model: nn.Module, *names: str, bn: str = "eval") -> nn.Module:
    """Stop training the named stages (all stages if none are named).

    ``bn="eval"`` (default) also keeps the stages' BatchNorm statistics and
    dropout as in evaluation, whatever ``model.train()`` says later;
    ``bn="train"`` lets them follow the model's mode.
    """
    given, model = model, unwrapped(model)  # returned as given (a DDP or compiled wrapper too)
    check_choice("bn", bn, BN_MODES)
    _refuse_inference_copies(model, "freeze")
    resolved, params = _resolve(model), stage_parameters(model)
    for name in _check_names(model, names) if names else list(resolved):
        for _, param in params[name]:
            param.requires_grad_(False)
        for module in resolved[name]:
            if bn == "eval":
                _hold_in_eval(module)
            else:
                _release(module, model.training)
    return given


def unfreeze(model: nn.Module, *names: str) -> nn.Module:
    """Train the named stages again (all stages if none are named), in the model's current mode."""
    given, model = model, unwrapped(model)  # returned as given (a DDP or compiled wrapper too)
    _refuse_inference_copies(model, "unfreeze")
    resolved, params = _resolve(model), stage_parameters(model)
    for name in _check_names(model, names) if names else list(resolved):
        for _, param in params[name]:  # by stage, not module: a tied weight follows the first stage that holds it
            param.requires_grad_(True)
        for module in resolved[name]:
            _release(module, model.training)
    return given


def freeze_up_to(model: nn.Module, name: str, *, bn: str = "eval") -> nn.Module:
    """Freeze every stage from the input up to and including ``name``; the stages above it train.

    Calling it again with a lower stage unfreezes the stages in between (gradual unfreezing).
    """
    given, model = model, unwrapped(model)  # returned as given (a DDP or compiled wrapper too)
    check_choice("bn", bn, BN_MODES)
    _check_names(model, [name])
    order = stages(model)
    cut = order.index(name) + 1
    freeze(model, *order[:cut], bn=bn)
    if cut < len(order):
        unfreeze(model, *order[cut:])
    return given


def _frozen_train(self: nn.Module, mode: bool = True) -> nn.Module:
    return type(self).train(self, False)  # a frozen stage stays in eval mode, and so do its children


def _hold_in_eval(module: nn.Module) -> None:
    for sub in module.modules():
        sub.train = functools.partial(_frozen_train, sub)  # a partial of a module function pickles (torch.save(model)); a bound method would not
    module.eval()


def _release(module: nn.Module, mode: bool) -> None:
    for sub in module.modules():
        sub.__dict__.pop("train", None)  # back to the class's train()
    module.train(mode)


def is_held_in_eval(module: nn.Module) -> bool:
    return "train" in module.__dict__


# -- a new task head -----------------------------------------------------------------
_delegated: ContextVar[frozenset[int]] = ContextVar("_delegated", default=frozenset())  # models whose own reset_classifier runs now


def reset_classifier(model: nn.Module, num_classes: int | None = None, **config_fields) -> nn.Module:
    """Replace the task head by a freshly initialised one for ``num_classes`` classes (timm's convention).

    A model with its own ``reset_classifier`` (minipt's classifiers: ``minipt.models.classifier``)
    is asked to do it, so both calls do the same (0 classes: no head, on the image classifiers);
    that method comes back here for the replacement itself. The model's config is updated through
    its own checks. A head whose size follows another field is re-sized through that field:
    ``reset_classifier(crnn, charset="0123456789")``.
    """
    given, model = model, unwrapped(model)  # returned as given (a compiled wrapper too)
    if ddp_wrapper(given) is not None:
        raise TrainingError("reset_classifier replaces the head's parameters, and DistributedDataParallel synchronises those it was "
                            "built with (the new head would train apart on each process, or stop DDP): reset the head of the model "
                            "before wrapping it (reset_classifier(ddp.module, ...), then a new DistributedDataParallel)")
    _refuse_inference_copies(model, "reset_classifier")
    own = getattr(type(model), "reset_classifier", None)
    if callable(own) and num_classes is not None and id(model) not in _delegated.get():
        token = _delegated.set(_delegated.get() | {id(model)})
        try:
            own(model, num_classes, **config_fields)
        finally:
            _delegated.reset(token)
        return given
    declared = getattr(model, "transfer_head", None)
    if declared is None:
        raise TrainingError(f"{type(model).__name__} declares no task head to replace (its output is not a set of classes)")
    path, size_field = declared
    config = model.config
    if num_classes is not None:
        if size_field not in {f for f in type(config).__dataclass_fields__}:
            raise TrainingError(f"{type(model).__name__}'s number of classes follows its config; pass the field that decides it (such as charset=...)")
        config_fields[size_field] = check_int("num_classes", num_classes, low=1)
        names = config_fields.get("id2label")
        if isinstance(names, dict) and len(names) != num_classes:
            raise TrainingError(f"reset_classifier to {num_classes} classes got id2label with {len(names)} names; give one name per class")
    if not config_fields:
        raise TrainingError("reset_classifier needs num_classes (or the config field that sets the head's size)")
    if "id2label" in type(config).__dataclass_fields__ and "id2label" not in config_fields:
        config_fields["id2label"] = None  # the old head's label names do not describe the new one
    config = config.replace(**config_fields)
    old = _module(model, path)
    size = getattr(config, size_field)
    try:  # minipt's Linear keeps its backend
        new = type(old)(old.in_features, size, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)
    except (RuntimeError, MemoryError, TypeError) as err:  # the allocator, a size overflow, a size over 64 bits
        raise TrainingError(f"a head of {size} classes cannot be allocated here ({old.in_features} x {size} weights): {str(err).splitlines()[0]}") from None
    if isinstance(old, BackendBlock):
        new.backend = old.backend
    if hasattr(model, "init_weights"):
        model.init_weights(new)
    parent, _, attr = path.rpartition(".")
    setattr(_module(model, parent) if parent else model, attr, new)
    model.config = config
    for modules in _resolve(model).values():  # a fresh head trains: its stage's dropout no longer holds as frozen
        if any(module is new for module in modules):
            for module in modules:
                if is_held_in_eval(module) and next(module.parameters(), None) is None:
                    _release(module, model.training)
    return given


def num_classes(model: nn.Module) -> int:
    model = unwrapped(model)
    declared = getattr(model, "transfer_head", None)
    if declared is None:
        raise TrainingError(f"{type(model).__name__} declares no classification head")
    return int(getattr(model.config, declared[1]))


def check_labels(model: nn.Module, labels) -> None:
    """Refuse labels the head cannot predict (before training, not as an index error deep in the loss): class numbers
    of a single-label head, -100 (skipped by the loss) allowed. A head whose config names another problem
    (``problem_type`` regression or multi-label, or a one-output head or float labels where it names none, as
    transformers reads it) takes targets its own loss checks, batch by batch."""
    model = unwrapped(model)
    try:
        labels = torch.as_tensor(labels)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"labels must be class numbers (a tensor, array or list of integers), got {type(labels).__name__}: {err}") from None
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "problem_type"):
        problem = config.problem_type
        if problem in ("regression", "multi_label_classification") or (problem is None and (num_classes(model) == 1 or labels.is_floating_point())):
            return
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputError(f"labels must be integer class numbers, got dtype {labels.dtype}")
    classes = num_classes(model)
    labels = labels[labels != -100]  # skipped by the loss
    if labels.numel() == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        field = getattr(model, "transfer_head")[1]
        raise TrainingError(
            f"labels run from {low} to {high}, but {type(model).__name__}'s head predicts {classes} classes (0..{classes - 1}); "
            f"call reset_classifier(model, {high + 1}) or fix the labels ({field} = {classes})"
        )


# -- optimiser groups ------------------------------------------------------------------
def param_groups(model: nn.Module, lr: float, *, layer_decay: float = 1.0, weight_decay: float | None = None) -> list[dict]:
    """One optimiser group per stage that has trainable parameters, with layer-wise learning-rate decay.

    The last stage gets ``lr``, the one below ``lr * layer_decay``, and so on
    down to the input (Clark et al., 2020; layer_decay=1 is one rate for all).
    A model of parallel towers (CLIP: ``transfer_towers``, the stage-name
    prefixes of each) counts each tower's depth down its own path from the
    output: the top of the text tower gets the rate of the top of the image
    tower, not one below the whole image tower's. Each group carries its
    stage's name under ``"stage"``.
    """
    model = unwrapped(model)
    _refuse_inference_copies(model, "param_groups")
    lr = check_float("lr", lr, low=0)
    layer_decay = check_float("layer_decay", layer_decay, low=0, high=1, low_open=True)
    weight_decay = check_float("weight_decay", weight_decay, low=0, optional=True)
    by_stage = stage_parameters(model)
    order = [stage for stage, named in by_stage.items() if named]  # a stage without parameters (a removed head) is no depth
    groups = []
    for stage in reversed(order):
        depth = _depth(order, stage, getattr(model, "transfer_towers", ()))
        params = [p for _, p in by_stage[stage] if p.requires_grad]
        if params:
            group = {"params": params, "lr": lr * layer_decay**depth, "stage": stage}
            if weight_decay is not None:
                group["weight_decay"] = weight_decay
            groups.append(group)
    if not groups:
        raise TrainingError(f"every parameter of {type(model).__name__} is frozen: nothing to train")
    check_param_groups(model, groups[::-1])
    return groups[::-1]  # input first, like stages()


def _depth(order: list[str], stage: str, towers: tuple[str, ...]) -> int:
    """How many stages lie above ``stage`` on its path to the output: every later stage, except those of a
    parallel tower (a stage outside the towers lies below all of them: the deepest tower counts)."""
    def tower(name: str) -> str | None:
        return next((prefix for prefix in towers if name.startswith(prefix)), None)

    later = order[order.index(stage) + 1:]
    own = tower(stage)
    if own is not None:
        return sum(tower(name) in (own, None) for name in later)
    shared = sum(tower(name) is None for name in later)
    return shared + max((sum(tower(name) == prefix for name in later) for prefix in towers), default=0)


def check_param_groups(model: nn.Module, groups_or_optimizer) -> None:
    """Every trainable parameter of the model in the optimiser exactly once, and nothing from elsewhere."""
    model = unwrapped(model)
    if isinstance(groups_or_optimizer, torch.optim.Optimizer):
        groups = groups_or_optimizer.param_groups
    elif hasattr(groups_or_optimizer, "__iter__") and not isinstance(groups_or_optimizer, (str, bytes, dict, torch.Tensor)):
        groups = list(groups_or_optimizer)  # a list of groups, or of parameters (model.parameters()), as torch.optim takes
    else:
        raise InputError(f"expected an optimiser or a list of its groups, got {type(groups_or_optimizer).__name__} {groups_or_optimizer!r:.80}")
    names = {id(p): n for n, p in model.named_parameters()}
    seen: dict[int, int] = {}
    foreign = 0
    for group in groups:
        if isinstance(group, dict) and "params" not in group or not isinstance(group, (dict, torch.Tensor)):
            raise InputError(f"an optimiser group is a dict with 'params' (or a parameter), got {group!r:.80}")
        params = group["params"] if isinstance(group, dict) else [group]
        for param in [params] if isinstance(params, torch.Tensor) else params:
            seen[id(param)] = seen.get(id(param), 0) + 1
            foreign += id(param) not in names
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    twice = [names[i] for i, count in seen.items() if count > 1 and i in names]
    problems = []
    if missing:
        problems.append(f"{len(missing)} trainable parameter(s) in no group: {', '.join(missing[:8])}")
    if twice:
        problems.append(f"{len(twice)} parameter(s) in more than one group: {', '.join(twice[:8])}")
    if foreign:
        problems.append(f"{foreign} parameter(s) that are not {type(model).__name__}'s")
    if problems:
        raise TrainingError("the optimiser groups do not cover the model: " + "; ".join(problems))


# -- what trains ------------------------------------------------------------------------
StageRow = namedtuple("StageRow", "stage trainable frozen mode")


class StageTable(list):
    """One ``StageRow`` (stage, trainable parameters, frozen parameters, mode) per stage, input first; ``print`` shows a table."""

    def __str__(self) -> str:
        total = StageRow("total", sum(r.trainable for r in self), sum(r.frozen for r in self), "")
        width = max(len(r.stage) for r in [*self, total])
        line = lambda stage, trainable, frozen, mode: f"{stage:<{width}}  {trainable:>11}  {frozen:>11}  {mode}".rstrip()  # noqa: E731
        rule = "-" * (width + 40)
        body = [line(r.stage, f"{r.trainable:,}", f"{r.frozen:,}", r.mode) for r in self]
        return "\n".join([line("stage", "trainable", "frozen", "mode"), rule, *body, rule, line("total", f"{total.trainable:,}", f"{total.frozen:,}", "")])


def stage_table(model: nn.Module) -> StageTable:
    """Trainable and frozen parameter counts per stage, and whether the stage is held in eval mode.

    (``minipt.summary.summary`` is the other table: every module's output shape, parameters and FLOPs.)
    """
    model = unwrapped(model)
    resolved = _resolve(model)
    rows = StageTable()
    for stage, params in stage_parameters(model).items():
        trainable = sum(p.numel() for _, p in params if p.requires_grad)
        frozen = sum(p.numel() for _, p in params if not p.requires_grad)
        held = all(is_held_in_eval(m) for m in resolved[stage])
        rows.append(StageRow(stage, trainable, frozen, "eval (held)" if held else "train" if model.training else "eval"))
    return rows


def trainable_parameters(model: nn.Module) -> int:
    model = unwrapped(model)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- quantised models ------------------------------------------------------------------
def _refuse_inference_copies(model: nn.Module, what: str) -> None:
    """Refuse the copies made for inference only: an int8 model, a ``fuse()`` copy (its packed weights outside its
    parameters: unfreezing it would train its norms and embeddings alone)."""
    if is_quantized(model):
        raise TrainingError(
            f"{type(model).__name__} is quantised (int8 weights, packed for inference); {what} needs a float model: "
            "train the float model and quantise it afterwards"
        )
    where = fused_inside(model)
    if where is not None:
        raise TrainingError(f"{type(model).__name__} is or holds a fuse() copy{where}, made for inference: its packed weights are no "
                            f"parameters and do not train; {what} needs the model itself: train it and fuse() afterwards")


def check_trainable(model: nn.Module) -> None:
    """Refuse a model that cannot be trained: quantised, or with every parameter frozen."""
    model = unwrapped(model)
    _refuse_inference_copies(model, "training")
    if not any(p.requires_grad for p in model.parameters()):
        raise TrainingError(f"every parameter of {type(model).__name__} is frozen: nothing to train")


__all__ = [
    "unwrapped",
    "check_labels",
    "check_param_groups",
    "check_trainable",
    "freeze",
    "freeze_up_to",
    "is_quantized",
    "num_classes",
    "param_groups",
    "reset_classifier",
    "StageRow",
    "StageTable",
    "stage_parameters",
    "stage_table",
    "stages",
    "trainable_parameters",
    "unfreeze",
]
