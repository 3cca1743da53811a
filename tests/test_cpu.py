"""minipt.ops.cpu: the one place that reads what the CPU does in hardware and chooses each fast path's kernel.

The decisions are tested with the capability answers replaced (``CPUInfo`` built for another CPU): an
AVX2 server, AVX-512 without bfloat16, AVX512-BF16, AMX, an ARM core with BF16, and a CPU whose oneDNN
is capped by ``ONEDNN_MAX_CPU_ISA``; the warning of ``fuse(torch.bfloat16)`` where bfloat16 is emulated;
``minipt info``.
"""

import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from helpers import OpCounter
from minipt import cli
from minipt.errors import InputError
from minipt.models.bert import BertConfig, BertModel
from minipt.ops import cpu

X86 = {"sse4_1", "avx", "avx2", "fma"}
AVX512 = X86 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}
CPUS = {  # name -> (flags, ONEDNN_MAX_CPU_ISA, oneDNN level, native bfloat16, native float16)
    "AVX2 (EPYC Rome)": (X86, None, "avx2", False, False),
    "AVX-512, no VNNI (Skylake-SP)": (AVX512 - {"avx512_vnni"}, None, "avx512_core", False, False),
    "AVX-512, no BF16 (Cascade Lake)": (AVX512, None, "avx512_core_vnni", False, False),
    "AVX512-BF16 (EPYC Genoa)": (AVX512 | {"avx512_bf16"}, None, "avx512_core_bf16", True, False),
    "AMX (Sapphire Rapids)": (AVX512 | {"avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16"}, None, "avx512_core_amx", True, True),
    "AVX512-BF16 capped at AVX2": (AVX512 | {"avx512_bf16"}, "avx2", "avx2", False, False),
    "ARM with BF16 and FP16 (Graviton 3)": (frozenset({"fp", "asimd", "bf16", "fphp", "asimdhp"}), None, "generic", True, True),
}


def info(name: str) -> cpu.CPUInfo:
    flags, cap, *_ = CPUS[name]
    return cpu.CPUInfo(model=name, capability="AVX2" if "avx512f" not in flags else "AVX512", flags=frozenset(flags), onednn=True, isa_cap=cap)


@pytest.mark.parametrize("name", list(CPUS))
def test_native_dtypes_and_onednn_level_follow_the_flags(name):
    _, _, level, bf16, fp16 = CPUS[name]
    answers = info(name)
    assert answers.onednn_isa == level
    assert cpu.native(torch.bfloat16, answers) is bf16
    assert cpu.native(torch.float16, answers) is fp16
    assert cpu.native(torch.float32, answers) and cpu.native(torch.float64, answers)
    emulated = [line for line in cpu.cpu_report(answers).splitlines() if "emulated" in line]
    assert bool(emulated) is not (bf16 and fp16), emulated  # the report says which dtypes are emulated


@pytest.mark.parametrize("name", list(CPUS))
def test_int8_products_count_as_exact_from_vnni_up(name):
    """Below VNNI, oneDNN's x86 int8 kernels add u8 x s8 pairs in 16 bits and saturate: quantize_int8 then keeps
    its products in float32."""
    level = CPUS[name][2]
    exact = cpu.int8_products_exact(info(name))
    assert exact is (level in ("avx512_core_vnni", "avx512_core_bf16", "avx512_core_amx") or level == "generic")
    assert ("int8 products of each token's int8 input" if exact else "this CPU's int8 products saturate") in cpu.cpu_report(info(name))


@pytest.mark.parametrize("name", list(CPUS))
def test_the_ocr_detector_runs_in_bfloat16_only_where_it_is_native(name):
    native_bf16 = CPUS[name][3]
    assert cpu.detector_dtype(info(name)) == (torch.bfloat16 if native_bf16 else torch.float32)
    assert f"minipt.ocr's default detector: {'bfloat16' if native_bf16 else 'float32'}" in cpu.cpu_report(info(name))


def test_the_report_names_every_fast_path_for_both_dtypes():
    report = cpu.cpu_report()
    for path, choice in cpu.implementations().items():
        assert f"{path}: {choice['float32']} | {choice['bfloat16']}" in report
    assert f"kernel capability {torch.backends.cpu.get_cpu_capability()}" in report


def test_this_cpu_is_read_from_torch_and_the_flags():
    answers = cpu.cpu()
    assert answers.capability == torch.backends.cpu.get_cpu_capability()
    assert answers.onednn == (torch.backends.mkldnn.is_available() and os.environ.get("MINIPT_ONEDNN", "1") != "0")


