"""The loading protocol, for every model class in minipt.models: save, reload, same model.

Every class that loads and saves checkpoints is discovered from the package, so
a new model without an entry in ``TINY`` fails here until it has one, and a
model that breaks the protocol (a config that cannot write itself, a key map
that does not invert) fails the round trip.
"""

import importlib
import json
import pkgutil

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

import minipt.models
from minipt import registry
from minipt.errors import CheckpointError, ConfigError, InputError
from minipt.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertModel
from minipt.models.char_lm import CharLM
from minipt.models.resnet import ResNet
from minipt.models.sentence import SentenceEncoder

TINY_BERT = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, max_position_embeddings=20)


def _sentence_encoder():
    from bert_reference import minilm_path
    from minipt.tokenizer import Tokenizer

    encoder = BertModel(BertConfig(**{**TINY_BERT, "vocab_size": 30522}))
    return SentenceEncoder(encoder, Tokenizer.from_pretrained(minilm_path()), max_seq_length=16)


def _tiny_cases() -> dict:
    """class name -> (a small model with random weights, a function running it on the family's example input),
    for every class of every family declared in minipt.models (``minipt.registry``)."""
    cases = {}
    for family in registry.families():
        for cls in family.classes:
            args, kwargs = family.inputs(cls)
            cases[cls.__name__] = (lambda f=family, c=cls: c(f.tiny())), (lambda m, a=args, k=kwargs: tree_leaves(m(*a, **k)))
    return cases


TINY = {
    **_tiny_cases(),
    "SentenceEncoder": (_sentence_encoder, lambda m: m.encode(["hello world", "a longer second sentence"])),  # a pipeline: tokenizer + BertModel
}


def model_classes() -> dict[str, type]:
    """Every class in minipt.models that loads and saves checkpoints."""
    found = {}
    for info in pkgutil.iter_modules(minipt.models.__path__):
        module = importlib.import_module(f"minipt.models.{info.name}")
        for value in vars(module).values():
            if (
                isinstance(value, type) and issubclass(value, nn.Module) and value.__module__ == module.__name__
                and not value.__name__.startswith("_") and hasattr(value, "from_pretrained") and hasattr(value, "save_pretrained")
            ):
                found[value.__name__] = value
    return found


def test_every_model_class_is_covered():
    assert set(model_classes()) == set(TINY), "add a tiny instance of each new model class to TINY"


