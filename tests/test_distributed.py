"""Models are plain nn.Modules: they wrap in torch.distributed's DDP and FSDP as they are.

In one process the wrapped and the plain model run the same kernels on the same
numbers, so their gradients agree to 1e-6 absolute.
"""

from __future__ import annotations

import datetime
import os
import socket

import pytest
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from minipt.models.bert import BertConfig, BertForSequenceClassification


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def process_group():
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _models_and_batch():
    """A small classifier, an unwrapped copy of it (the reference) and a labelled batch."""
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, num_labels=3, max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    plain = BertForSequenceClassification(config)
    plain.load_state_dict(model.state_dict())
    ids = torch.randint(0, 50, (4, 8))
    return model, plain, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 2, 0])}


def _grads(model):
    return {k.removeprefix("module."): p.grad.clone() for k, p in model.named_parameters()}


def test_ddp(process_group):
    model, plain, batch = _models_and_batch()
    wrapped = torch.nn.parallel.DistributedDataParallel(model)
    wrapped(**batch).loss.backward()
    plain(**batch).loss.backward()
    expected = _grads(plain)
    for key, grad in _grads(wrapped).items():
        torch.testing.assert_close(grad, expected[key], atol=1e-6, rtol=0)


def test_fsdp(process_group):
    model, plain, batch = _models_and_batch()
    for layer in model.bert.layers:
        fully_shard(layer)
    fully_shard(model)
    loss = model(**batch).loss
    loss.backward()
    plain_loss = plain(**batch).loss
    plain_loss.backward()
    assert abs(loss.item() - plain_loss.item()) < 1e-6
    expected = _grads(plain)
    for key, param in model.named_parameters():
        grad = param.grad.full_tensor() if hasattr(param.grad, "full_tensor") else param.grad
        torch.testing.assert_close(grad, expected[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("unit", ["block", "attention"])
def test_fsdp_t5_sharded_layer_by_layer(process_group, unit):
    """Each T5 block (transformers' T5Block is the unit it splits at), or each attention module, sharded on its own:
    the relative position bias and the cross-attention's keys and values are computed inside the calls of the modules
    that hold their weights (computed in the stacks, they met sharded weights: aten.embedding got mixed Tensor and
    DTensor)."""
    from minipt.models.t5 import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, dropout_rate=0.0)
    torch.manual_seed(0)
    model, plain = T5ForConditionalGeneration(config), T5ForConditionalGeneration(config)
    plain.load_state_dict(model.state_dict())
    for layer in [*model.encoder.layers, *model.decoder.layers]:
        if unit == "block":
            fully_shard(layer)
        else:
            for attention in (layer.attn, getattr(layer, "cross_attn", None)):
                if attention is not None:
                    fully_shard(attention)
    fully_shard(model)
    batch = {"input_ids": torch.randint(2, 40, (4, 6)), "attention_mask": torch.tensor([[1] * 6] * 3 + [[1] * 4 + [0] * 2]),
             "labels": torch.randint(2, 40, (4, 5))}
    loss, plain_loss = model(**batch).loss, plain(**batch).loss
    loss.backward()
    plain_loss.backward()
    assert abs(loss.item() - plain_loss.item()) < 1e-6
    expected = _grads(plain)
    for key, param in model.named_parameters():
        torch.testing.assert_close(param.grad.full_tensor(), expected[key], atol=1e-6, rtol=0)


def test_ddp_synchronises_once_per_accumulated_step(process_group):
    """fit(accumulate=3) over 7 batches steps 3 times (3 + 3 + 1 batches); DDP reduces the gradients at each
    step's last backward only, the others under no_sync."""
    from minipt.train import fit

    model, plain, batch = _models_and_batch()
    wrapped = torch.nn.parallel.DistributedDataParallel(model)
    reductions = []

    def counting(state, bucket):
        reductions.append(bucket.index())
        future = torch.futures.Future()
        future.set_result(bucket.buffer())  # one process: the sum is the buffer itself
        return future

    wrapped.register_comm_hook(None, counting)
    batches = [{k: v[i % 4:i % 4 + 1] for k, v in batch.items()} for i in range(7)]
    fit(wrapped, torch.optim.SGD(wrapped.parameters(), lr=0.1), batches, loss=lambda m, b: m(**b).loss, epochs=1,
        accumulate=3, progress=False)
    buckets = len(set(reductions))
    assert buckets >= 1 and len(reductions) == 3 * buckets, reductions


def _leave() -> None:
    """A worker whose work is done and written, past its last barrier, ends its process at once: gloo's teardown (and
    the interpreter's exit after it) has been seen to hang for minutes on a loaded machine after the work was done."""
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _spawn(worker, args: tuple, limit: float = 300.0) -> None:
    """``worker(rank, *args)`` on WORLD processes; they must all end within ``limit`` seconds. torch's spawn waits
    for ever on a process that never ends (gloo's teardown has been seen to hang after the work was done): such
    processes are killed and the test fails, naming it, rather than holding up the whole suite."""
    import time

    import torch.multiprocessing as mp

    context = mp.spawn(worker, args=args, nprocs=WORLD, join=False)
    deadline = time.monotonic() + limit
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            alive = [p.pid for p in context.processes if p.is_alive()]
            for process in context.processes:
                process.kill()
            pytest.fail(f"{worker.__name__}: processes {alive} still running after {limit:.0f} s (killed)")


# -- two processes: the same weights as one process with the same global batch ------------
GLOBAL_BATCH, WORLD = 8, 2


def _tiny_run(world: int, rank: int, kind: str, accumulate: int = 1):
    """Two epochs of fit() on a tiny BERT classifier, ``world`` processes sharing each global batch of 8,
    each in ``accumulate`` batches."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from minipt.train import fit

    model, _, _ = _models_and_batch()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (32, 8), generator=g)
    data = TensorDataset(ids, torch.randint(0, 3, (32,), generator=g))
    if kind == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    elif kind == "fsdp":
        for layer in model.bert.layers:
            fully_shard(layer)
        fully_shard(model)
    # DistributedSampler without shuffling deals rank r the samples r, r + world, ...: together one global batch.
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False) if world > 1 else None
    loader = DataLoader(data, batch_size=GLOBAL_BATCH // world // accumulate, sampler=sampler)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    fit(model, optimizer, loader, loss=lambda m, b: m(input_ids=b[0], labels=b[1]).loss, epochs=2, progress=False,
        accumulate=accumulate)
    state = model.module.state_dict() if kind == "ddp" else model.state_dict()
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().clone() for k, v in state.items()}


def _worker(rank: int, port: int, kind: str, out: str, accumulate: int):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120))  # a lost peer fails, never hangs
    try:
        state = _tiny_run(WORLD, rank, kind, accumulate)
        if rank == 0:
            torch.save(state, out)
        dist.barrier()  # both done before either tears its process group down
    except BaseException:
        dist.destroy_process_group()
        raise
    _leave()


@pytest.mark.parametrize("kind, accumulate", [("ddp", 1), ("fsdp", 2)])  # DDP with accumulate: the hook count above
def test_two_processes_train_like_one(kind, accumulate, tmp_path):
    """Also with fit(accumulate=2): two batches of 2 per process and step, the gradients synchronised once."""
    out = tmp_path / "weights.pt"
    _spawn(_worker, (_free_port(), kind, str(out), accumulate))
    distributed = torch.load(out, weights_only=True)
    single = _tiny_run(1, 0, "single")
    assert distributed.keys() == single.keys()
    moved = 0
    initial, _, _ = _models_and_batch()
    for key, value in single.items():
        # the same sums in another order (all-reduce): float32 rounding, far below the training's own steps
        torch.testing.assert_close(distributed[key], value, atol=1e-5, rtol=1e-5, msg=key)
        moved += not torch.equal(value, initial.state_dict()[key])
    assert moved > len(single) // 2  # training changed the weights, so the comparison means something


# -- resuming on two processes, each with its own dropout stream --------------------------
def _resume_worker(rank: int, port: int, folder: str, out: str):
    """Three epochs straight, and two then one resumed (after scrambling every generator): the same weights on
    each process, though each draws its own dropout masks (seeded per rank)."""
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

    from minipt.train import fit

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=120))  # a lost peer fails, never hangs
    try:
        config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                            num_labels=3, max_position_embeddings=16, hidden_dropout_prob=0.3)
        g = torch.Generator().manual_seed(1)
        data = TensorDataset(torch.randint(0, 50, (16, 8), generator=g), torch.randint(0, 3, (16,), generator=g))

        def run(epochs, resume, model=None, optimizer=None):
            if model is None:
                torch.manual_seed(0)
                model = torch.nn.parallel.DistributedDataParallel(BertForSequenceClassification(config))
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
            torch.manual_seed(100 + rank)  # each process its own dropout stream
            loader = DataLoader(data, batch_size=4, sampler=DistributedSampler(data, WORLD, rank, shuffle=True, seed=3))
            history = fit(model, optimizer, loader, loss=lambda m, b: m(input_ids=b[0], labels=b[1]).loss, epochs=epochs,
                          checkpoint_dir=f"{folder}/{'resumed' if resume is not None else 'straight'}", resume=bool(resume),
                          progress=False)
            return model, optimizer, history

        straight, _, history = run(3, None)
        model, optimizer, _ = run(2, False)
        torch.manual_seed(12345)  # resuming must put back each process's own generators
        resumed, _, resumed_history = run(3, True, model, optimizer)
        same = all(torch.equal(a, b) for a, b in zip(straight.module.state_dict().values(), resumed.module.state_dict().values()))
        report = torch.tensor([float(same), history[-1].train_loss, resumed_history[-1].train_loss])
        reports = [torch.zeros(3) for _ in range(WORLD)]
        dist.all_gather(reports, report)
        if rank == 0:
            torch.save(torch.stack(reports), out)
        dist.barrier()  # both done before either tears its process group down
    except BaseException:
        dist.destroy_process_group()
        raise
    _leave()


def test_two_processes_resume_each_their_own_random_streams(tmp_path):
    """fit's checkpoint holds every process's generators: resumed on two processes with per-rank seeds, the
    weights equal an uninterrupted run's bit for bit on both, and every process reports the same (global) loss."""
    out = tmp_path / "reports.pt"
    _spawn(_resume_worker, (_free_port(), str(tmp_path), str(out)))
    reports = torch.load(out, weights_only=True)
    assert reports[:, 0].tolist() == [1.0, 1.0]  # resumed == straight on each process
    assert reports[0, 1] == reports[1, 1] and reports[0, 2] == reports[1, 2]  # the loss of the global batch, not rank 0's


def test_ddp_refuses_to_train_what_it_does_not_synchronise(process_group):
    """A stage unfrozen after wrapping would train apart on each process: the second fit names it."""
    from minipt import transfer
    from minipt.errors import TrainingError
    from minipt.train import fit

    model, _, batch = _models_and_batch()
    transfer.freeze_up_to(model, "layers.0")
    wrapped = torch.nn.parallel.DistributedDataParallel(model)
    step = lambda m, b: m(**b).loss  # noqa: E731
    fit(wrapped, torch.optim.SGD(transfer.param_groups(wrapped, lr=0.1)), [batch], loss=step, epochs=1, progress=False)
    transfer.unfreeze(wrapped, "layers.0")
    with pytest.raises(TrainingError, match=r"trainable parameters changed.*now trainable: bert\.layers\.0.*new DistributedDataParallel"):
        fit(wrapped, torch.optim.SGD(transfer.param_groups(wrapped, lr=0.1)), [batch], loss=step, epochs=1, progress=False)
    rewrapped = torch.nn.parallel.DistributedDataParallel(model)
    fit(rewrapped, torch.optim.SGD(transfer.param_groups(rewrapped, lr=0.1)), [batch], loss=step, epochs=1, progress=False)


def test_ddp_refuses_a_head_replaced_under_it(process_group):
    """reset_classifier swaps in parameters DDP never registered, under the old names: DDP stopped with a reduction
    error, or (find_unused_parameters) trained each process's new head apart. reset_classifier on the wrapper and a
    second fit after a reset on the model inside are refused, naming what to do."""
    from minipt import transfer
    from minipt.errors import TrainingError
    from minipt.train import fit

    model, _, batch = _models_and_batch()
    wrapped = torch.nn.parallel.DistributedDataParallel(model)
    with pytest.raises(TrainingError, match=r"reset the head of the model before wrapping it"):
        transfer.reset_classifier(wrapped, 5)
    assert model.config.num_labels == 3
    step = lambda m, b: m(**b).loss  # noqa: E731
    fit(wrapped, torch.optim.SGD(wrapped.parameters(), lr=0.1), [batch], loss=step, epochs=1, progress=False)
    transfer.reset_classifier(model, 3)  # the model inside: a new head of the same shape, under the same names
    with pytest.raises(TrainingError, match=r"parameters were replaced .*classifier\.weight.*new DistributedDataParallel"):
        fit(wrapped, torch.optim.SGD(wrapped.parameters(), lr=0.1), [batch], loss=step, epochs=1, progress=False)
    rewrapped = torch.nn.parallel.DistributedDataParallel(model)
    fit(rewrapped, torch.optim.SGD(rewrapped.parameters(), lr=0.1), [batch], loss=step, epochs=1, progress=False)
    compiled = torch.compile(rewrapped, backend="eager")  # the same DDP under torch.compile's wrapper: seen through
    with pytest.raises(TrainingError, match=r"reset the head of the model before wrapping it"):
        transfer.reset_classifier(compiled, 5)
    transfer.reset_classifier(model, 3)
    with pytest.raises(TrainingError, match=r"parameters were replaced"):
        fit(compiled, torch.optim.SGD(compiled.parameters(), lr=0.1), [batch], loss=step, epochs=1, progress=False)


def test_fit_refuses_a_model_sharded_in_part(process_group):
    """Layers sharded and the root not (CLIP's 0-d logit_scale makes fully_shard refuse its root): the root's
    parameters would train apart on each process, and fit failed inside torch's norm of mixed Tensor and DTensor."""
    from minipt.errors import TrainingError
    from minipt.train import fit

    model, _, batch = _models_and_batch()
    for layer in model.bert.layers:
        fully_shard(layer)
    with pytest.raises(TrainingError, match=r"trainable parameters are sharded .* and \d+ are not \(bert\.embeddings"):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), [batch], loss=lambda m, b: m(**b).loss, epochs=1, progress=False)


