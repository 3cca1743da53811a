"""minipt.probe: names for every intermediate value, capture and edit, nothing installed outside the block.

Values read through the probe are checked against what the models return
themselves (hidden states, attention maps, LSTM outputs and final states);
edits against an independent computation (a head zeroed through the output
projection's weights, a patched cell state through torch.nn.LSTMCell).
"""

import pytest
import torch
from torch import nn

import minipt.nn
from minipt import probe
from minipt.errors import ConfigError, InputError
from minipt.models.bert import BertConfig, BertModel
from minipt.models.char_lm import CharLM, CharLMConfig
from minipt.models.crnn import CRNN, CRNNConfig
from minipt.models.efficientnet import EfficientNet, EfficientNetConfig
from minipt.models.g2p import G2P, G2PConfig
from minipt.models.gpt2 import GPT2Config, GPT2LMHeadModel
from minipt.models.resnet import ResNet, ResNetConfig
from minipt.nn import tap as tap_points


def tiny_bert(**overrides) -> BertModel:
    config = dict(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32, max_position_embeddings=32)
    return BertModel(BertConfig(**{**config, **overrides})).eval()


def bert_batch():
    ids = torch.randint(1, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask}


def tiny_g2p() -> G2P:
    graphemes = ["<pad>", "<unk>", "</s>"] + list("abcdefghijklmnopqrstuvwxyz")
    phonemes = ["<pad>", "<unk>", "<s>", "</s>", "AA0", "B", "K", "T"]
    return G2P(G2PConfig(graphemes=graphemes, phonemes=phonemes, embed_size=8, hidden_size=12)).eval()


# one small model of every family and an input for it
MODELS = {
    "bert": (tiny_bert, lambda: ((), bert_batch())),
    "gpt2": (lambda: GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=39, eos_token_id=39)).eval(),
             lambda: ((torch.randint(0, 40, (2, 6)),), {})),
    "resnet": (lambda: ResNet(ResNetConfig(block="basic", layers=(1, 1, 1, 1), num_classes=5)).eval(), lambda: ((torch.randn(1, 3, 32, 32),), {})),
    "efficientnet": (lambda: EfficientNet(EfficientNetConfig(num_classes=5)).eval(), lambda: ((torch.randn(1, 3, 32, 32),), {})),
    "crnn": (lambda: CRNN(CRNNConfig(channels=(4, 4, 8, 8), hidden_size=6, charset="abc")).eval(), lambda: ((torch.randn(1, 1, 64, 24),), {})),
    "char_lm": (lambda: CharLM(CharLMConfig(embed_size=4, hidden_size=8, num_layers=2)).eval(), lambda: ((torch.randint(0, 256, (2, 5)),), {})),
    "g2p": (tiny_g2p, lambda: ((torch.tensor([[5, 6, 2]]), torch.tensor([[2, 4, 5]])), {})),
}


@pytest.mark.parametrize("family", MODELS)
def test_every_name_is_computed_on_math(family):
    build, example = MODELS[family]
    model = build()
    model_names = probe.names(model)
    assert len(model_names) == len(set(model_names))
    args, kwargs = example()
    with minipt.nn.use_backend("math"), probe.capture(model, "*") as seen, torch.no_grad():
        model(*args, **kwargs)
    assert set(seen) == set(model_names), set(model_names) - set(seen)
    assert all(isinstance(v, torch.Tensor) for v in seen.values())


def test_names_follow_the_modules():
    names = probe.names(tiny_bert())
    for name in ["embeddings.out", "layers.1.attn.probs", "layers.1.attn.heads", "layers.1.attn.out", "layers.1.attn_norm.out", "layers.1.act.out", "layers.1.out", "pooler.out"]:
        assert name in names
    assert not any("dropout" in n for n in names)  # dropout returns its input: no value of its own
    assert "stages.2.0.out" in probe.names(ResNet(ResNetConfig(block="basic", layers=(1, 1, 1, 1))))
    assert "blocks.4.out" in probe.names(EfficientNet(EfficientNetConfig()))
    lm = probe.names(CharLM(CharLMConfig(embed_size=4, hidden_size=8, num_layers=2)))
    assert {"lstm.layers.0.h", "lstm.layers.1.h", "lstm.layers.1.c", "lstm.out"} <= set(lm)
    crnn = probe.names(CRNN(CRNNConfig(channels=(4, 4, 8, 8), hidden_size=6, charset="abc")))
    assert {"sequence.0.lstm.layers.0.h", "sequence.0.lstm.layers.0.reverse.h", "sequence.1.lstm.layers.0.reverse.c"} <= set(crnn)
    assert "encoder.layers.0.h" in probe.names(tiny_g2p()) and "encoder.layers.0.c" not in probe.names(tiny_g2p())  # a GRU has no cell state


