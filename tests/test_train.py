"""minipt.train.fit: checkpoints that resume to exactly the weights of an uninterrupted run, early stopping, refusals."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from minipt import transfer
from minipt.errors import CheckpointError, TrainingError
from minipt.train import BEST, LAST, fit, load_checkpoint, save_checkpoint


class Tiny(nn.Module):
    """Dropout and BatchNorm, so random numbers and running statistics must resume too."""

    transfer_stages = {"body": ("linear", "norm"), "head": "head"}

    def __init__(self, width=8):
        super().__init__()
        self.linear = nn.Linear(4, width)
        self.norm = nn.BatchNorm1d(width)
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.dropout(torch.relu(self.norm(self.linear(x)))))


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return TensorDataset(x, y)


def _run(tmp_path, epochs, resume=False, optimizer_class=torch.optim.AdamW, **kwargs):
    torch.manual_seed(0)
    model = Tiny()
    optimizer = optimizer_class(transfer.param_groups(model, 1e-2, layer_decay=0.5))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    loader = DataLoader(_data(), batch_size=8, shuffle=True)
    x, y = _data().tensors
    history = fit(
        model, optimizer, loader, loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), epochs=epochs,
        evaluate=lambda m: (m(x).argmax(-1) == y).float().mean(), scheduler=scheduler, checkpoint_dir=tmp_path,
        resume=resume, restore_best=False, progress=False, **kwargs,
    )
    return model, optimizer, history


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    straight, straight_opt, history = _run(tmp_path / "straight", epochs=4)
    _run(tmp_path / "stopped", epochs=2)
    torch.manual_seed(123)  # whatever happened in between is overwritten by the checkpoint's RNG states
    resumed, resumed_opt, resumed_history = _run(tmp_path / "stopped", epochs=4, resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [e.train_loss for e in history] == [e.train_loss for e in resumed_history]
    assert straight_opt.param_groups[0]["lr"] == resumed_opt.param_groups[0]["lr"]
    assert len(resumed_history) == 4


def test_the_checkpoint_is_one_safetensors_file(tmp_path):
    from safetensors import safe_open

    _run(tmp_path, epochs=1)
    with safe_open(str(tmp_path / LAST), framework="pt") as handle:
        keys = set(handle.keys())
        assert "minipt" in handle.metadata()
    assert {"model/linear.weight", "rng/torch", "optimizer/state/0/exp_avg"} <= keys
    assert (tmp_path / BEST).is_file()


def test_resume_from_another_model_or_optimiser(tmp_path):
    _run(tmp_path, epochs=1)
    torch.manual_seed(0)
    wider = Tiny(width=16)
    with pytest.raises(TrainingError, match=r"does not fit this Tiny: linear.weight: checkpoint \(8, 4\), model \(16, 4\)"):
        load_checkpoint(tmp_path / LAST, wider)
    other = nn.Linear(4, 3)
    with pytest.raises(TrainingError, match="checkpoint of a Tiny, not of this Linear"):
        load_checkpoint(tmp_path / LAST, other)
    with pytest.raises(TrainingError, match="optimizer AdamW, not SGD"):
        _run(tmp_path, epochs=2, resume=True, optimizer_class=lambda groups: torch.optim.SGD(groups, lr=0.1))
    model = Tiny()
    transfer.freeze(model, "body")
    optimizer = torch.optim.AdamW(transfer.param_groups(model, 1e-2))
    with pytest.raises(TrainingError, match="parameter groups of sizes"):
        load_checkpoint(tmp_path / LAST, model, optimizer)
    with pytest.raises(TrainingError, match="holds no optimizer state"):
        load_checkpoint(tmp_path / BEST, Tiny(), torch.optim.AdamW(Tiny().parameters()))
    (tmp_path / "broken.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "broken.safetensors", Tiny())


def test_early_stopping_and_best_weights(tmp_path):
    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scores = iter([0.5, 0.7, 0.6, 0.6, 0.9])
    seen = []

    def evaluate(m):
        seen.append({k: v.clone() for k, v in m.state_dict().items()})
        return next(scores)

    loader = DataLoader(_data(), batch_size=8)
    history = fit(model, optimizer, loader, loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), epochs=5,
                  evaluate=evaluate, patience=2, checkpoint_dir=tmp_path, progress=False)
    assert [e.score for e in history] == [0.5, 0.7, 0.6, 0.6]  # two epochs without improvement: stop
    for key, value in model.state_dict().items():  # the weights of epoch 2 are back
        assert torch.equal(value, seen[1][key]), key


def test_fit_refuses_what_cannot_train(tmp_path):
    from minipt.quantize import quantize_int8

    model = Tiny()
    loader = DataLoader(_data(), batch_size=8)
    step = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    with pytest.raises(TrainingError, match="in no group: norm.weight, norm.bias, head.weight, head.bias"):
        fit(model, torch.optim.SGD(model.linear.parameters(), lr=0.1), loader, loss=step, epochs=1, progress=False)
    with pytest.raises(TrainingError, match="needs an evaluate"):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, loss=step, epochs=1, patience=1, progress=False)
    quantized = quantize_int8(model)
    with pytest.raises(TrainingError, match="quantised"):
        fit(quantized, torch.optim.SGD(model.parameters(), lr=0.1), loader, loss=step, epochs=1, progress=False)


def test_save_checkpoint_names_what_it_cannot_store(tmp_path):
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TrainingError, match="cannot store a object"):
        save_checkpoint(tmp_path / "x.safetensors", model, optimizer, epoch=1, extra={"odd": object()})


def test_fit_names_bad_arguments_before_any_step(tmp_path):
    from minipt.errors import InputError

    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(_data(), batch_size=8)
    step = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other = torch.optim.SGD(Tiny().parameters(), lr=0.1)
    for arguments, error, message in [
        (dict(model=None), InputError, "fit trains a torch.nn.Module, got NoneType"),
        (dict(optimizer=None), InputError, "optimizer must be a torch.optim.Optimizer"),
        (dict(optimizer=list(model.parameters())), InputError, "optimizer must be a torch.optim.Optimizer .*, got list$"),
        (dict(train_loader=5), InputError, "train_loader must be an iterable of batches"),
        (dict(scheduler="cosine"), InputError, "scheduler must be a torch.optim.lr_scheduler scheduler"),
        (dict(scheduler=torch.optim.lr_scheduler.StepLR(other, 1)), InputError, "schedules another optimizer"),
        (dict(scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)), InputError, r"ReduceLROnPlateau steps on a metric"),
    ]:
        call = {"model": model, "optimizer": optimizer, "train_loader": loader, **arguments}
        with pytest.raises(error, match=message):
            fit(call.pop("model"), call.pop("optimizer"), call.pop("train_loader"), loss=step, epochs=1, progress=False, **call)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing was trained


def test_an_epoch_without_batches_or_gradients_is_an_error(tmp_path):
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    step = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1])  # noqa: E731
    with pytest.raises(TrainingError, match="epoch 1: train_loader gave no batch; nothing was trained"):
        fit(model, optimizer, [], loss=step, epochs=3, progress=False, checkpoint_dir=tmp_path)
    assert not (tmp_path / LAST).exists()
    once = (batch for batch in DataLoader(_data(), batch_size=8))  # a generator: used up after one epoch
    with pytest.raises(TrainingError, match=r"epoch 2: train_loader gave no batch.*a generator is used up after one pass"):
        fit(model, optimizer, once, loss=step, epochs=3, progress=False)

    def no_gradient(m, b):
        with torch.no_grad():
            return step(m, b)

    with pytest.raises(TrainingError, match="no gradient to follow: it was computed under torch.no_grad"):
        fit(model, optimizer, DataLoader(_data(), batch_size=8), loss=no_gradient, epochs=1, progress=False)


def test_resume_with_the_loaders_own_generator_and_without_the_scheduler(tmp_path):
    """A DataLoader with its own torch.Generator draws its order from it, not from the global RNG: its state is
    saved, so the resumed run is bitwise the uninterrupted one. A checkpoint with a schedule needs its scheduler."""
    def run(folder, epochs, resume=False, scheduled=True):
        torch.manual_seed(0)
        model = Tiny()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 3) if scheduled else None
        loader = DataLoader(_data(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(7))
        fit(model, optimizer, loader, loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), epochs=epochs,
            scheduler=scheduler, checkpoint_dir=folder, resume=resume, progress=False)
        return model

    straight = run(tmp_path / "straight", 3)
    run(tmp_path / "stopped", 1)
    resumed = run(tmp_path / "stopped", 3, resume=True)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(TrainingError, match="written with the scheduler StepLR: pass one built as before"):
        run(tmp_path / "stopped", 4, resume=True, scheduled=False)


def test_restore_best_after_resuming_into_another_folder(tmp_path):
    """Resumed from a/last.safetensors into a new checkpoint_dir, with no better epoch since: the best weights are
    a/best.safetensors', not the last epoch's."""
    scores = iter([0.9, 0.5, 0.4])
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(_data(), batch_size=8)
    arguments = dict(loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), evaluate=lambda m: next(scores), progress=False)
    fit(model, optimizer, loader, epochs=1, checkpoint_dir=tmp_path / "a", **arguments)
    best = {k: v.clone() for k, v in model.state_dict().items()}
    history = fit(model, optimizer, loader, epochs=3, resume=tmp_path / "a" / LAST, checkpoint_dir=tmp_path / "b", **arguments)
    assert [e.score for e in history] == [0.9, 0.5, 0.4] and not (tmp_path / "b" / BEST).exists()
    for key, value in model.state_dict().items():
        assert torch.equal(value, best[key]), key


def test_a_frozen_model_pickles_whole():
    import io

    model = Tiny()
    transfer.freeze(model, "body")
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False).train()
    assert not loaded.linear.training and not loaded.norm.training and loaded.head.training  # still held in eval


def test_gradients_are_clipped_to_max_grad_norm():
    """max_grad_norm scales the gradients to that total norm before each step, as clip_grad_norm_ does by hand."""
    from minipt.errors import InputError

    loader = DataLoader(_data(), batch_size=8)
    step = lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]) * 100  # noqa: E731  (gradients far above the limit)
    torch.manual_seed(0)
    clipped = Tiny()
    by_hand = Tiny()
    by_hand.load_state_dict(clipped.state_dict())
    clipped.dropout.p = by_hand.dropout.p = 0.0  # the same steps without random numbers to keep in step
    fit(clipped, torch.optim.SGD(clipped.parameters(), lr=0.1), loader, loss=step, epochs=1, max_steps=2, max_grad_norm=0.5, progress=False)
    optimizer = torch.optim.SGD(by_hand.parameters(), lr=0.1)
    by_hand.train()
    for _, batch in zip(range(2), loader):
        optimizer.zero_grad()
        step(by_hand, batch).backward()
        assert torch.nn.utils.clip_grad_norm_(by_hand.parameters(), 0.5) > 0.5  # clipping is at work
        optimizer.step()
    for (name, a), b in zip(clipped.state_dict().items(), by_hand.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    for bad in (0, -1.0, "1"):
        with pytest.raises(InputError, match="max_grad_norm"):
            fit(clipped, torch.optim.SGD(clipped.parameters(), lr=0.1), loader, loss=step, epochs=1, max_grad_norm=bad, progress=False)


def test_accumulated_batches_step_as_one_large_batch():
    """accumulate=k averages k batches' gradients per step: batches of 8 in groups of 4 train as batches of 32,
    and an epoch's last, shorter group as one batch of what is left (here 16 samples)."""
    from minipt.errors import InputError

    x, y = _data().tensors  # 48 samples

    def trained(batches, **kwargs):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))  # no BatchNorm: a batch's split changes nothing
        history = fit(model, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), batches,
                      loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), epochs=2, progress=False, **kwargs)
        return model, history

    small = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 48, 8)]
    large = [(x[:32], y[:32]), (x[32:], y[32:])]
    accumulated, accumulated_history = trained(small, accumulate=4)
    whole, whole_history = trained(large)
    for (name, a), b in zip(accumulated.state_dict().items(), whole.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=name)
    initial = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    assert not torch.allclose(whole[0].weight, initial[0].weight)  # it trained: the comparison means something
    assert [round(e.train_loss, 5) for e in accumulated_history] == [round(e.train_loss, 5) for e in whole_history]
    # max_steps counts optimiser steps
    capped, _ = trained(small, accumulate=4, max_steps=1)
    once, _ = trained(large[:1])
    for a, b in zip(capped.state_dict().values(), once.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    for bad in (0, -2, 1.5, "2"):
        with pytest.raises(InputError, match="accumulate"):
            trained(small, accumulate=bad)


def test_accumulation_reads_each_batch_before_the_next_is_fetched():
    """A loader that refills one buffer in place (pinned-memory pipelines do): with accumulate=2 the loss still sees
    every batch, since a plain model's (or a loader with a length's) next batch is fetched after its backward."""
    class Refilling:
        def __iter__(self):
            buffer = torch.zeros(2, 4)
            for k in range(4):
                yield buffer.fill_(k)

    seen = []
    model = nn.Linear(4, 1)

    def step(m, batch):
        seen.append(batch[0, 0].item())
        return m(batch).pow(2).mean()

    fit(model, torch.optim.SGD(model.parameters(), lr=0.0), Refilling(), loss=step, epochs=1, accumulate=2, progress=False)
    assert seen == [0.0, 1.0, 2.0, 3.0]


def test_checkpoints_of_a_compiled_model_load_into_the_plain_one(tmp_path):
    """torch.compile's wrapper is looked through: the checkpoint names the model's class and its keys."""
    torch.manual_seed(0)
    model = Tiny()
    save_checkpoint(tmp_path / "compiled.safetensors", torch.compile(model), epoch=1)
    plain = Tiny()
    load_checkpoint(tmp_path / "compiled.safetensors", plain)
    for a, b in zip(model.state_dict().values(), plain.state_dict().values()):
        assert torch.equal(a, b)
    load_checkpoint(tmp_path / "compiled.safetensors", torch.compile(Tiny()))


def test_resuming_with_other_trainable_stages_or_settings(tmp_path):
    """Freezing another stage of the same size on resume kept the group sizes, so one stage's moments and learning
    rate went to another's weights in silence; a new learning rate was dropped in silence (the checkpoint's wins,
    as torch's load_state_dict has it: now said)."""
    import warnings

    class Twin(nn.Module):
        transfer_stages = {"first": "a", "second": "b", "head": "head"}

        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 3)  # first and second alike

        def forward(self, x):
            return self.head(torch.relu(self.b(torch.relu(self.a(x)))))

    def run(folder, frozen, decay, resume, cycle=False):
        torch.manual_seed(0)
        model = Twin()
        transfer.freeze(model, frozen)
        optimizer = torch.optim.AdamW(transfer.param_groups(model, 1e-2, weight_decay=decay))
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=20) if cycle else None  # moves betas each step
        return fit(model, optimizer, DataLoader(_data(), batch_size=8), loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                   epochs=2 if resume else 1, checkpoint_dir=folder, resume=resume, progress=False, scheduler=schedule)

    run(tmp_path, "first", 0.01, False)
    with pytest.raises(TrainingError, match=r"group 0 was for other parameters \(b.weight then, a.weight now\)"):
        run(tmp_path, "second", 0.01, True)
    with pytest.warns(UserWarning, match=r"resuming continues the run as it was, with its optimiser settings: group 0 weight_decay 0.01 \(given 0.5\)"):
        run(tmp_path, "first", 0.5, True)
    run(tmp_path / "again", "first", 0.01, False, cycle=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(tmp_path / "again", "first", 0.01, True, cycle=True)  # the same run resumed: nothing to say (the cycle moved lr and betas)
    assert len(_run(tmp_path / "scheduled", epochs=2)[2]) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a scheduled run's lr moved; its initial lr is the same: no warning
        _run(tmp_path / "scheduled", epochs=3, resume=True)


def test_resuming_with_other_stages_frozen_under_one_optimiser_group(tmp_path):
    """An optimiser over model.parameters() holds frozen and trainable parameters alike, so its group names agree
    whatever is frozen: the trainable set is recorded and compared."""
    def run(folder, frozen, resume):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
        for index in frozen:
            model[index].requires_grad_(False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return fit(model, optimizer, DataLoader(_data(), batch_size=8), loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                   epochs=2 if resume else 1, checkpoint_dir=folder, resume=resume, progress=False)

    run(tmp_path, [0], False)
    with pytest.raises(TrainingError, match=r"2 parameters trained in the run that wrote it, 4 are trainable now \(0.weight trainable now; 0.bias trainable now\)"):
        run(tmp_path, [], True)
    with pytest.raises(TrainingError, match=r"2 are trainable now \(2.weight frozen now; 2.bias frozen now; 0.weight trainable now"):
        run(tmp_path, [2], True)
    run(tmp_path, [0], True)  # frozen as then: resumes


def test_a_skipped_step_leaves_the_batch_statistics_as_they_were():
    """The forward pass updates BatchNorm's running statistics before the step is known to be non-finite: a skipped
    NaN batch left them NaN, and every evaluation after it."""
    torch.manual_seed(0)
    model = Tiny()
    x, y = _data().tensors
    batches = [(x[:8], y[:8]), (torch.full((8, 4), float("nan")), y[8:16]), (x[16:24], y[16:24])]
    history = fit(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, epochs=1, nonfinite="skip", progress=False,
                  loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]))
    assert history[0].skipped == 1
    assert torch.isfinite(model.norm.running_mean).all() and torch.isfinite(model.norm.running_var).all()
    assert int(model.norm.num_batches_tracked) == 2


