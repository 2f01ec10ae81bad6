import dataclasses
import functools
import json
import os

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch_versions import per_torch

from fullgraph.checks import SDPA_BACKENDS, SdpaError, assert_sdpa_safe, sdpa_matrix, suite
from fullgraph.model import LlamaConfig, forward, init_params


def make_qkv(batch, seq):
    generator = torch.Generator().manual_seed(1000 * batch + seq)
    return tuple(torch.randn(batch, 2, seq, 8, generator=generator) for _ in range(3))


def attend(q, k, v, *, sdpa_backend="auto"):
    if sdpa_backend == "auto":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    with sdpa_kernel([SDPA_BACKENDS[sdpa_backend]]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def _line_of(text):
    source = open(__file__).read().splitlines()
    return next(number for number, line in enumerate(source, 1) if line.strip().startswith(text))


def test_a_clean_attention_passes_every_backend_the_device_has_in_both_placements():
    report = assert_sdpa_safe(attend, make_qkv)
    assert [(c.backend, c.placement, c.status) for c in report.cells] == [
        ("math", "inside", "pass"), ("math", "outside", "pass"),
        ("flash", "inside", "pass"), ("flash", "outside", "pass"),
        ("efficient", "inside", "unavailable"), ("efficient", "outside", "unavailable"),
        ("cudnn", "inside", "unavailable"), ("cudnn", "outside", "unavailable"),
    ]
    for placement in ("inside", "outside"):
        flash, math = report.cell("flash", placement), report.cell("math", placement)
        assert flash.kernels == ("aten::_scaled_dot_product_flash_attention_for_cpu",)
        # aot_eager decomposes the math kernel; its softmax is what is left of it.
        assert math.kernels == ("aten::_safe_softmax",) and math.kernel_backend == "math"
        assert len(flash.compiles) == 2 and flash.breaks == () and flash.max_diff < 1e-5
    assert report.unavailable == ("efficient", "cudnn")
    assert "efficient runs on CUDA only, the inputs are on cpu; No viable backend" in \
        report.cell("efficient", "inside").reason
    assert json.loads(json.dumps(report.to_dict()))["cells"][2]["kernel_backend"] == "flash"
    table = str(report)
    assert table.splitlines()[0] == ("SDPA backends for attend (backend aot_eager, cpu, "
                                     "batch x seq 2x16, 4x32, 3x24)")
    assert "  flash     outside   pass         0       2" in table
    assert "  cudnn     -         unavailable  cudnn runs on CUDA only" in table


def reads_the_flags(q, k, v, *, sdpa_backend="auto"):
    if torch.backends.cuda.flash_sdp_enabled():
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def reads_a_value(q, k, v):
    kernels = [SDPBackend.FLASH_ATTENTION] if q.abs().max() < 100 else [SDPBackend.MATH]
    with sdpa_kernel(kernels):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def old_context_manager(q, k, v):
    with torch.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False, enable_mem_efficient=False):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


# torch's gb_type for entering the deprecated context manager, from each release on.
OLD_CONTEXT_MANAGER_BREAK = per_torch({(2, 11): "Unsupported context manager",
                                       (2, 14): "torch.* op returned non-Tensor"})


@pytest.mark.filterwarnings("ignore:.*torch.backends.cuda.sdp_kernel.*:FutureWarning")
@pytest.mark.parametrize("fn, line, gb_type", [
    (reads_the_flags, "if torch.backends.cuda.flash_sdp_enabled():", "torch.* op returned non-Tensor"),
    (reads_a_value, "kernels = [SDPBackend.FLASH_ATTENTION]", "Data-dependent branching"),
    (old_context_manager, "with torch.backends.cuda.sdp_kernel(", OLD_CONTEXT_MANAGER_BREAK),
])
def test_choosing_the_kernel_in_python_breaks_the_graph_and_says_where(fn, line, gb_type):
    with pytest.raises(SdpaError) as info:
        assert_sdpa_safe(fn, make_qkv, backends=["flash"], placements=["outside"])
    message = str(info.value)
    assert message.splitlines()[0] == (
        f"1 of 1 SDPA backend/placement pairs failed for {fn.__name__} (limits: 0 graph breaks, "
        f"2 recompiles over 3 sizes, parity with math)")
    assert message.splitlines()[1].startswith("  1. flash outside: ")
    assert f"tests/checks/test_sdpa.py:{_line_of(line)} in {fn.__name__}: {gb_type}" in message
    assert message.splitlines()[-1].startswith("Hint: Fix the breaks in order")
    assert gb_type in [brk.gb_type for brk in info.value.report.failed[0].breaks]