def test_names_for_an_input_come_in_computation_order():
    model = tiny_bert()
    model.set_backend("math")
    order = probe.names(model, **bert_batch())
    assert order.index("layers.0.attn.v_proj.out") < order.index("layers.0.attn.probs") < order.index("layers.0.attn.heads") < order.index("layers.0.attn.out_proj.out")
    assert order.index("layers.0.out") < order.index("layers.1.attn.q_proj.out") and order[-1] == "pooler.out"


def test_captured_values_are_the_models_own():
    model = tiny_bert()
    model.set_backend("math")
    with probe.capture(model, "layers.*.attn.probs", "layers.*.out", "embeddings.out") as seen, torch.no_grad():
        out = model(**bert_batch(), output_hidden_states=True, output_attentions=True)
    for i in range(2):
        assert torch.equal(seen[f"layers.{i}.attn.probs"], out.attentions[i])
        assert torch.equal(seen[f"layers.{i}.out"], out.hidden_states[i + 1])
    assert torch.equal(seen["embeddings.out"], out.hidden_states[0])
    assert seen["layers.0.attn.probs"].shape == (2, 4, 7, 7)


def test_recurrent_states_per_step_are_the_outputs_in_time_order():
    lstm = minipt.nn.LSTM(3, 6, num_layers=2, bidirectional=True, batch_first=True).eval()
    lstm.backend = "math"
    x = torch.randn(2, 5, 3)
    with probe.capture(lstm, "*") as seen, torch.no_grad():
        out, (h_n, c_n) = lstm(x)
    assert seen["layers.1.h"].shape == (5, 2, 6)  # (T, B, H)
    assert torch.equal(seen["layers.1.h"], out[:, :, :6].transpose(0, 1))
    assert torch.equal(seen["layers.1.reverse.h"], out[:, :, 6:].transpose(0, 1))
    assert torch.equal(seen["layers.1.c"][-1], c_n[2]) and torch.equal(seen["layers.1.reverse.c"][0], c_n[3])  # the backward direction ends at t = 0


def test_zeroing_a_head_equals_zeroing_its_columns_of_the_output_projection():
    model = tiny_bert()
    batch = bert_batch()
    head, width = 1, 4  # head 1 of 4 in a 16-wide model: features 4..7 before out_proj
    with probe.capture(model, edit={"layers.0.attn.heads": lambda h: h.index_fill(1, torch.tensor([head]), 0.0)}), torch.no_grad():
        ablated = model(**batch).last_hidden_state
    with torch.no_grad():
        model.layers[0].attn.out_proj.weight[:, head * width : (head + 1) * width] = 0.0
        expected = model(**batch).last_hidden_state
    assert (ablated - expected).abs().max().item() <= 1e-5
    assert (ablated - expected).abs().max().item() < (ablated - tiny_bert()(**batch).last_hidden_state).abs().max().item()


def test_patching_a_cell_state_unit_equals_a_torch_nn_cell_loop():
    torch.manual_seed(0)
    lstm = minipt.nn.LSTM(3, 6, num_layers=2).eval()
    lstm.backend = "math"
    x = torch.randn(5, 2, 3)
    unit, value = 2, 0.5

    def patch(c, step):  # from step 1 on: exercises the step-aware form
        return c.index_fill(1, torch.tensor([unit]), value) if step >= 1 else c

    with probe.capture(lstm, "layers.1.c", edit={"layers.1.c": patch}) as seen, torch.no_grad():
        out, _ = lstm(x)
    cells = [nn.LSTMCell(3 if k == 0 else 6, 6) for k in range(2)]
    for k, cell in enumerate(cells):
        cell.load_state_dict({name.replace(f"_l{k}", ""): p for name, p in lstm.state_dict().items() if name.endswith(f"_l{k}")})
    h = [torch.zeros(2, 6) for _ in cells]
    c = [torch.zeros(2, 6) for _ in cells]
    outputs = []
    with torch.no_grad():
        for t in range(5):
            inp = x[t]
            for k, cell in enumerate(cells):
                h[k], c[k] = cell(inp, (h[k], c[k]))
                if k == 1 and t >= 1:
                    c[k][:, unit] = value
                inp = h[k]
            outputs.append(inp)
    assert (out - torch.stack(outputs)).abs().max().item() <= 1e-6
    assert torch.all(seen["layers.1.c"][1:, :, unit] == value) and not torch.all(seen["layers.1.c"][0, :, unit] == value)


