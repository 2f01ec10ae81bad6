import argparse
import dataclasses
import fnmatch
import json

import pytest
import torch

from fullgraph.checks.cli import _bound_misses, main
from fullgraph.model import LlamaConfig, init_params
from fullgraph.model.bench import (
    BenchSpec,
    DecodeProfile,
    _bytes_per_token,
    _category,
    _matmul_weight_bytes,
    copy_bandwidth,
    profile_decode,
    prompt_lengths,
    run_bench,
)


def test_bytes_per_token_counts_weights_and_the_average_cache_read():
    cfg = LlamaConfig.from_name("tiny")
    params = init_params(cfg, device="meta")
    weights = 131392 * 4
    per_position = 2 * 2 * 2 * 16 * 4  # k and v, layers, KV heads, head dim, fp32 bytes
    assert _bytes_per_token(params, cfg, batch_size=3, n_kv_heads=2, mean_context=10,
                            dtype=torch.float32) == (
        weights + 3 * 10 * per_position)


def test_the_profile_reads_matmul_bandwidth_from_the_weights_they_must_read():
    cfg = LlamaConfig.from_name("tiny")
    params = init_params(cfg, device="meta")
    embedding = cfg.vocab_size * cfg.dim * 4
    assert _matmul_weight_bytes(params) == 131392 * 4 - embedding
    profile = DecodeProfile(total_ms=5.0, by_category={"matmul": 2.0, "matmul (triton)": 1.0,
                                                       "attention": 1.0},
                            top_kernels=(), matmul_weight_bytes=3 * 10**9)
    assert profile.matmul_gbps() == pytest.approx(1000.0)
    assert dataclasses.replace(profile, by_category={"attention": 1.0}).matmul_gbps() is None


def test_copy_bandwidth_is_positive():
    assert copy_bandwidth(torch.device("cpu"), megabytes=8, repeats=2) > 0


def test_eager_bench_reports_consistent_figures():
    result = run_bench(BenchSpec("tiny", device="cpu", dtype=torch.float32, batch_size=2,
                                 prompt_len=4, new_tokens=6, compile=False), bandwidth_gbps=10.0)
    assert result.batch_size == 2 and not result.compiled
    assert result.fused and not result.coordinate_descent
    assert (result.device_name, result.torch) == ("cpu", torch.__version__)
    assert result.tokens_per_s == pytest.approx(2 * 1000 / result.ms_per_token)
    assert result.limit_ms_per_token == pytest.approx(result.bytes_per_token / 10e9 * 1e3)
    assert result.share_of_limit == pytest.approx(result.limit_ms_per_token / result.ms_per_token)
    assert result.peak_memory_gb is None
    assert json.loads(json.dumps(result.to_dict()))["config"] == "tiny"


@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
def test_bench_runs_the_attention_it_is_given():
    result = run_bench(BenchSpec("tiny", device="cpu", dtype=torch.float32, prompt_len=4,
                                 new_tokens=4, compile=False, sdpa_backend="flex"),
                       bandwidth_gbps=10.0)
    assert result.sdpa_backend == "flex" and result.ms_per_token > 0


def test_prompt_lengths_spread_evenly_from_the_shortest_to_the_longest():
    assert prompt_lengths(8, 4000, 128) == [128, 681, 1234, 1787, 2341, 2894, 3447, 4000]
    assert prompt_lengths(3, 16, None) == [16, 16, 16]
    assert prompt_lengths(1, 16, 4) == [16]


def test_eager_bench_on_a_paged_cache_decodes_rows_of_mixed_lengths():
    result = run_bench(BenchSpec("tiny", device="cpu", dtype=torch.float32, batch_size=3,
                                 prompt_len=9, new_tokens=4, compile=False, cache="paged",
                                 block_size=4, min_prompt_len=3), bandwidth_gbps=10.0)
    assert (result.cache, result.block_size, result.prompt_lens) == ("paged", 4, (3, 6, 9))
    contiguous = run_bench(BenchSpec("tiny", device="cpu", dtype=torch.float32, batch_size=3,
                                     prompt_len=6, new_tokens=4, compile=False), bandwidth_gbps=10.0)
    # The same mean context, so the same bytes an ideal kernel reads.
    assert result.bytes_per_token == contiguous.bytes_per_token and result.ms_per_token > 0