def test_loaders_scores_and_optimisers_fit_cannot_use_are_named(tmp_path):
    """A DataLoader over an IterableDataset raised len()'s bare TypeError; a score given as a string or a bool was
    taken as a number; LBFGS failed at its first step for want of a closure; an int8 model's checkpoint failed in
    safetensors."""
    from torch.utils.data import IterableDataset

    from minipt.errors import InputError

    class Stream(IterableDataset):
        def __iter__(self):
            x, y = _data().tensors
            return iter(zip(x.split(8), y.split(8)))

    model = Tiny()
    train = lambda **kw: fit(model, kw.pop("optimizer", torch.optim.SGD(model.parameters(), lr=0.1)), kw.pop("loader", [(x, y)]),  # noqa: E731
                             epochs=1, progress=kw.pop("progress", False), loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]), **kw)
    x, y = _data().tensors
    for progress in (False, True):
        assert train(loader=DataLoader(Stream(), batch_size=None), progress=progress)[0].train_loss > 0
    for bad in ("0.75", True, torch.tensor([True]), torch.ones(2)):
        with pytest.raises(TrainingError, match="evaluate\\(model\\) must return a number"):
            train(evaluate=lambda m, bad=bad: bad)
    import numpy as np

    for good in (0.5, np.float32(0.5), np.array([0.5]), torch.tensor([[0.5]]), 1):
        assert train(evaluate=lambda m, good=good: good)[0].score == 0.5 if good != 1 else 1.0
    with pytest.raises(InputError, match="LBFGS steps with a closure"):
        train(optimizer=torch.optim.LBFGS(model.parameters()))


def test_the_history_of_a_bfloat16_model_sums_its_losses_exactly():
    """The losses of the batches of one step were summed in the model's dtype: 256 bfloat16 losses of 1.1015625
    averaged to 1.031."""
    model = nn.Linear(4, 3).to(torch.bfloat16)
    batch = (torch.ones(1, 4, dtype=torch.bfloat16), torch.tensor([0]))
    loss = lambda m, b: torch.full((), 1.1015625, dtype=torch.bfloat16) + 0 * m(b[0]).sum()  # noqa: E731
    history = fit(model, torch.optim.SGD(model.parameters(), lr=0.0), [batch] * 256, epochs=1, accumulate=256, progress=False, loss=loss)
    assert history[0].train_loss == 1.1015625


def test_a_frozen_model_is_saved_as_it_is(tmp_path):
    """save_checkpoint of an inference model (every parameter frozen) writes its weights; only int8 ones are refused."""
    model = Tiny().requires_grad_(False)
    load_checkpoint(save_checkpoint(tmp_path / "frozen.safetensors", model, epoch=0), Tiny())