def test_a_module_output_can_be_replaced_by_a_tensor():
    model = ResNet(ResNetConfig(block="basic", layers=(1, 1, 1, 1), num_classes=5)).eval()
    x = torch.randn(1, 3, 32, 32)
    with probe.capture(model, "head.out", edit={"stages.3.0.out": torch.zeros(1, 512, 1, 1)}) as seen, torch.no_grad():
        logits = model(x)
    assert torch.allclose(logits, model.head.bias[None]) and torch.equal(seen["head.out"], logits)


def test_a_module_called_twice_keeps_both_values():
    model = ResNet(ResNetConfig(block="basic", layers=(1, 1, 1, 1), num_classes=5)).eval()
    with probe.capture(model, "stages.0.0.relu.out", "stages.0.0.bn1.out", "stages.0.0.out") as seen, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    first, second = seen.history("stages.0.0.relu.out")  # BasicBlock applies one ReLU twice
    assert torch.equal(first, seen["stages.0.0.bn1.out"].relu())  # recorded before the in-place ReLU changed it
    assert torch.equal(second, seen["stages.0.0.out"]) and torch.equal(seen["stages.0.0.relu.out"], second)


def test_detach_false_keeps_the_graph():
    model = tiny_bert()
    with probe.capture(model, "layers.0.out", detach=False) as seen:
        out = model(**bert_batch()).last_hidden_state
    middle = seen["layers.0.out"]
    assert middle.requires_grad
    (grad,) = torch.autograd.grad(out.sum(), model.layers[1].ffn_up.weight)
    assert grad.abs().sum() > 0


def test_detach_false_records_values_before_an_in_place_relu_and_gradients_through_them():
    """In a ResNet (in-place ReLUs) detach=False records each BatchNorm output as computed, negative values kept, and
    the gradient with respect to it is zero where the ReLU cut it; a tensor given as an edit is left as it was."""
    torch.manual_seed(0)
    model = ResNet(ResNetConfig(block="basic", layers=(1, 1, 1, 1), num_classes=5)).eval()
    image = torch.randn(1, 3, 32, 32)
    with probe.capture(model, "stem.bn.out") as plain, torch.no_grad():
        expected = model(image)
    with probe.capture(model, "stem.bn.out", detach=False) as seen:
        out = model(image)
    assert torch.equal(out, expected)
    bn = seen["stem.bn.out"]
    assert torch.equal(bn, plain["stem.bn.out"]) and bool((bn < 0).any())
    (grad,) = torch.autograd.grad(out.sum(), bn)
    assert bool((grad[bn < 0] == 0).all()) and grad.abs().sum() > 0
    patch = plain["stem.bn.out"].clone()
    kept = patch.clone()
    with probe.capture(model, edit={"stem.bn.out": patch}), torch.no_grad():
        assert torch.equal(model(image), expected)
    assert torch.equal(patch, kept)


# -- nothing installed outside the block ---------------------------------------------------
def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_no_hooks_and_the_same_output_outside_the_block():
    model = tiny_bert()
    batch = bert_batch()
    with torch.no_grad():
        before = model(**batch).last_hidden_state
        opened = probe.capture(model, "*.out", edit={"layers.0.attn.heads": lambda h: h * 0})
        assert hooks(model) == 0 and not tap_points._listeners  # built, not entered: nothing installed yet
        with opened:
            assert hooks(model) > 0 and tap_points._listeners
            changed = model(**batch).last_hidden_state
        after = model(**batch).last_hidden_state
    assert hooks(model) == 0 and not tap_points._listeners
    assert torch.equal(before, after) and not torch.equal(before, changed)