def test_fsdp_checkpoints_are_refused_before_training(process_group, tmp_path):
    from minipt.errors import TrainingError
    from minipt.train import fit, load_checkpoint, save_checkpoint

    model, plain, batch = _models_and_batch()
    save_checkpoint(tmp_path / "plain.safetensors", plain, epoch=1)
    fully_shard(model)
    trained = []
    step = lambda m, b: trained.append(1) or m(**b).loss  # noqa: E731
    with pytest.raises(TrainingError, match="checkpoint_dir: the model's parameters are sharded.*torch.distributed.checkpoint"):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), [batch], loss=step, epochs=1, checkpoint_dir=tmp_path / "run", progress=False)
    assert not trained
    with pytest.raises(TrainingError, match="save_checkpoint: the model's parameters are sharded"):
        save_checkpoint(tmp_path / "sharded.safetensors", model, epoch=1)
    with pytest.raises(TrainingError, match="load_checkpoint: the model's parameters are sharded"):
        load_checkpoint(tmp_path / "plain.safetensors", model)
    from minipt.errors import ConfigError

    with pytest.raises(ConfigError, match=r"parameters are sharded \(FSDP's fully_shard\), and the official format holds whole tensors"):
        model.save_pretrained(tmp_path / "official")  # a RuntimeError on an invalid python storage, inside torch, before
    assert not (tmp_path / "official").exists()


def test_a_loader_shorter_than_its_len_inside_a_ddp_group_is_named(process_group):
    """With accumulate, a wrapped model's group ends where len() says; a loader that ends earlier would leave the
    group's gradients unsynchronised across processes, so fit stops, naming it."""
    from minipt.errors import TrainingError
    from minipt.train import fit

    model, _, batch = _models_and_batch()
    wrapped = torch.nn.parallel.DistributedDataParallel(model)

    class Shorter:
        def __len__(self):
            return 4

        def __iter__(self):
            return iter([batch] * 3)

    with pytest.raises(TrainingError, match=r"train_loader ended 1 batch\(es\) before its len\(\) said, inside a group of accumulate=2"):
        fit(wrapped, torch.optim.SGD(wrapped.parameters(), lr=0.1), Shorter(), loss=lambda m, b: m(**b).loss, epochs=1,
            accumulate=2, progress=False)