def test_the_whole_message_for_a_flag_check_in_both_placements():
    # The function ignores the backend it is given: inside, efficient is not even tried.
    with pytest.raises(SdpaError) as info:
        assert_sdpa_safe(reads_the_flags, make_qkv, backends=["math", "efficient"])
    line = _line_of("if torch.backends.cuda.flash_sdp_enabled():")
    assert str(info.value) == f"""\
3 of 3 SDPA backend/placement pairs failed for reads_the_flags (limits: 0 graph breaks, 2 recompiles over 3 sizes, parity with math); unavailable here: efficient outside
  1. math inside: 1 graph break (limit 0); ran aten::_scaled_dot_product_flash_attention_for_cpu, not math
       tests/checks/test_sdpa.py:{line} in reads_the_flags: torch.* op returned non-Tensor
         if torch.backends.cuda.flash_sdp_enabled():
         torch.* ops that return a non-Tensor cannot be traced into the Dynamo FX graph output
  2. math outside: 1 graph break (limit 0)
       tests/checks/test_sdpa.py:{line} in reads_the_flags: torch.* op returned non-Tensor
         if torch.backends.cuda.flash_sdp_enabled():
         torch.* ops that return a non-Tensor cannot be traced into the Dynamo FX graph output
  3. efficient inside: 1 graph break (limit 0); ran aten::_scaled_dot_product_flash_attention_for_cpu, not efficient
       tests/checks/test_sdpa.py:{line} in reads_the_flags: torch.* op returned non-Tensor
         if torch.backends.cuda.flash_sdp_enabled():
         torch.* ops that return a non-Tensor cannot be traced into the Dynamo FX graph output
Hint: Fix the breaks in order, as one can cause the next. Choose the kernel with sdpa_kernel([...]) \
and nothing else: a Python check of the SDPA flags or of tensor values breaks the graph. The backend \
asked for is not the one that ran: pass the backend through to sdpa_kernel around \
F.scaled_dot_product_attention."""


def chunked(q, k, v, *, sdpa_backend="auto"):
    # A loop over the sequence in steps of 8 bakes every length into its own graph.
    chunks = [q[:, :, start:start + 8] for start in range(0, q.shape[2], 8)]
    with sdpa_kernel([SDPA_BACKENDS[sdpa_backend]]):
        return F.scaled_dot_product_attention(torch.cat(chunks, dim=2), k, v, is_causal=True)


def test_a_recompile_per_sequence_length_fails_the_compile_bound_with_the_guard():
    with pytest.raises(SdpaError) as info:
        assert_sdpa_safe(chunked, make_qkv, backends=["math"], placements=["inside"],
                         sizes=[(2, 16), (2, 24), (2, 32), (2, 40)])
    message = str(info.value)
    assert "(limits: 0 graph breaks, 1 recompile over 4 sizes, parity with math)" in message
    assert "  1. math inside: 3 recompiles over 4 sizes (limit 1)\n" in message
    assert (f"recompile 0/2 of tests/checks/test_sdpa.py:{_line_of('def chunked')} in chunked:\n"
            "         size guard on q.size()[2]: expected 24, actual 32 (entry 0/1)") in message
    assert "Hint: A recompile per size" in message