def _randomise_batchnorm(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(2)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            module.num_batches_tracked.fill_(7)


@pytest.mark.parametrize("name", sorted(TINY))
def test_save_and_reload(name, tmp_path):
    build, run = TINY[name]
    cls = model_classes()[name]
    model = build().eval()
    _randomise_batchnorm(model)
    directory = model.save_pretrained(tmp_path / name)
    reloaded = cls.from_pretrained(directory)
    assert type(reloaded) is cls and not reloaded.training
    inner = lambda m: m.encoder if isinstance(m, SentenceEncoder) else m  # noqa: E731
    assert inner(reloaded).config == inner(model).config
    assert json.loads((directory / "config.json").read_text()) == {"architectures": [type(inner(model)).__name__], **inner(model).config.to_dict()}
    before, after = model.state_dict(), reloaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    with torch.no_grad():  # the same kernels on equal weights (memory-mapped ones may sit at another alignment)
        torch.testing.assert_close(run(reloaded), run(model), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(set(TINY) - {"SentenceEncoder"}))
def test_config_writes_itself_and_reads_back(name):
    config = TINY[name][0]().config
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("name", sorted(set(TINY) - {"SentenceEncoder"}))
def test_dtype_also_read_as_torch_dtype_and_auto_keeps_the_file_dtype(name, tmp_path):
    cls = model_classes()[name]
    directory = TINY[name][0]().to(torch.bfloat16).save_pretrained(tmp_path)

    def dtypes(model):
        return {t.dtype for t in model.state_dict().values() if t.is_floating_point()}

    assert dtypes(cls.from_pretrained(directory, torch_dtype=torch.float32)) == {torch.float32}
    assert dtypes(cls.from_pretrained(directory, dtype="auto")) == dtypes(cls.from_pretrained(directory)) == {torch.bfloat16}
    kept = {torch.float32} if getattr(cls, "keep_in_float32", ()) else set()  # T5's wo stays float32 beside float16
    assert dtypes(cls.from_pretrained(directory, dtype="float16", torch_dtype=torch.float16)) == {torch.float16} | kept
    with pytest.raises(InputError, match="got dtype=.* and torch_dtype=.*pass one"):
        cls.from_pretrained(directory, dtype=torch.float16, torch_dtype=torch.float32)


@pytest.mark.parametrize("name", ["BertModel", "CharLM", "ResNet"])
def test_dtype_and_device_are_checked(name, tmp_path):
    cls = model_classes()[name]
    directory = TINY[name][0]().save_pretrained(tmp_path)
    assert cls.from_pretrained(directory, dtype="bfloat16").state_dict()[next(iter(cls.from_pretrained(directory).state_dict()))].dtype == torch.bfloat16
    with pytest.raises(InputError, match=r"dtype must be a floating-point torch dtype .* got torch.int8"):
        cls.from_pretrained(directory, dtype=torch.int8)
    with pytest.raises(InputError, match="dtype must be a floating-point"):
        cls.from_pretrained(directory, dtype="float17")
    with pytest.raises(InputError, match="device 'meta' holds no data"):
        cls.from_pretrained(directory, device="meta")
    with pytest.raises(InputError, match="is not a torch device"):
        cls.from_pretrained(directory, device="gpu:0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match=r"device 'cuda' is not available on this machine"):
            cls.from_pretrained(directory, device="cuda")


@pytest.mark.parametrize(
    "loader, saved, message",
    [
        (BertModel, "ResNet", r"describes a 'resnet' model, not 'bert': load it with minipt.models.resnet.ResNet"),
        (ResNet, "BertModel", r"describes a 'bert' model, not 'resnet': load it with minipt.models.bert.BertModel"),
        (CharLM, "G2P", r"describes a 'g2p' model, not 'char-lm': load it with minipt.models.g2p.G2P"),
    ],
)
def test_checkpoint_of_another_family_names_its_class(loader, saved, message, tmp_path):
    directory = TINY[saved][0]().save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=message):
        loader.from_pretrained(directory)


def test_config_less_file_given_to_a_config_class(tmp_path):
    model = TINY["ResNet"][0]()
    directory = model.save_pretrained(tmp_path)
    (directory / "config.json").unlink()  # the bare torchvision format
    with pytest.raises(ConfigError, match=r"has no config.json, which BertModel needs; it looks like a torchvision-format ResNet \(it holds layer1.0.conv1.weight\): load it with minipt.models.resnet.ResNet"):
        BertModel.from_pretrained(directory)
    assert isinstance(ResNet.from_pretrained(directory), ResNet)  # the architecture is read off the tensors


def test_config_json_that_is_not_an_object(tmp_path):
    directory = TINY["BertModel"][0]().save_pretrained(tmp_path)
    for text, found in (("[1, 2]", "list"), ('"bert"', "str"), ("null", "NoneType")):
        (directory / "config.json").write_text(text)
        with pytest.raises(ConfigError, match=f"config.json holds a JSON {found}, expected an object of config fields"):
            BertModel.from_pretrained(directory)


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("num_hidden_layers", True, "a positive integer"),
        ("num_hidden_layers", 2.0, "a positive integer"),
        ("num_hidden_layers", "2", "a positive integer"),
        ("num_hidden_layers", 0, "a positive integer"),
        ("hidden_size", -16, "a positive integer"),
        ("hidden_dropout_prob", 1.5, r"a number in \[0, 1\]"),
        ("hidden_dropout_prob", float("nan"), r"a number in \[0, 1\]"),
        ("layer_norm_eps", float("inf"), "a finite number > 0"),
        ("layer_norm_eps", "1e-12", "a finite number > 0"),
        ("layer_norm_eps", 0, "a finite number > 0"),
        ("hidden_act", "mish", "one of 'gelu'"),
        ("tie_word_embeddings", 1, "true or false"),
        ("num_attention_heads", 3, "a divisor of hidden_size 16"),
    ],
)
def test_config_values_are_checked_and_named(field, value, expected, tmp_path):
    directory = TINY["BertModel"][0]().save_pretrained(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config[field] = value
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=rf"config.json: (BertConfig\.)?{field} = .*: expected {expected}"):
        BertModel.from_pretrained(directory)