def test_hooks_are_removed_when_the_block_raises():
    model = tiny_bert()
    with pytest.raises(RuntimeError, match="inside"):
        with probe.capture(model, "*.out"):
            raise RuntimeError("inside")
    assert hooks(model) == 0 and not tap_points._listeners


def test_a_capture_records_only_its_own_model():
    one, two = tiny_bert(), tiny_bert()
    with probe.capture(one, "layers.0.attn.heads") as seen, torch.no_grad():
        two(**bert_batch())
    assert len(seen) == 0


# -- what a backend cannot show, and bad requests -------------------------------------------------
def test_an_edit_applies_to_the_thread_that_opened_it_only():
    import threading

    model, batch = tiny_bert(), bert_batch()
    model.set_backend("math")  # the attention probabilities are a tap point, edited as well
    with torch.no_grad():
        plain = model(**batch).last_hidden_state
    outputs = {}

    def other_thread():
        with torch.no_grad():
            outputs["other"] = model(**batch).last_hidden_state

    edits = {"layers.0.out": torch.zeros(2, 7, 16), "layers.1.attn.probs": lambda probs: probs.flip(-1)}
    with probe.capture(model, "layers.0.out", edit=edits) as seen, torch.no_grad():
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        edited = model(**batch).last_hidden_state
    assert torch.equal(outputs["other"], plain)  # another thread's run: neither edited nor recorded
    assert not torch.allclose(edited, plain)
    assert len(seen.history("layers.0.out")) == 1 and torch.equal(seen["layers.0.out"], torch.zeros(2, 7, 16))


def test_the_value_of_a_model_output_is_its_logits_not_its_loss():
    class WithHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = MODELS["gpt2"][0]()

        def forward(self, ids):
            return self.lm(ids, labels=ids)

    model, ids = WithHead(), torch.randint(0, 40, (2, 6))
    with probe.capture(model, "lm.out") as seen, torch.no_grad():
        out = model(ids)
    assert out.loss is not None and torch.equal(seen["lm.out"], out.logits)
    with probe.capture(model, edit={"lm.out": torch.zeros(2, 6, 40)}), torch.no_grad():
        edited = model(ids)
    assert torch.equal(edited.logits, torch.zeros(2, 6, 40)) and torch.equal(edited.loss, out.loss)  # the loss is left as computed


def test_attention_probabilities_need_the_math_backend():
    model = tiny_bert()
    model.set_backend("torch")
    with pytest.raises(ConfigError, match=r"layers\.0\.attn\.probs, layers\.1\.attn\.probs on the 'torch' backend.*set_backend\('math'\)"):
        probe.capture(model, "*.probs")
    with probe.capture(model, "layers.1.attn.heads") as fast, torch.no_grad():  # heads exist on every backend
        model(**bert_batch())
    model.set_backend("math")
    with probe.capture(model, "layers.1.attn.heads") as written_out, torch.no_grad():
        model(**bert_batch())
    assert (fast["layers.1.attn.heads"] - written_out["layers.1.attn.heads"]).abs().max().item() <= 1e-5


def test_per_step_states_need_the_math_backend():
    model = CharLM(CharLMConfig(embed_size=4, hidden_size=8, num_layers=2))
    for backend in ("torch", "fused"):
        model.lstm.backend = backend
        with pytest.raises(ConfigError, match=f"lstm.layers.1.c on the '{backend}' backend"):
            probe.capture(model, edit={"lstm.layers.1.c": lambda c: c})