def test_the_default_compile_bound_is_what_the_compile_mode_costs():
    for dynamic, sizes, limit in [(None, [(2, 16), (2, 32)], 1), (None, [(2, 16), (4, 32)], 2),
                                  (False, [(2, 16), (2, 32), (2, 16)], 1)]:
        report = sdpa_matrix(attend, make_qkv, backends=["math"], placements=["outside"],
                             sizes=sizes, dynamic=dynamic)
        assert report.max_recompiles == limit and not report.failed


def scaled_wrongly_for_flash(q, k, v, *, sdpa_backend="auto"):
    scale = 0.5 if sdpa_backend == "flash" else None
    if sdpa_backend == "auto":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    with sdpa_kernel([SDPA_BACKENDS[sdpa_backend]]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


def test_a_wrong_scale_for_one_backend_fails_parity_with_math():
    report = sdpa_matrix(scaled_wrongly_for_flash, make_qkv, backends=["math", "flash"])
    assert [(c.backend, c.placement) for c in report.failed] == [("flash", "inside")]
    assert report.failed[0].problems == {"parity": "differs from the math backend"}
    with pytest.raises(SdpaError) as info:
        assert_sdpa_safe(scaled_wrongly_for_flash, make_qkv, backends=["flash"], placements=["inside"])
    lines = str(info.value).splitlines()
    assert lines[1] == "  1. flash inside: differs from the math backend"
    assert lines[2] == "       at batch x seq 2x16: parity failed at torch.float32 (atol=1e-05, rtol=1e-05)"
    assert lines[3].strip().startswith("Mismatched elements:")


def ignores_the_backend(q, k, v, *, sdpa_backend="auto"):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_a_function_that_ignores_the_backend_it_is_given_runs_another_kernel():
    report = sdpa_matrix(ignores_the_backend, make_qkv, backends=["math", "flash"])
    assert [(c.backend, c.placement) for c in report.failed] == [("math", "inside")]
    assert report.failed[0].problems == {
        "kernel": "ran aten::_scaled_dot_product_flash_attention_for_cpu, not math"}
    assert report.failed[0].kernel_backend == "flash"


def test_unavailable_backends_are_reported_with_torchs_reason_and_do_not_fail():
    report = assert_sdpa_safe(attend, make_qkv, backends=["efficient", "cudnn"])
    assert report.failed == () and report.unavailable == ("efficient", "cudnn")
    for cell in report.cells:
        assert cell.status == "unavailable" and cell.compiles == () and cell.kernels == ()
        assert "No viable backend for scaled_dot_product_attention was found" in cell.reason


def switches_flags(q, k, v, *, sdpa_backend="auto"):
    torch.backends.cuda.enable_flash_sdp(False)
    torch.backends.cuda.enable_math_sdp(True)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_sdpa_flags_and_matmul_precision_are_restored_pass_or_fail():
    torch.set_float32_matmul_precision("high")
    torch.backends.cuda.enable_math_sdp(False)
    config = torch._dynamo.config.get_config_copy()
    try:
        report = sdpa_matrix(switches_flags, make_qkv, backends=["flash"], placements=["inside"])
        assert report.failed  # flash was switched off under it: math ran
        assert torch.backends.cuda.flash_sdp_enabled() and not torch.backends.cuda.math_sdp_enabled()
        assert torch.get_float32_matmul_precision() == "high"
        assert torch._dynamo.config.get_config_copy() == config
    finally:
        torch.backends.cuda.enable_math_sdp(True)
        torch.set_float32_matmul_precision("highest")


def positional_only(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


@pytest.mark.parametrize("fn, options, error, match", [
    ("attend", {"backends": ["fast"]}, ValueError, r"backends must be distinct names from \['math'"),
    ("attend", {"backends": "math"}, TypeError, "backends must be a sequence"),
    ("attend", {"placements": ["middle"]}, ValueError, "placements must be distinct names"),
    ("attend", {"sizes": [(0, 4)]}, ValueError, r"sizes: each must be a \(batch, seq\) pair"),
    ("attend", {"sizes": []}, TypeError, "sizes must be a non-empty sequence"),
    ("attend", {"max_breaks": -1}, ValueError, "max_breaks must be >= 0"),
    ("attend", {"max_recompiles": 1.5}, TypeError, "max_recompiles must be an int"),
    ("attend", {"dynamic": "yes"}, TypeError, "dynamic must be None, True or False"),
    ("attend", {"keyword": "not a name"}, TypeError, "keyword must be a parameter name"),
    ("attend", {"msg": 3}, TypeError, "msg must be a str or None"),
    ("positional_only", {}, ValueError, "fn: positional_only takes no sdpa_backend= argument"),
    (3, {}, TypeError, "fn must be callable"),
])
def test_misuse_raises_naming_the_argument(fn, options, error, match):
    fn = globals()[fn] if isinstance(fn, str) else fn
    with pytest.raises(error, match=match):
        assert_sdpa_safe(fn, make_qkv, **options)


def test_inputs_are_made_by_a_function_of_batch_and_seq():
    with pytest.raises(TypeError, match=r"make_inputs must be callable as make_inputs\(batch, seq\)"):
        sdpa_matrix(attend, [make_qkv(2, 4)])


def test_an_outside_only_function_needs_no_backend_argument():
    report = assert_sdpa_safe(positional_only, make_qkv, backends=["math"], placements=["outside"])
    assert [cell.status for cell in report.cells] == ["pass"]


@pytest.fixture
def one_layer():
    cfg = dataclasses.replace(LlamaConfig.from_name("tiny"), n_layers=1)
    return cfg, init_params(cfg, seed=0)


def test_the_uncached_forward_compiles_over_sequence_lengths(one_layer):
    cfg, params = one_layer
    assert_sdpa_safe(functools.partial(forward, cfg=cfg),
                     lambda batch, seq: (params, torch.randint(0, cfg.vocab_size, (batch, seq))),
                     backends=["math"], placements=["outside"], backend="eager")


@pytest.mark.gpu
def test_the_reference_model_passes_every_backend_on_cuda():
    cfg = dataclasses.replace(LlamaConfig.from_name("tiny"), n_layers=1)
    params = init_params(cfg, dtype=torch.bfloat16, device="cuda")

    def make_inputs(batch, seq):
        return params, torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda")

    report = assert_sdpa_safe(functools.partial(forward, cfg=cfg), make_inputs,
                              sizes=[(2, 64), (4, 64), (3, 64)], dtype=torch.bfloat16)
    print(report)
    # Called without sdpa_backend, forward asks for grouped-query attention, which the efficient
    # kernel does not take: torch says so, and the pair is unavailable, not failed.
    efficient = report.cell("efficient", "outside")
    assert efficient.status == "unavailable" and "same num_heads" in efficient.reason
    assert [cell.status for cell in report.cells if cell is not efficient] == ["pass"] * 7


@pytest.mark.gpu
def test_the_suite_row_on_cuda_runs_or_explains_every_backend():
    target = suite.build_target(device="cuda", dtype="bfloat16", backend="eager")
    detail = suite.check_sdpa_backends(target)
    print(detail)
    # The cached prefill attends through a mask, which the flash kernel does not take, and without
    # sdpa_backend asks for grouped-query attention, which the efficient kernel does not take.
    assert detail == "math, efficient, cudnn: 0 breaks, 2 compiles; 3 of 8 pairs unavailable"


def test_profiling_a_kernel_prints_no_profiler_lines_but_keeps_other_output(capfd):
    from fullgraph.checks._compat import sdpa as torch_sdpa
    from fullgraph.checks.sdpa import _kernels_of

    q = torch.randn(1, 2, 4, 8)
    assert _kernels_of(lambda: F.scaled_dot_product_attention(q, q, q)) != ()
    with torch_sdpa.quiet_profiler():
        os.write(2, b"USDT:2026-11-26 13:31:53 1:1 SyncActivityProfilerHandler.cpp:52] profiler_start\n"
                    b"a line of the program's own\n")
    err = capfd.readouterr().err
    assert "USDT:" not in err and "STAGE:" not in err
    assert err.endswith("a line of the program's own\n")
