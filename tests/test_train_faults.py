"""minipt.train.fit under faults: a NaN or infinite step, a full disk, Ctrl-C or a killed process while it
writes, damaged checkpoints, bad arguments. Whatever happens, the checkpoints it saved stay whole and resume."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from minipt.errors import CheckpointError, InputError, MiniptError, SaveError, TrainingError
from minipt.files import TEMPORARY_PREFIX
from minipt.train import BEST, LAST, fit, load_checkpoint
from test_train import Tiny, _data

BATCHES = 6  # 48 examples in batches of 8


def _fit(folder, epochs, resume=False, poison=None, evaluate=True, **kwargs):
    """fit a Tiny with AdamW and StepLR; ``poison(call, model, loss)`` may return a changed loss
    (``call`` counts loss calls from 1 over the whole run); ``evaluate``: True for accuracy, or a function."""
    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    x, y = _data().tensors
    calls = [0]

    def loss(m, batch):
        calls[0] += 1
        value = nn.functional.cross_entropy(m(batch[0]), batch[1])
        return poison(calls[0], m, value) if poison is not None else value

    kwargs.setdefault("progress", False)
    history = fit(
        model, optimizer, DataLoader(_data(), batch_size=8, shuffle=True), loss=loss, epochs=epochs, scheduler=scheduler,
        evaluate=(lambda m: (m(x).argmax(-1) == y).float().mean()) if evaluate is True else evaluate or None,
        checkpoint_dir=folder, resume=resume, **kwargs,
    )
    return model, optimizer, scheduler, history


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMPORARY_PREFIX))


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- a non-finite loss or gradient --------------------------------------------------------
def test_a_nan_loss_stops_before_the_step_and_keeps_the_last_checkpoint(tmp_path):
    seen = {}

    def poison(call, model, value):
        if call == BATCHES + 3:  # epoch 2, step 3
            seen["checkpoint"] = (tmp_path / LAST).read_bytes()  # written at the end of epoch 1
            seen["weights"] = {k: v.clone() for k, v in model.named_parameters()}
            seen["model"] = model
            return value * float("nan")
        return value

    with pytest.raises(TrainingError, match=r"epoch 2, step 3: the loss is nan; the step was not applied"):
        _fit(tmp_path, epochs=3, poison=poison)
    assert (tmp_path / LAST).read_bytes() == seen["checkpoint"]
    assert load_checkpoint(tmp_path / LAST, Tiny())["epoch"] == 1
    assert _same_weights(dict(seen["model"].named_parameters()), seen["weights"])  # the NaN step changed nothing
    assert _leftovers(tmp_path) == []


def test_an_infinite_gradient_is_not_applied(tmp_path):
    seen = {}

    def poison(call, model, value):
        if call == 2:
            seen["weights"] = {k: v.clone() for k, v in model.named_parameters()}
            seen["model"] = model
            model.head.bias.register_hook(lambda grad: torch.full_like(grad, float("inf")))
        return value

    with pytest.raises(TrainingError, match=r"epoch 1, step 2: the gradient norm is inf \(first non-finite gradient: head.bias\)"):
        _fit(tmp_path, epochs=2, poison=poison)
    # BatchNorm's running statistics moved in the forward pass; no parameter moved
    assert _same_weights(dict(seen["model"].named_parameters()), seen["weights"])
    assert not (tmp_path / LAST).exists()


def test_skip_drops_nonfinite_steps_and_counts_them(tmp_path, capsys):
    def poison(call, model, value):
        if call in (BATCHES + 2, BATCHES + 5):
            return value * float("inf")
        if call == 2 * BATCHES + 1:
            model.linear.weight.register_hook(lambda grad: grad * float("nan"))  # stays for the rest of the run
        return value

    model, optimizer, scheduler, history = _fit(tmp_path, epochs=2, poison=poison, nonfinite="skip", progress=True)
    assert [e.skipped for e in history] == [0, 2]
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("epoch 1: loss") and "skipped" not in printed[0]
    assert printed[1].startswith("epoch 2: loss") and "2 step(s) skipped (non-finite)" in printed[1]
    steps = 2 * BATCHES - 2
    assert scheduler.last_epoch == steps
    assert int(optimizer.state[model.head.bias]["step"]) == steps
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert load_checkpoint(tmp_path / LAST, Tiny())["history"][1]["skipped"] == 2
    # every step of epoch 3 has a NaN gradient: an epoch that trains nothing is an error, its checkpoint unwritten
    before = (tmp_path / LAST).read_bytes()
    with pytest.raises(TrainingError, match=f"epoch 3: all {BATCHES} steps had a non-finite loss or gradient"):
        _fit(tmp_path, epochs=3, resume=True, poison=lambda c, m, v: poison(c + 2 * BATCHES, m, v), nonfinite="skip")
    assert (tmp_path / LAST).read_bytes() == before


# -- failures while writing: the previous checkpoint survives ------------------------------
def _child(folder: str, fault: str, at: int, epochs: int, threads: int) -> None:
    """Run _fit in a process of its own under ``fault``: "full disk" (files over ``at`` bytes cannot be
    written) or "kill" (the process prints "hang" and waits to be killed at its ``at``-th rename of a
    written checkpoint; with "kill, truncated" the temporary file is cut short first, as a write cut off)."""
    import resource
    import time

    torch.set_num_threads(threads)
    if fault == "full disk":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (at, at))
    else:
        rename, renames = os.replace, [0]

        def replace(source, target):
            renames[0] += 1
            if renames[0] == at:
                if fault == "kill, truncated":
                    os.truncate(source, os.path.getsize(source) // 2)
                print("hang", flush=True)
                time.sleep(600)
            rename(source, target)

        os.replace = replace
    folder = Path(folder)
    try:
        _fit(folder, epochs=epochs, resume=(folder / LAST).exists())
    except MiniptError as err:
        print(f"{type(err).__name__}: {err}", flush=True)
        sys.exit(3)


def _spawn(folder: Path, fault: str, at: int, epochs: int) -> subprocess.Popen:
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tests), os.environ.get("PYTHONPATH")])))
    code = f"import test_train_faults as t; t._child({str(folder)!r}, {fault!r}, {at}, {epochs}, {torch.get_num_threads()})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=tests.parent, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path):
    _fit(tmp_path, epochs=1)
    before = (tmp_path / LAST).read_bytes()
    child = _spawn(tmp_path, "full disk", len(before) // 2, epochs=2)
    printed = child.communicate()[0]
    assert child.returncode == 3 and printed.startswith("SaveError: cannot write"), printed
    assert "File too large" in printed
    assert (tmp_path / LAST).read_bytes() == before
    assert load_checkpoint(tmp_path / LAST, Tiny())["epoch"] == 1
    load_checkpoint(tmp_path / BEST, Tiny())
    assert _leftovers(tmp_path) == []


def test_a_process_killed_while_writing_checkpoints_always_resumes(tmp_path):
    folder = tmp_path / "run"
    left_behind = set()
    # (rename at which the process is killed, fault): a fresh run renames best.safetensors of epoch 1 first,
    # then last.safetensors of epoch 1, then a file of epoch 2; each run starts afresh until last.safetensors exists
    for at, fault in [(1, "kill, truncated"), (2, "kill"), (3, "kill, truncated")]:
        child = _spawn(folder, fault, at, epochs=2)
        printed = []
        for line in child.stdout:
            printed.append(line)
            if line == "hang\n":
                break
        assert printed[-1:] == ["hang\n"], "".join(printed)
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        left_behind.update(_leftovers(folder))
        for name in (LAST, BEST):  # whatever is there is whole
            if (folder / name).exists():
                load_checkpoint(folder / name, Tiny())
    assert len(left_behind) >= 2  # killed writers left temporary files beside the checkpoints ...
    assert load_checkpoint(folder / LAST, Tiny())["epoch"] == 1
    model, _, _, history = _fit(folder, epochs=2, resume=True)  # ... and the folder resumes to the end
    straight, _, _, straight_history = _fit(tmp_path / "straight", epochs=2)
    assert _same_weights(model.state_dict(), straight.state_dict())
    assert [e.train_loss for e in history] == [e.train_loss for e in straight_history]


def test_ctrl_c_while_saving_or_a_failing_evaluate_keeps_the_checkpoints(tmp_path, monkeypatch):
    import safetensors.torch

    _fit(tmp_path, epochs=1)
    before = {name: (tmp_path / name).read_bytes() for name in (LAST, BEST)}

    def interrupted(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"the first bytes of a checkpoint")
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(safetensors.torch, "save_file", interrupted)
        with pytest.raises(KeyboardInterrupt):
            _fit(tmp_path, epochs=2, resume=True)

    def failing(model):
        raise RuntimeError("the validation set is gone")

    with pytest.raises(RuntimeError, match="the validation set is gone"):
        _fit(tmp_path, epochs=2, resume=True, evaluate=failing)
    with pytest.raises(TrainingError, match="epoch 2: evaluate\\(model\\) returned nan"):
        _fit(tmp_path, epochs=2, resume=True, evaluate=lambda m: float("nan"))
    assert {name: (tmp_path / name).read_bytes() for name in (LAST, BEST)} == before
    assert _leftovers(tmp_path) == []


# -- damaged checkpoints: refused with the file and the problem, before anything is loaded ---
def _edit_outline(key, value):
    def edit(outline, tensors):
        outline[key] = value
    return edit


def _edit_pair(field, key, value):
    """Set ``key`` of the dict stored under ``field`` (a list of [key, value] pairs in the outline)."""
    def edit(outline, tensors):
        node = outline[field]
        node = node["__dict__"][1][1] if field == "optimizer_state" else node  # param_groups
        node = node[0] if field == "optimizer_state" else node  # the first group
        for pair in node["__dict__"]:
            if pair[0] == key:
                pair[1] = value
    return edit


def _edit_tensor(name, value):
    def edit(outline, tensors):
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    return edit


DAMAGE = {
    "metadata not JSON": (None, CheckpointError, "its 'minipt' metadata is not valid JSON"),
    "metadata not an object": ("[1, 2]", CheckpointError, "metadata is a JSON list, not an object"),
    "model_state null": (_edit_outline("model_state", None), CheckpointError, "wrong type: model_state \\(NoneType\\)"),
    "the epoch missing": (lambda o, t: o.pop("epoch"), CheckpointError, "misses the field\\(s\\) epoch"),
    "the epoch a string": (_edit_outline("epoch", "one"), CheckpointError, "wrong type: epoch \\(str\\)"),
    "the rng missing": (lambda o, t: o.pop("rng"), CheckpointError, "misses the field\\(s\\) rng"),
    "an outline node damaged": (_edit_outline("scheduler_state", {"__dict__": 3}), CheckpointError, "scheduler_state in the metadata is damaged"),
    "a tensor missing": (_edit_tensor("model/linear.weight", None), CheckpointError,
                         "the tensor 'model/linear.weight' that model_state/linear.weight refers to is not in the file"),
    "the history not a list": (_edit_outline("extra", {"__dict__": [["history", 3], ["best", 1.0], ["since_best", 0]]}),
                               CheckpointError, "no training history"),
    "a history entry of wrong types": (
        _edit_outline("extra", {"__dict__": [["history", [{"__dict__": [["epoch", 1], ["train_loss", "low"], ["score", 1.0], ["seconds", 1.0]]}]],
                                              ["best", 1.0], ["since_best", 0]]}),
        CheckpointError, "history entry 1 has fields of the wrong type or order \\(train_loss\\)"),
    "a scheduler field of the wrong type": (_edit_pair("scheduler_state", "last_epoch", "six"), CheckpointError,
                                            "scheduler_state\\['last_epoch'\\] is str 'six', expected int like 0"),
    "an optimiser hyperparameter of the wrong type": (_edit_pair("optimizer_state", "lr", "fast"), CheckpointError,
                                                      "optimizer param group 0\\['lr'\\] is str 'fast'"),
    "the rng state damaged": (_edit_tensor("rng/torch", torch.zeros(3, dtype=torch.uint8)), CheckpointError,
                              "the random number generators' state is damaged"),
    "exp_avg of the wrong shape": (_edit_tensor("optimizer/state/0/exp_avg", torch.zeros(4, 8)), TrainingError,
                                   "the optimiser's 'exp_avg' for parameter linear.weight has shape \\(4, 8\\), the parameter \\(8, 4\\)"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_refused_before_anything_is_loaded(tmp_path, damage):
    from safetensors import safe_open
    from safetensors.torch import save_file

    edit, error, message = DAMAGE[damage]
    _fit(tmp_path, epochs=1)
    with safe_open(str(tmp_path / LAST), framework="pt") as handle:
        metadata = handle.metadata()["minipt"]
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    if edit is None:
        metadata = metadata[: len(metadata) // 2]
    elif isinstance(edit, str):
        metadata = edit
    else:
        outline = json.loads(metadata)
        edit(outline, tensors)
        metadata = json.dumps(outline)
    save_file(tensors, str(tmp_path / LAST), metadata={"minipt": metadata})
    model = Tiny()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.5)
    torch.manual_seed(7)
    rng = torch.get_rng_state()
    with pytest.raises(error, match=f"^{tmp_path / LAST}:? .*{message}"):
        fit(model, optimizer, DataLoader(_data(), batch_size=8), loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
            epochs=2, evaluate=lambda m: 0.5, scheduler=scheduler, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert _same_weights(model.state_dict(), weights)
    assert torch.equal(torch.get_rng_state(), rng)
    assert optimizer.state_dict()["state"] == {} and scheduler.last_epoch == 0


# -- restore_best ---------------------------------------------------------------------------
@pytest.mark.parametrize("folder", [False, True])
def test_restore_best_with_or_without_a_folder(tmp_path, folder):
    scores = iter([0.5, 0.9, 0.6, 0.7])
    after_epoch = []

    def evaluate(model):
        after_epoch.append({k: v.clone() for k, v in model.state_dict().items()})
        return next(scores)

    model, *_ = _fit(tmp_path if folder else None, epochs=4, evaluate=evaluate)
    assert _same_weights(model.state_dict(), after_epoch[1])
    assert (tmp_path / BEST).exists() == folder
    scores = iter([0.5, 0.9, 0.6, 0.7])
    after_epoch.clear()
    model, *_ = _fit(None, epochs=4, evaluate=evaluate, restore_best=False)
    assert _same_weights(model.state_dict(), after_epoch[3])


def test_restore_best_without_evaluate_keeps_the_last_weights(tmp_path):
    model, *_ = _fit(None, epochs=2, evaluate=False)
    kept, *_ = _fit(None, epochs=2, evaluate=False, restore_best=False)
    assert _same_weights(model.state_dict(), kept.state_dict())


# -- arguments: refused before any work ----------------------------------------------------
BAD_ARGUMENTS = {
    "epochs 0": ({"epochs": 0}, InputError, "epochs must be .*, got 0"),
    "epochs a float": ({"epochs": 2.0}, InputError, "epochs must be an integer, got float 2.0"),
    "patience 0": ({"patience": 0}, InputError, "patience must be .*, got 0"),
    "max_steps a string": ({"max_steps": "3"}, InputError, "max_steps must be an integer or None, got str '3'"),
    "restore_best 1": ({"restore_best": 1}, InputError, "restore_best must be True or False, got int 1"),
    "progress None": ({"progress": None}, InputError, "progress must be True or False, got NoneType None"),
    "resume 3": ({"resume": 3}, InputError, "resume must be True, False or a checkpoint's path, got int 3"),
    "resume a missing file": ({"resume": "nowhere.safetensors"}, CheckpointError, "nowhere.safetensors: no such checkpoint"),
    "loss not a function": ({"loss": "cross_entropy"}, InputError, "loss must be a function, got str 'cross_entropy'"),
    "nonfinite unknown": ({"nonfinite": "ignore"}, InputError, "nonfinite must be one of 'stop', 'skip'; got 'ignore'"),
    "checkpoint_dir a number": ({"checkpoint_dir": 7}, InputError, "checkpoint_dir must be a path \\(str or pathlib.Path\\), got int 7"),
    "checkpoint_dir a file": ({"checkpoint_dir": "a file"}, SaveError, "checkpoint_dir .*a file is a file, not a folder"),
    "checkpoint_dir under a file": ({"checkpoint_dir": "a file/run"}, SaveError, "cannot create checkpoint_dir .*a file/run"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS)
def test_bad_arguments_are_refused_before_training(tmp_path, case):
    changes, error, message = BAD_ARGUMENTS[case]
    (tmp_path / "a file").write_text("not a folder")
    model = Tiny()
    losses = []
    arguments = {"loss": lambda m, b: losses.append(1) or nn.functional.cross_entropy(m(b[0]), b[1]), "epochs": 1,
                 "evaluate": lambda m: 0.5, "progress": False}
    arguments.update({k: str(tmp_path / v) if k == "checkpoint_dir" and isinstance(v, str) else v for k, v in changes.items()})
    with pytest.raises(error, match=message):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.1), DataLoader(_data(), batch_size=8), **arguments)
    assert losses == []
    assert isinstance(error("x"), MiniptError)


def test_a_loss_or_score_that_is_not_a_number_is_named(tmp_path):
    with pytest.raises(InputError, match="loss\\(model, batch\\) must be a torch.Tensor, got float"):
        _fit(None, epochs=1, poison=lambda call, model, value: value.item())
    with pytest.raises(TrainingError, match="loss\\(model, batch\\) must return a scalar, got a tensor of shape \\(2,\\)"):
        _fit(None, epochs=1, poison=lambda call, model, value: value.expand(2))
    with pytest.raises(TrainingError, match="epoch 1: evaluate\\(model\\) must return a number, got str 'good'"):
        _fit(tmp_path, epochs=1, evaluate=lambda m: "good")
    assert not (tmp_path / LAST).exists()