def test_unknown_names_and_bad_edits_are_refused():
    model = tiny_bert()
    with pytest.raises(InputError, match=r"'layers\.0\.atn\.probs' names nothing.*close: layers\.0\.attn\.probs"):
        probe.capture(model, "layers.0.atn.probs")
    with pytest.raises(InputError, match="expected a function of the value or a tensor"):
        probe.capture(model, edit={"layers.0.out": 3})
    for change, got in ((lambda x: x[0, 0], r"\(16,\) torch.float32 on cpu"), (lambda x: x.double(), r"\(2, 7, 16\) torch.float64"),
                        (lambda x: x.to("meta"), r"\(2, 7, 16\) torch.float32 on meta")):  # not a crash inside the next matmul
        with pytest.raises(InputError, match=rf"the edit of layers\.0\.out must give a tensor of the value's shape, dtype and device "
                                             rf"\(2, 7, 16\) torch.float32 on cpu, got {got}"):
            with probe.capture(model, edit={"layers.0.out": change}), torch.no_grad():
                model(**bert_batch())
    with pytest.raises(InputError, match=r"the edits of layers\.0\.out never applied"):
        with probe.capture(model, edit={"layers.0.out": lambda x: x}):
            pass  # the model never ran
    with probe.capture(model, "layers.0.out") as seen:
        pass
    with pytest.raises(InputError, match="never computed"):
        seen["layers.0.out"]
    assert "layers.0.out" not in seen and seen.get("layers.0.out", 7) == 7  # a Mapping's membership and get


def test_a_glob_takes_what_the_backend_computes_and_detach_false_gives_gradients():
    """"*" on the default backend records every value it computes (the math-only attention probabilities left out,
    where asking for them by name is a ConfigError); with detach=False the recorded tensors are the graph's own."""
    model = tiny_bert()
    with probe.capture(model, "*") as seen, torch.no_grad():
        model(**bert_batch())
    assert "layers.0.out" in seen and "layers.0.attn.probs" not in seen
    with pytest.raises(ConfigError, match="exist only on the 'math' backend"):
        probe.capture(model, "layers.*.attn.probs")
    with probe.capture(model, "layers.0.out", "embeddings.out", detach=False) as seen:
        out = model(**bert_batch()).last_hidden_state
    (grad,) = torch.autograd.grad(out.sum(), seen["layers.0.out"])
    assert grad.shape == seen["layers.0.out"].shape and grad.abs().sum() > 0


# -- the real all-MiniLM-L6-v2 -------------------------------------------------------------
def test_attention_maps_and_a_head_ablation_on_minilm():
    from minipt import SentenceEncoder

    encoder = SentenceEncoder.from_pretrained("all-MiniLM-L6-v2")
    encoder.encoder.set_backend("math")
    sentences = ["A man is eating food.", "A man is eating a piece of bread."]
    with probe.capture(encoder.encoder, "layers.*.attn.probs") as seen:
        vectors = encoder.encode(sentences)
    maps = seen["layers.5.attn.probs"]  # (B, 12, T, T) for the last batch
    assert maps.shape[:2] == (2, 12) and torch.allclose(maps[0].sum(-1), torch.ones(12, maps.shape[2]), atol=1e-5)
    with probe.capture(encoder.encoder, edit={"layers.*.attn.heads": lambda h: h * 0}):
        no_attention = encoder.encode(sentences)
    assert (vectors[0] @ vectors[1]).item() > 0.6
    assert (no_attention - vectors).abs().max().item() > 1e-2


@pytest.mark.usefixtures("fresh_compiler")
def test_a_capture_sees_a_model_compiled_with_fullgraph():
    """The hooks' thread check (threading.get_ident) stopped dynamo's fullgraph trace; while torch.compile traces,
    the run belongs to the thread that runs it. Values are recorded and edits applied as without compile."""
    model = tiny_bert()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with probe.capture(model, "layers.0.out") as eager, torch.no_grad():
        expected = model(**bert_batch()).last_hidden_state
    with probe.capture(model, "layers.0.out", edit={"layers.1.out": lambda v: v * 0}) as seen, torch.no_grad():
        out = compiled(**bert_batch()).last_hidden_state
    assert torch.allclose(seen["layers.0.out"], eager["layers.0.out"], atol=1e-6) and not torch.allclose(out, expected)
    with torch.no_grad():
        assert torch.allclose(compiled(**bert_batch()).last_hidden_state, expected, atol=1e-6)  # the capture is gone