@pytest.mark.parametrize("fields, error, message", [
    (dict(config="llama3"), ValueError,
     "BenchSpec: config must be one of ['llama2-13b', 'llama2-70b', 'llama2-7b', 'tiny'], got 'llama3'"),
    (dict(device="gpu"), ValueError, "BenchSpec: device 'gpu' is not a device: *"),
    (dict(dtype="bfloat16"), TypeError, "BenchSpec: dtype must be a torch.dtype, got 'bfloat16'"),
    (dict(batch_size=0), ValueError, "BenchSpec: batch_size must be >= 1, got 0"),
    (dict(prompt_len=2.0), TypeError, "BenchSpec: prompt_len must be an int, got 2.0"),
    (dict(new_tokens=1), ValueError, "BenchSpec: new_tokens must be >= 2, got 1"),
    (dict(block_size=True), TypeError, "BenchSpec: block_size must be an int, got True"),
    (dict(compile="yes"), TypeError, "BenchSpec: compile must be a bool, got 'yes'"),
    (dict(sdpa_backend="fast"), ValueError, "BenchSpec: sdpa_backend must be one of *, got 'fast'"),
    (dict(cache="ring"), ValueError, "BenchSpec: cache must be one of ['contiguous', 'paged'], got 'ring'"),
    (dict(quantize="int2"), ValueError, "BenchSpec: quantize: unknown scheme 'int2'*"),
    (dict(quantize="int8", group_size=32), ValueError, "BenchSpec: quantize: group_size is for int4*"),
    (dict(group_size=32), ValueError,
     "BenchSpec: group_size applies to quantize='int4' only, got group_size=32 without quantize"),
    (dict(min_prompt_len=3), ValueError,
     "BenchSpec: min_prompt_len: rows of mixed lengths need cache='paged'"),
    (dict(cache="paged", prompt_len=8, min_prompt_len=9), ValueError,
     "BenchSpec: min_prompt_len must be <= prompt_len (8), got 9"),
])
def test_a_bench_spec_names_its_bad_field_before_any_weight_is_built(fields, error, message):
    fields = {"config": "tiny", "device": "cpu", **fields}
    with pytest.raises(error) as raised:
        BenchSpec(**fields)
    # A * stands for torch's own words, or a long list.
    if "*" in message:
        assert fnmatch.fnmatchcase(str(raised.value), message), str(raised.value)
    else:
        assert str(raised.value) == message


def test_run_bench_and_profile_decode_take_a_spec():
    with pytest.raises(TypeError, match="^run_bench: spec must be a BenchSpec, got str$"):
        run_bench("tiny")
    with pytest.raises(TypeError, match="^profile_decode: spec must be a BenchSpec, got dict$"):
        profile_decode({"config": "tiny"})


def test_profile_decode_needs_cuda():
    with pytest.raises(ValueError, match="profile_decode: spec.device must be CUDA"):
        profile_decode(BenchSpec("tiny", device="cpu"))


@pytest.mark.parametrize("argv, error", [
    (["--min-share", "0"], "--min-share must be in (0, 1], got 0.0"),
    (["--min-share", "1.5"], "--min-share must be in (0, 1], got 1.5"),
    (["--max-ms-per-token", "-1"], "--max-ms-per-token must be > 0, got -1.0"),
    (["--profile"], "--profile needs a CUDA device"),
    (["--new-tokens", "1"], "--prompt-len and --batch must be >= 1, --new-tokens >= 2"),
    (["--cache", "paged", "--block-size", "0"], "--block-size must be >= 1, got 0"),
    (["--min-prompt-len", "4"], "--min-prompt-len needs --cache paged (rows at their own positions)"),
    (["--cache", "paged", "--min-prompt-len", "200"], "--min-prompt-len must be in [1, --prompt-len], got 200"),
])
def test_bench_arguments_are_checked_before_any_rank_starts(argv, error, capsys):
    assert main(["bench", "--device", "cpu", "--nproc", "2", *argv]) == 2
    assert capsys.readouterr().err == f"fullgraph bench: {error}\n"


