"""How every minipt op is registered with torch.library, written once.

An op is a ``torch.library.custom_op`` whose body is its plain-torch reference, so the reference
runs on every device without a kernel (and on the CPU, where the op gives no aten composition of
its own); on CUDA (``KERNEL_DEVICE``) the op runs the Triton kernel, its module imported at the
first launch (``import minipt.ops`` never imports triton), or torch's own kernels for the same
computation where ``cuda.kernel`` measured them faster for the shape. A fake implementation tells torch.compile and torch.export the outputs' shapes,
and an op with a gradient gets a backward that calls its backward op, registered the same way.
Every output is contiguous whichever implementation ran (``_layout``).

With this pattern the ops pass ``torch.library.opcheck``, ``torch.compile(fullgraph=True)`` and
``torch.export`` on CPU (tests/test_ops.py); ``triton_op`` + ``wrap_triton`` does not (tracing would
run the interpreted kernel on fake tensors).
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

import torch
from torch import Tensor

from . import cuda
from ._layout import contiguous

KERNEL_DEVICE = "cuda"  # the one device type with kernels; every other one runs the reference
ON_CUDA: dict[str, Callable] = {}  # op name -> what it runs on CUDA tensors: the Triton kernel or torch's, chosen


def no_float64(*args) -> bool:
    """Whether the kernels take these arguments: they compute in float32, so float64 runs the reference."""
    return not any(isinstance(a, Tensor) and a.dtype == torch.float64 for a in args)


def register_op(
    name: str,
    reference: Callable,
    *,
    kernel: str,
    fake: Callable,
    kernel_takes: Callable[..., bool] = no_float64,
    aten: Callable | None = None,
    torch_takes: Callable[..., bool] = lambda *args: True,
    backward: Callable | None = None,
    save_outputs: bool = False,
    non_differentiable: Sequence[int] = (),
):
    """Registers ``minipt::<name>`` and returns ``(op, launcher)``.

    - ``reference``: the plain-torch implementation, typed (the op's schema is read off its annotations);
    - ``kernel``: ``"<module>.<function>"`` in minipt.ops, the Triton launcher with the reference's
      arguments; ``kernel_takes(*args)`` False runs the reference on CUDA too (float64 by default);
    - ``aten``: torch's own fused kernel for what the reference writes out in several passes, where
      there is one (checked against the reference in tests/test_ops.py): the op's CPU implementation;
    - on CUDA, torch's version (``aten``, else the reference) competes with the Triton kernel
      (``cuda.kernel``) where ``torch_takes(*args)`` (False: it would need too much memory);
    - ``fake``: the outputs' shapes and dtypes from the inputs' (``_layout.empty_like``);
    - ``backward(grads, inputs, outputs)``: the gradient of every input (None where there is none),
      given the gradients of the outputs, the op's inputs and, with ``save_outputs``, its outputs;
      the outputs at the indices ``non_differentiable`` get no gradient.

    ``launcher`` runs the Triton kernel; the kernel tests call it on CPU tensors under
    TRITON_INTERPRET=1. ``ON_CUDA[name]`` is what the op runs on CUDA tensors (the choice between the two).
    """
    module, function = kernel.split(".")

    def run_reference(*args):
        return contiguous(reference(*args))

    def launcher(*args):
        if not kernel_takes(*args):
            return run_reference(*args)
        kernels = importlib.import_module(f"{__package__}.{module}")  # looked up at every launch: tests reload it
        return contiguous(getattr(kernels, function)(*args))

    def run_torch(*args):
        return contiguous((aten or reference)(*args))

    def on_cuda(*args):
        if kernel_takes(*args) and torch_takes(*args) and cuda.kernel(name, args, launcher, run_torch) == "torch":
            return run_torch(*args)
        return launcher(*args)

    run_reference.__name__, launcher.__name__, on_cuda.__name__ = f"{name}_reference", f"{name}_triton", f"{name}_cuda"
    schema = torch.library.infer_schema(reference, mutates_args=())
    op = torch.library.custom_op(f"minipt::{name}", run_reference, mutates_args=(), schema=schema)
    op.register_kernel(KERNEL_DEVICE)(on_cuda)
    ON_CUDA[name] = on_cuda
    if aten is not None:
        op.register_kernel("cpu")(lambda *args: contiguous(aten(*args)))
    op.register_fake(fake)
    if backward is not None:
        _register_backward(op, backward, save_outputs, non_differentiable)
    return op, launcher


_SAVED = object()  # marks an argument kept by save_for_backward rather than on ctx


def _register_backward(op, backward: Callable, save_outputs: bool, non_differentiable: Sequence[int]) -> None:
    def setup_context(ctx, inputs, output):
        outputs = output if isinstance(output, tuple) else (output,)
        kept = tuple(inputs) + (outputs if save_outputs else ())
        ctx.save_for_backward(*(a for a in kept if isinstance(a, Tensor)))
        ctx.kept = [_SAVED if isinstance(a, Tensor) else a for a in kept]  # None, numbers and strings as they are
        ctx.num_inputs = len(inputs)
        ctx.mark_non_differentiable(*(outputs[i] for i in non_differentiable))

    def grads_of_inputs(ctx, *grads):
        tensors = iter(ctx.saved_tensors)
        kept = [next(tensors) if a is _SAVED else a for a in ctx.kept]
        return tuple(backward(grads, kept[: ctx.num_inputs], kept[ctx.num_inputs :]))

    op.register_autograd(grads_of_inputs, setup_context=setup_context)


def per_step(op, reference: Callable, device: torch.device) -> Callable:
    """What a loop calling ``op`` at every step should call for tensors on ``device``: the op itself
    where it has a kernel (torch.library picks the kernel, and a traced graph holds the op), and its
    reference directly everywhere else. The reference is what the op runs there; calling it directly
    saves the custom-op dispatch per call (about 8 us in torch 2.13), which is 10-15% of batch-1
    recurrent generation on CPU (bench/rnn.py, columns ``fused`` and ``fused-op``)."""
    return op if device.type == KERNEL_DEVICE else reference


def register_dict_pytree(cls: type) -> type:
    """A dict subclass as a pytree node, flattened as a dict is (its values, keyed by name), so torch.export and
    torch.compile see the tensors inside (the tokenizer's Encoding, passed as ``kwargs=batch``)."""
    from torch.utils import _pytree

    _pytree.register_pytree_node(
        cls,
        lambda mapping: (list(mapping.values()), list(mapping.keys())),
        lambda values, keys: cls(zip(keys, values)),
        serialized_type_name=f"{cls.__module__}.{cls.__qualname__}",
        flatten_with_keys_fn=lambda mapping: ([(_pytree.MappingKey(k), v) for k, v in mapping.items()], list(mapping.keys())),
    )
    return cls