def test_a_fused_copy_is_refused_by_name():
    """fuse() adds residuals and activations inside its matmuls: on the copy, layers.0.attn.out held the residual sum
    and ffn_up.out the GELU's output, under the model's names, with no word."""
    model = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)).eval()
    with pytest.raises(ConfigError, match=r"BertModel is or holds a fuse\(\) copy: .*capture the model itself"):
        probe.capture(model.fuse(), "layers.0.attn.out")
    with pytest.raises(ConfigError, match=r"holds a fuse\(\) copy \(at '0'\)"):
        probe.capture(nn.Sequential(model.fuse()), "*")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_taps_of_a_packed_batch_are_in_the_callers_order(bidirectional):
    """A batch packed with enforce_sorted=False runs in length order: layers.0.h showed the packing's rows (row 0 was
    the user's sequence 1), the steps after a sequence ended held states computed on padding, and an edit of row 0
    changed sequence 1. Now each row is the caller's sequence, an ended one's row holds its last state, as torch's
    LSTM on that sequence alone gives, and an edit of row 0 changes sequence 0 only."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(0)
    lstm = minipt.nn.LSTM(3, 4, batch_first=True, bidirectional=bidirectional).eval()
    reference = torch.nn.LSTM(3, 4, batch_first=True, bidirectional=bidirectional).eval()
    reference.load_state_dict(lstm.state_dict())
    minipt.nn.set_backend("math", module=lstm)
    x, lengths = torch.randn(3, 5, 3), torch.tensor([2, 5, 4])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    with probe.capture(lstm, "layers.0.h", "layers.0.c") as seen, torch.no_grad():
        lstm(packed)
    h, c = seen["layers.0.h"], seen["layers.0.c"]  # (T, B, H)
    assert h.shape == (5, 3, 4)
    with torch.no_grad():
        for row, n in enumerate(lengths.tolist()):
            alone, (_, c_last) = reference(x[row : row + 1, :n])  # (1, n, D H)
            assert torch.allclose(h[:n, row], alone[0, :, :4], atol=1e-6), row
            assert torch.allclose(h[n:, row], alone[0, n - 1, :4].expand(5 - n, 4), atol=1e-6), row  # held after its end
            assert torch.allclose(c[n - 1, row], c_last[0, 0], atol=1e-6), row
    zero_row_0 = lambda state: state.index_fill(0, torch.tensor([0]), 0.0)  # noqa: E731
    with torch.no_grad():
        plain = pad_packed_sequence(lstm(packed)[0], batch_first=True)[0]
        with probe.capture(lstm, edit={"layers.0.h": zero_row_0}):
            edited = pad_packed_sequence(lstm(packed)[0], batch_first=True)[0]
    changed = [not torch.equal(plain[row], edited[row]) for row in range(3)]
    assert changed == [True, False, False]
    # an edit at every step reaches each sequence at its own steps only: the final states are those of each sequence
    # run alone with the same edit (it reached the held state of ended sequences, and a reverse one's initial state)
    shift = lambda state: state + 1  # noqa: E731
    for point in ("layers.0.h", "layers.0.reverse.h") if bidirectional else ("layers.0.h",):
        with torch.no_grad(), probe.capture(lstm, edit={point: shift}):
            _, (h_n, _) = lstm(packed)
            for row, n in enumerate(lengths.tolist()):
                _, (alone, _) = lstm(x[row : row + 1, :n])
                assert torch.allclose(h_n[:, row], alone[:, 0], atol=1e-6), (point, row)


def test_a_capture_opened_again_and_captures_inside_captures():
    """A capture opened a second time kept the first block's values and took their edits as applied; an outer
    capture recorded the value from before an inner capture's edit, while the model went on with the edited one."""
    model = tiny_bert()
    batch = bert_batch()
    again = probe.capture(model, "layers.0.out", edit={"layers.1.out": lambda x: x * 2})
    with again, torch.no_grad():
        model(**batch)
    assert len(again.history("layers.0.out")) == 1
    with pytest.raises(InputError, match="the edits of layers.1.out never applied"):
        with again:
            pass  # the model is not run
    with again, torch.no_grad():
        model(**batch)
    assert len(again.history("layers.0.out")) == 1  # this block's value only
    with torch.no_grad(), probe.capture(model, "layers.0.out", "layers.0.attn.heads") as outer:
        with probe.capture(model, "layers.0.out", "layers.0.attn.heads", edit={"layers.0.out": lambda x: x + 1,
                                                                              "layers.0.attn.heads": lambda x: x * 0}) as inner:
            model(**batch)
    assert torch.equal(outer["layers.0.out"], inner["layers.0.out"]) and float(outer["layers.0.attn.heads"].abs().max()) == 0.0