@pytest.fixture
def emulating_cpu(monkeypatch):
    """This process sees an AVX2 CPU, and has not warned yet."""
    monkeypatch.setattr(cpu, "cpu", lambda: info("AVX2 (EPYC Rome)"))
    monkeypatch.setattr(cpu, "_warned", set())


def _tiny_bert() -> BertModel:
    return BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)).eval()


@pytest.mark.usefixtures("emulating_cpu")
def test_bfloat16_fuse_warns_once_where_bfloat16_is_emulated():
    model = _tiny_bert()
    with pytest.warns(RuntimeWarning, match=r"bfloat16 on this CPU \(AVX2 \(EPYC Rome\), torch capability AVX2.*emulated here.*measured [0-9.]+x.*fuse\(\) in float32"):
        model.fuse(torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second fuse() warns no more
        model.fuse(torch.bfloat16)
        model.fuse()  # float32 never warns


def test_bfloat16_fuse_is_silent_where_bfloat16_is_native(monkeypatch):
    monkeypatch.setattr(cpu, "cpu", lambda: info("AVX512-BF16 (EPYC Genoa)"))
    monkeypatch.setattr(cpu, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _tiny_bert().fuse(torch.bfloat16)


def test_slowdown_is_a_positive_ratio():
    assert cpu.slowdown(torch.bfloat16) > 0


def test_minipt_info_prints_the_report(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "native bfloat16: " in out and "fast path: float32 | bfloat16" in out
    assert cpu.cpu_report() in out


@pytest.fixture
def measuring(monkeypatch):
    """fuse() chooses each Linear's kernel by timing it (as outside the tests), from no choice made yet."""
    monkeypatch.delenv("MINIPT_LINEAR", raising=False)
    monkeypatch.setattr(cpu, "_linear_choices", {})
    monkeypatch.setattr(cpu, "_reused_choices", {})
    monkeypatch.setattr(cpu, "_thread_choices", {})


@pytest.mark.skipif(not cpu.onednn.available(), reason="oneDNN is not available: every Linear runs F.linear")
@pytest.mark.usefixtures("measuring")
@pytest.mark.parametrize("faster", ["onednn", "aten"])
def test_each_fused_linear_takes_the_kernel_measured_faster_for_its_shape(faster, monkeypatch):
    timed = []
    monkeypatch.setattr(cpu, "_faster_linear", lambda *key: timed.append(key) or faster)
    model = _tiny_bert()
    fused = model.fuse()
    packed = [m for m in fused.modules() if isinstance(m, cpu.onednn.PackedLinear)]
    assert packed and all(m.onednn == (faster == "onednn") for m in packed)
    shapes = {(rows, n_in, n_out, act, residual) for _, rows, n_in, n_out, act, residual in timed}
    assert len(shapes) == len(timed)  # each shape class timed once: (16->48 qkv, 16->16, 16->32+gelu, 32->16)
    assert (16, 16, 48, None, False) in shapes and (16, 16, 32, "gelu", False) in shapes  # the fewest rows first
    if faster == "aten":
        assert (4096, 16, 32, "gelu", False) in shapes  # slower at the fewest and the most rows: never packed
    model.fuse()
    assert len(timed) == len(shapes)  # a second copy reuses the answers
    ids = torch.randint(0, 50, (2, 5))
    with torch.inference_mode():
        torch.testing.assert_close(fused(ids).last_hidden_state, model(ids).last_hidden_state, rtol=1e-4, atol=1e-5)
    assert {residual for *_, residual in timed} == {False, True}  # the products that add the residual, timed adding it
    assert f"{faster}" in cpu.cpu_report()


@pytest.mark.parametrize("rows", [2, 600])
@pytest.mark.parametrize("activation", [None, "gelu"])
def test_every_timed_candidate_computes_the_product_the_layer_runs(rows, activation, monkeypatch):
    """The kernels are timed on what the layer computes: its activation, or the residual it adds."""

    def timed_outputs(residual: bool) -> dict[str, torch.Tensor]:
        results = {}

        def run_each(cases, calls, favoured):
            results.update({name: torch.cat(case()) for name, case in cases.items()})
            return favoured

        monkeypatch.setattr(cpu, "faster", run_each)
        assert cpu._faster_linear(torch.float32, rows, 64, 128, activation, residual) == "aten"  # F.linear is favoured
        return results

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        plain = timed_outputs(False)
        added = timed_outputs(True) if activation is None else None  # a residual is added only without an activation
    finally:
        torch.set_num_threads(before)
    assert set(plain) == {"aten"} | ({"onednn"} if cpu.cpu().onednn and cpu.onednn.available() else set()) | ({"blocks"} if rows <= cpu.FEW_ROWS else set())
    for results in (plain, added or {}):
        for name, out in results.items():
            torch.testing.assert_close(out, results["aten"], rtol=1e-4, atol=1e-4, msg=name)
    if added is not None:
        assert set(added) == set(plain) and not torch.allclose(added["aten"], plain["aten"])


@pytest.mark.skipif(not cpu.onednn.available(), reason="oneDNN is not available: every Linear runs F.linear")
@pytest.mark.usefixtures("measuring")
def test_a_fused_linear_chooses_its_kernel_by_the_rows_it_is_given(monkeypatch):
    """As on an AVX2 host: oneDNN's packed matmul faster at a few rows, F.linear at many."""
    monkeypatch.setattr(cpu, "_faster_linear", lambda dtype, rows, *shape: "onednn" if rows <= 64 else "aten")
    model = _tiny_bert()
    fused = model.fuse()
    packed = [m for m in fused.modules() if isinstance(m, cpu.onednn.PackedLinear)]
    assert packed and all(m.onednn for m in packed)
    few, many = torch.randint(0, 50, (2, 5)), torch.randint(0, 50, (40, 5))
    with torch.inference_mode():
        for ids in (many, few):
            torch.testing.assert_close(fused(ids).last_hidden_state, model(ids).last_hidden_state, rtol=1e-4, atol=1e-5)
    chosen = {(rows, kernel) for m in packed for (rows, _), (kernel, _) in m._chosen.items()}
    assert {(200, "aten"), (10, "onednn")} <= chosen  # the layers' 200 rows (the 256 class) on F.linear, 10 on oneDNN
    assert all((kernel == "onednn") == (rows <= 64) for rows, kernel in chosen)  # the pooler's 40 and 2 rows on oneDNN


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("blocks", [2, 4])
def test_a_product_in_blocks_of_outputs_is_f_linear(rows, blocks):
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = torch.randn(rows, 24, generator=generator), torch.randn(40, 24, generator=generator), torch.randn(40, generator=generator)
    for b in (bias, None):
        torch.testing.assert_close(cpu.onednn.linear_in_blocks(x, weight, b, blocks), F.linear(x, weight, b), rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("measuring")
def test_a_few_rows_may_run_in_blocks_on_the_threads(monkeypatch):
    """As on a 2-core AVX2 host: a product of a few rows runs fastest in blocks of outputs, one per thread;
    with more rows, one thread, or outputs that do not divide into the threads' blocks, the blocks are no candidate."""
    offered = {}  # (rows, out) -> the candidates timed

    def fastest(cases, calls, favoured):
        offered[len(offered)] = set(cases)
        return "blocks" if "blocks" in cases else favoured

    monkeypatch.setattr(cpu, "faster", fastest)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with_onednn = {"onednn"} if cpu.cpu().onednn and cpu.onednn.available() else set()
        assert cpu.linear_kernel(torch.float32, 4, 16, 32) == "blocks" and offered[0] == {"aten", "blocks"} | with_onednn
        for rows, out in ((4096, 32), (4, 33)):  # many rows; 33 outputs do not divide into two blocks
            timed = len(offered)
            assert cpu.linear_kernel(torch.float32, rows, 16, out) != "blocks"
            assert offered.get(timed, set()) == ({"onednn", "aten"} if with_onednn else set())  # without oneDNN: F.linear, untimed
        assert cpu.linear_threads("blocks", torch.float32, 4, 16, 32) == 0  # the blocks take all the threads
        timed = len(offered)  # a recurrent layer's W_hh, multiplied at every step: oneDNN or F.linear
        assert cpu.linear_kernel(torch.float32, 4, 16, 32, reused=True) != "blocks"
        assert offered.get(timed, set()) == ({"onednn", "aten"} if with_onednn else set())
        model = _tiny_bert()
        fused = model.fuse()
        ids = torch.randint(0, 50, (1, 3))
        seen = []
        blocked = cpu.onednn.linear_in_blocks
        monkeypatch.setattr(cpu.onednn, "linear_in_blocks", lambda *args: seen.append(args[-1]) or blocked(*args))
        with torch.inference_mode():
            torch.testing.assert_close(fused(ids).last_hidden_state, model(ids).last_hidden_state, rtol=1e-4, atol=1e-5)
        assert seen and set(seen) == {2}  # two threads: two blocks
        torch.set_num_threads(1)  # the blocks do not divide the work any more: F.linear
        seen.clear()
        with torch.inference_mode():
            torch.testing.assert_close(fused(ids).last_hidden_state, model(ids).last_hidden_state, rtol=1e-4, atol=1e-5)
        assert not seen
    finally:
        torch.set_num_threads(before)
    assert "blocks" in cpu.cpu_report()


@pytest.mark.usefixtures("measuring")
@pytest.mark.parametrize("one_thread", [True, False])
def test_a_few_rows_run_on_one_thread_where_that_is_measured_faster(one_thread, monkeypatch):
    """The thread count is scoped to the product: torch's setting is back after every call, and after a failing one."""
    monkeypatch.setattr(cpu, "_fewer_threads_faster", lambda kernel, dtype, rows, *shape: int(one_thread and rows <= 8))
    # one kernel for every shape: the blocks, which a timed choice may take at a few rows, run on all the threads
    monkeypatch.setattr(cpu, "_faster_linear", lambda *key: "onednn")
    seen = []  # (rows, threads) of every product
    product = cpu.onednn.PackedLinear._product

    def recording(self, rows, *args):
        if self._choose is not None:  # a layer of the copy, not a timed probe
            seen.append((rows.shape[0], torch.get_num_threads()))
        return product(self, rows, *args)

    monkeypatch.setattr(cpu.onednn.PackedLinear, "_product", recording)
    model = _tiny_bert()
    fused = model.fuse()
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode():
            for ids in (torch.randint(0, 50, (1, 3)), torch.randint(0, 50, (4, 8))):
                torch.testing.assert_close(fused(ids).last_hidden_state, model(ids).last_hidden_state, rtol=1e-4, atol=1e-5)
                assert torch.get_num_threads() == 2
            assert {rows for rows, _ in seen} == {1, 3, 4, 32}  # the pooler's rows, the layers' rows
            assert all(threads == (1 if one_thread and rows <= 8 else 2) for rows, threads in seen)
            packed = next(m for m in fused.modules() if isinstance(m, cpu.onednn.PackedLinear))
            with pytest.raises(InputError):
                packed(torch.randn(2, packed.in_features + 1))
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert ("on 1 thread" in cpu.cpu_report()) == one_thread


def test_few_rows_are_timed_over_copies_of_the_weight_and_many_rows_within_a_budget(monkeypatch):
    """A product of a few rows reads its weight from memory in a model: it is timed over copies filling twice the
    largest cache, one after the other; a product of many rows is timed at no more than TIMED_WORK multiply-adds."""
    monkeypatch.setattr(cpu, "_largest_cache", lambda: 1 << 20)
    products = []  # (rows, id of the weight) of every F.linear the timing runs
    linear = F.linear
    monkeypatch.setattr(cpu.F, "linear", lambda x, w, b=None: products.append((x.shape[0], id(w))) or linear(x, w, b))
    monkeypatch.setattr(cpu, "faster", lambda cases, calls, favoured: [case() for case in cases.values()] and favoured)
    assert cpu._streamed(torch.empty(64, 64)) == 64 and cpu._streamed(torch.empty(1024, 1024)) == 1  # 16 KiB: 64 copies (the most); 4 MiB: one
    cpu._faster_linear(torch.float32, 2, 64, 64, None)
    assert len(products) == 64 and len({w for _, w in products}) == 64 and {rows for rows, _ in products} == {2}
    products.clear()
    monkeypatch.setattr(cpu, "TIMED_WORK", 1 << 30)
    cpu._faster_linear(torch.float32, 4096, 512, 512, None)
    assert products == [(4096, products[0][1])]  # one weight, 2^30 multiply-adds allow the 4096 rows
    products.clear()
    monkeypatch.setattr(cpu, "TIMED_ROWS", 1024)
    cpu._faster_linear(torch.float32, 4096, 1024, 2048, None)
    assert products == [(1024, products[0][1])]  # 512 rows would do: never fewer than TIMED_ROWS
    products.clear()
    monkeypatch.setattr(cpu, "TIMED_ROWS", 256)
    cpu._faster_linear(torch.float32, 4096, 1024, 2048, None)
    assert products == [(512, products[0][1])]
    products.clear()
    cpu._faster_linear(torch.float32, 2, 64, 64, None, reused=True)  # a recurrent W_hh: the one weight, in the cache
    assert len(products) == 1


@pytest.mark.skipif(not cpu.onednn.available(), reason="oneDNN is not available: nothing to time")
@pytest.mark.usefixtures("measuring")
def test_the_timed_choice_is_one_of_the_two_and_kept():
    assert cpu.linear_kernel(torch.float32, 100, 64, 256, "gelu") in ("onednn", "aten")
    assert list(cpu._linear_choices) == [(torch.float32, 128, 64, 256, "gelu", False)]  # 100 rows: the 128 class


def test_a_fixed_kernel_is_taken_for_every_shape(monkeypatch):
    monkeypatch.setenv("MINIPT_LINEAR", "aten")
    monkeypatch.setattr(cpu, "_faster_linear", lambda *key: pytest.fail("a fixed kernel is not timed"))
    assert cpu.linear_kernel(torch.float32, 128, 16, 16) == "aten"
    fused = _tiny_bert().fuse()
    assert not any(m.onednn for m in fused.modules() if isinstance(m, cpu.onednn.PackedLinear))


@pytest.mark.skipif(not cpu.onednn.available(), reason="oneDNN is not available: no packed products")
def test_eager_products_call_the_kernel_and_watched_ones_minipts_op(monkeypatch):
    """Eager calls skip the registered op's dispatch; under a dispatch mode (FlopCounterMode, OpCounter) it is minipt's op that runs."""
    from torch.profiler import ProfilerActivity, profile

    monkeypatch.setenv("MINIPT_LINEAR", "onednn")
    fused = _tiny_bert().fuse()
    ids = torch.randint(0, 50, (2, 5))
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as trace:
        eager = fused(ids).last_hidden_state
    names = {event.key for event in trace.key_averages()}
    assert "mkldnn::_linear_pointwise" in names and not any(name.startswith("minipt::packed_linear") for name in names)
    with torch.inference_mode(), OpCounter() as ops_run:
        watched = fused(ids).last_hidden_state
    assert ops_run["minipt.packed_linear.default"] > 0 and ops_run["mkldnn._linear_pointwise.default"] == 0, dict(ops_run)
    torch.testing.assert_close(watched, eager, rtol=0, atol=0)  # the same kernel either way


def test_a_failed_onednn_probe_is_reported_with_its_reason(monkeypatch):
    """A torch whose private oneDNN ops changed turns minipt's oneDNN paths off; minipt info says why."""
    monkeypatch.setattr(cpu.onednn, "_probed", {})
    monkeypatch.delenv("MINIPT_ONEDNN", raising=False)

    def changed(*args, **kwargs):
        raise AttributeError("'_OpNamespace' 'mkldnn' object has no attribute '_linear_pointwise'")

    monkeypatch.setattr(cpu.onednn, "_pack", changed)
    assert not cpu.onednn.available(torch.float32)
    assert cpu.onednn.unavailable_because(torch.float32).startswith("AttributeError: '_OpNamespace' 'mkldnn' object has no attribute")
    answers = info("AVX512-BF16 (EPYC Genoa)")
    if torch.backends.mkldnn.is_available():
        assert "its float32 path off: AttributeError" in cpu.cpu_report(answers)
    monkeypatch.setenv("MINIPT_ONEDNN", "0")
    assert cpu.onednn.unavailable_because(torch.float32) == "MINIPT_ONEDNN=0"


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_a_passing_onednn_probe_reports_nothing(monkeypatch):
    monkeypatch.setattr(cpu.onednn, "_probed", {})
    monkeypatch.delenv("MINIPT_ONEDNN", raising=False)
    assert cpu.onednn.unavailable_because(torch.float32) is None and cpu.onednn.available(torch.float32)
    assert "float32 path off" not in cpu.cpu_report(info("AVX512-BF16 (EPYC Genoa)"))  # (bfloat16's depends on this CPU)


def test_a_misspelt_switch_is_named(monkeypatch):
    """MINIPT_LINEAR=onednnn measured the kernels instead and MINIPT_ONEDNN=false left oneDNN on, without a word."""
    from minipt.errors import ConfigError
    from minipt.ops import onednn

    for value in ("onednnn", "F.linear", "off"):
        monkeypatch.setenv("MINIPT_LINEAR", value)
        with pytest.raises(ConfigError, match=f"MINIPT_LINEAR='{value}': expected one of onednn, aten, blocks"):
            cpu._forced_kernel()
    monkeypatch.setenv("MINIPT_LINEAR", " ATEN ")
    assert cpu._forced_kernel() == "aten"
    monkeypatch.delenv("MINIPT_LINEAR")
    assert cpu._forced_kernel() is None
    for value, off in (("0", True), ("false", True), ("OFF", True), ("1", False), ("yes", False), ("", False)):
        monkeypatch.setenv("MINIPT_ONEDNN", value)
        assert onednn.switched_off() is off, value
    monkeypatch.setenv("MINIPT_ONEDNN", "disable")
    with pytest.raises(ConfigError, match="MINIPT_ONEDNN='disable': expected 0 \\(oneDNN off\\) or 1"):
        onednn.unavailable_because()