def test_inconsistent_config_is_refused_before_building(tmp_path, monkeypatch):
    """A config whose sizes disagree with the tensors is refused from the header alone, without building a module."""
    directory = TINY["BertModel"][0]().save_pretrained(tmp_path)
    built = []
    monkeypatch.setattr(BertModel, "__init__", lambda self, config: built.append(config) or nn.Module.__init__(self))
    for field, value, message in (
        ("num_hidden_layers", 10**12, r"num_hidden_layers = 1000000000000, but the checkpoint holds 2 \(such as encoder.layer.0"),
        ("vocab_size", 51, r"vocab_size = 51, but embeddings.word_embeddings.weight has shape \(50, 16\)"),
        ("max_position_embeddings", 10**9, r"max_position_embeddings = 1000000000, but embeddings.position_embeddings.weight has shape \(20, 16\)"),
        ("intermediate_size", 33, r"intermediate_size = 33, but encoder.layer.0.intermediate.dense.weight has shape \(32, 16\)"),
    ):
        config = json.loads((directory / "config.json").read_text())
        config[field] = value
        (directory / "config.json").write_text(json.dumps(config))
        with pytest.raises(ConfigError, match=message):
            BertModel.from_pretrained(directory)
    assert built == []


def test_weights_of_the_wrong_kind_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    directory = TINY["BertModel"][0]().save_pretrained(tmp_path)
    state = load_file(directory / "model.safetensors")
    state["pooler.dense.bias"] = state["pooler.dense.bias"].view(torch.int32)  # the same bytes, read as integers
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor 'pooler.dense.bias' has dtype torch.int32, but the model keeps floating-point values there"):
        BertModel.from_pretrained(directory)


def test_missing_batch_counts_take_the_declared_default(tmp_path):
    """torchvision's pre-0.4.1 files have no num_batches_tracked: the key map's default (0) fills each."""
    from safetensors.torch import load_file, save_file

    model = TINY["ResNet"][0]()
    _randomise_batchnorm(model)
    directory = model.save_pretrained(tmp_path)
    state = {k: v for k, v in load_file(directory / "model.safetensors").items() if not k.endswith("num_batches_tracked")}
    save_file(state, directory / "model.safetensors")
    reloaded = ResNet.from_pretrained(directory)
    counts = [m.num_batches_tracked for m in reloaded.modules() if isinstance(m, nn.BatchNorm2d)]
    assert counts and all(int(c) == 0 for c in counts)
    assert len({c.data_ptr() for c in counts}) == len(counts)  # each layer counts on its own


@pytest.mark.parametrize(
    "index, message",
    [
        ("{not json", "is not a readable index of weight files"),
        ('{"metadata": {}}', r"is not a readable index of weight files .*KeyError"),
        ('{"weight_map": {"a": "../outside.safetensors"}}', "weight_map must name files in"),
        ('{"weight_map": {}}', "weight_map must name files in"),
    ],
)
def test_damaged_safetensors_index(index, message, tmp_path):
    directory = TINY["BertModel"][0]().save_pretrained(tmp_path)
    (directory / "model.safetensors").rename(directory / "model-00001-of-00001.safetensors")
    (directory / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError, match=message):
        BertModel.from_pretrained(directory)


def test_modules_json_entries_without_a_type(tmp_path):
    directory = _sentence_encoder().save_pretrained(tmp_path)
    (directory / "modules.json").write_text('[{"path": "1_Pooling"}]')
    with pytest.raises(ConfigError, match="modules.json must be a list of objects with a 'type' and a 'path'"):
        SentenceEncoder.from_pretrained(directory)