def test_only_compiled_runs_are_judged_against_the_bounds():
    eager = run_bench(BenchSpec("tiny", device="cpu", dtype=torch.float32, prompt_len=4,
                                new_tokens=4, compile=False), bandwidth_gbps=10.0)
    slow = dataclasses.replace(eager, compiled=True, batch_size=8, ms_per_token=6.0,
                               share_of_limit=0.7)
    bounds = argparse.Namespace(max_ms_per_token=5.0, min_share=0.8)
    assert _bound_misses([eager, slow], bounds) == [
        "batch 8, compiled: 6.00 ms/token is over --max-ms-per-token 5",
        "batch 8, compiled: 0.70 of the bandwidth limit is under --min-share 0.8",
    ]
    within = argparse.Namespace(max_ms_per_token=6.0, min_share=0.7)
    assert _bound_misses([eager, slow], within) == []
    assert _bound_misses([eager, slow], argparse.Namespace(max_ms_per_token=None, min_share=None)) == []


@pytest.mark.slow
def test_bench_command_prints_and_writes_json_then_fails_a_missed_bound(tmp_path, capsys):
    # One compiled run serves both: a bound is judged after every figure is printed and written.
    path = tmp_path / "bench.json"
    assert main(["bench", "--device", "cpu", "--prompt-len", "4", "--new-tokens", "4",
                 "--coordinate-descent", "--json", str(path), "--max-ms-per-token", "1e-6"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("fullgraph bench: batch 1, compiled: ")
    assert captured.err.endswith(" ms/token is over --max-ms-per-token 1e-06\n")
    out = captured.out
    assert out.startswith("fullgraph bench: tiny, cpu, float32, prompt 4, 4 new tokens; copy bandwidth")
    assert out.splitlines()[1] == f"on cpu, torch {torch.__version__}"
    assert "compiled" in out and "eager" in out
    figures = json.loads(path.read_text())
    assert [f["compiled"] for f in figures] == [True, False]
    # Tuning applies to the compiled decode graph only; both runs use the fused projections.
    assert [f["coordinate_descent"] for f in figures] == [True, False]
    assert all(f["fused"] for f in figures)
    assert 0 < figures[0]["decode_compile_s"] < figures[0]["compile_s"]
    assert all(f["ms_per_token"] > 0 for f in figures)


@pytest.mark.parametrize("kernel, category", [
    ("triton_red_fused__unsafe_view_mm_mul_silu_t_view_9", "matmul (triton)"),
    ("triton_poi_fused__to_copy__unsafe_view_add_arange_cos_div_index_copy_mul", "fused elementwise (triton)"),
    ("nvjet_sm90_tst_64x8_64x16_2x1_v_bz_splitK_TNT", "matmul"),
    ("void cublasLt::splitKreduce_kernel<32, 16, int, float>", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm80_flash_fprop_wmma_f16", "attention"),
    ("ncclDevKernel_AllReduce_Sum_bf16_RING_LL", "all-reduce"),
    ("Memcpy DtoD (Device -> Device)", "copy"),
    ("some_vendor_kernel", "other kernels"),
])
def test_kernel_names_sort_into_categories(kernel, category):
    # Names as an H100 profile of a 7B decode step showed them (torch 2.11).
    assert _category(kernel) == category


@pytest.mark.slow
def test_tensor_parallel_bench_runs_two_ranks_and_rank_zero_reports_a_missed_bound(tmp_path,
                                                                                  run_python):
    path = tmp_path / "tp.json"
    [run] = run_python(["-m", "fullgraph.checks.cli", "bench", "--device", "cpu", "--nproc", "2",
                        "--no-eager", "--prompt-len", "4", "--new-tokens", "4",
                        "--json", str(path), "--max-ms-per-token", "1e-6"], timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "2 tensor-parallel ranks (figures per GPU)" in run.stdout
    assert run.stdout.count("compiled") == 1  # printed by rank 0 only
    [figures] = json.loads(path.read_text())
    assert figures["world_size"] == 2
    # A rank holds half of every split weight: fewer bytes per token than the whole model.
    whole = 131392 * 4
    assert figures["bytes_per_token"] < whole
    # Printed once, by rank 0; the launcher names the rank that failed, with no traceback.
    assert run.stderr.count("ms/token is over --max-ms-per-token 1e-06") == 1
    assert "fullgraph.checks.cli: rank 0 exited with code 1\n" in run.stderr
    assert "Traceback" not in run.stderr
