"""Weight-only int8 and int4: layouts, what the quantized forward computes, its error, its graphs."""

import json
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from fullgraph.model import LlamaConfig, forward, fuse_projections_, init_params, new_cache
from fullgraph.model.generate import decode_step, step_functions
from fullgraph.model.quant import ERROR_BOUNDS, dequantize, quantize

SCHEMES = [("int8", None), ("int4", 32), ("int4", 64)]
SCHEME_IDS = ["int8", "int4-g32", "int4-g64"]
LINEAR_SUFFIXES = ("wq.weight", "wk.weight", "wv.weight", "wo.weight", "w1.weight", "w2.weight",
                   "w3.weight")


def fake_quantize(weight, scheme, group_size):
    """The weight quantization stands for, computed from the formulas alone (no packing, no kernel)."""
    w = weight.float()  # fp32, as quantize computes: a tie rounds the same way
    if scheme == "int8":
        scale = (w.abs().amax(dim=1, keepdim=True) / 127).to(weight.dtype).float()
        return (torch.round(w / scale).clamp(-127, 127) * scale).to(weight.dtype)
    n, k = w.shape
    groups = w.reshape(n, k // group_size, group_size)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = ((high - low) / 15).to(weight.dtype).float()
    zero = (low + scale * 8).to(weight.dtype).float()
    q = (torch.round((groups - zero) / scale) + 8).clamp(0, 15)
    return ((q - 8) * scale + zero).reshape(n, k).to(weight.dtype)


def is_linear(name):
    return name == "output.weight" or name.endswith(LINEAR_SUFFIXES)


def fake_quantized_params(params, scheme, group_size):
    return {name: fake_quantize(t, scheme, group_size) if is_linear(name) else t
            for name, t in params.items()}


def error_against(quantized_logits, dense_logits):
    """(relative RMS error of the logits, share of positions with the same greedy token)."""
    relative = ((quantized_logits - dense_logits).norm() / dense_logits.norm()).item()
    agreement = (quantized_logits.argmax(-1) == dense_logits.argmax(-1)).float().mean().item()
    return relative, agreement


def assert_within_bound(quantized_logits, dense_logits, scheme):
    relative, agreement = error_against(quantized_logits, dense_logits)
    bound = ERROR_BOUNDS[scheme]
    assert relative <= bound.max_relative_rms and agreement >= bound.min_greedy_agreement, (
        f"{scheme}: relative RMS {relative:.4f} (bound {bound.max_relative_rms}), greedy agreement "
        f"{agreement:.3f} (bound {bound.min_greedy_agreement})")


@pytest.fixture
def tokens(tiny_cfg):
    return torch.randint(0, tiny_cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def long_tokens():
    # 256 positions: the greedy agreement the bounds speak of is over this many tokens per row.
    return torch.randint(0, 256, (2, 256), generator=torch.Generator().manual_seed(1))


# --- layouts -----------------------------------------------------------------------------------


def test_int8_stores_int8_rows_and_a_scale_per_output_channel(tiny_params):
    quantized = quantize(tiny_params, "int8")
    wq = tiny_params["layers.0.attention.wq.weight"]
    assert quantized["layers.0.attention.wq.weight"].dtype == torch.int8
    assert quantized["layers.0.attention.wq.weight"].shape == wq.shape
    assert quantized["layers.0.attention.wq.scales"].shape == (wq.shape[0],)
    assert quantized["layers.0.attention.wq.scales"].dtype == wq.dtype
    assert quantized["layers.0.attention.wq.weight"].abs().amax(dim=1).eq(127).all()


def test_int4_stores_packed_nibbles_and_a_scale_and_zero_per_group(tiny_params):
    quantized = quantize(tiny_params, "int4", group_size=32)
    w2 = tiny_params["layers.1.feed_forward.w2.weight"]  # (64, 192): six groups per row
    assert quantized["layers.1.feed_forward.w2.weight"].dtype == torch.uint8
    assert quantized["layers.1.feed_forward.w2.weight"].shape == (64, 96)
    assert quantized["layers.1.feed_forward.w2.scales_and_zeros"].shape == (6, 64, 2)
    assert w2.dtype == quantized["layers.1.feed_forward.w2.scales_and_zeros"].dtype


def test_embeddings_and_norms_stay_and_output_is_optional(tiny_params):
    quantized = quantize(tiny_params, "int8")
    for name in ("tok_embeddings.weight", "norm.weight", "layers.0.attention_norm.weight"):
        assert quantized[name] is tiny_params[name]
    assert "output.scales" in quantized
    kept = quantize(tiny_params, "int8", include_output=False)
    assert kept["output.weight"] is tiny_params["output.weight"] and "output.scales" not in kept


# --- what the quantized forward computes -------------------------------------------------------


@pytest.mark.parametrize("scheme, group_size", SCHEMES, ids=SCHEME_IDS)
def test_dequantize_gives_back_the_fake_quantized_weights(tiny_params, scheme, group_size):
    dense = dequantize(quantize(tiny_params, scheme, group_size=group_size))
    expected = fake_quantized_params(tiny_params, scheme, group_size)
    assert list(dense) == list(tiny_params)
    for name, tensor in expected.items():
        torch.testing.assert_close(dense[name], tensor, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("scheme, group_size", SCHEMES, ids=SCHEME_IDS)
def test_quantized_forward_equals_the_forward_on_fake_quantized_weights(tiny_cfg, tiny_params, tokens,
                                                                        scheme, group_size):
    quantized = quantize(tiny_params, scheme, group_size=group_size)
    expected = forward(fake_quantized_params(tiny_params, scheme, group_size), tokens, cfg=tiny_cfg)
    torch.testing.assert_close(forward(quantized, tokens, cfg=tiny_cfg), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(forward(dequantize(quantized), tokens, cfg=tiny_cfg), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("scheme, group_size", SCHEMES, ids=SCHEME_IDS)
def test_quantized_logits_are_within_the_documented_bound(tiny_cfg, long_tokens, dtype, scheme,
                                                          group_size):
    params = init_params(tiny_cfg, seed=3, dtype=dtype)
    dense = forward(params, long_tokens, cfg=tiny_cfg)
    quantized = forward(quantize(params, scheme, group_size=group_size), long_tokens, cfg=tiny_cfg)
    assert_within_bound(quantized, dense, scheme)


@pytest.mark.parametrize("scheme, group_size, scales", [("int8", None, "scales"),
                                                         ("int4", 32, "scales_and_zeros")],
                         ids=["int8", "int4"])
def test_a_corrupted_scale_falls_outside_the_bound(tiny_cfg, tiny_params, long_tokens, scheme,
                                                   group_size, scales):
    quantized = quantize(tiny_params, scheme, group_size=group_size)
    # One layer's up projection read with scales four times too large, as a wrong layout would.
    quantized[f"layers.0.feed_forward.w3.{scales}"] = quantized[f"layers.0.feed_forward.w3.{scales}"] * 4
    dense = forward(tiny_params, long_tokens, cfg=tiny_cfg)
    with pytest.raises(AssertionError, match=f"{scheme}: relative RMS"):
        assert_within_bound(forward(quantized, long_tokens, cfg=tiny_cfg), dense, scheme)


@pytest.mark.parametrize("scheme, group_size", SCHEMES, ids=SCHEME_IDS)
def test_fusing_quantized_params_stores_what_quantizing_fused_params_does(tiny_cfg, tiny_params,
                                                                          scheme, group_size):
    fused_then_quantized = dict(tiny_params)
    fuse_projections_(fused_then_quantized, tiny_cfg)
    fused_then_quantized = quantize(fused_then_quantized, scheme, group_size=group_size)
    quantized_then_fused = quantize(tiny_params, scheme, group_size=group_size)
    fuse_projections_(quantized_then_fused, tiny_cfg)
    assert sorted(quantized_then_fused) == sorted(fused_then_quantized)
    for name, tensor in fused_then_quantized.items():
        assert torch.equal(quantized_then_fused[name], tensor), name


# --- graphs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [False, True], ids=["separate", "fused"])
@pytest.mark.parametrize("scheme, group_size", SCHEMES[:2], ids=SCHEME_IDS[:2])
def test_quantized_prefill_and_decode_have_no_graph_breaks(tiny_cfg, tiny_params, tokens, scheme,
                                                           group_size, fused):
    if fused:
        fuse_projections_(tiny_params, tiny_cfg)
    params = quantize(tiny_params, scheme, group_size=group_size)
    cache = new_cache(tiny_cfg, batch_size=2)
    prefill = (params, tokens)
    prefill_options = dict(cfg=tiny_cfg, cache=cache, input_pos=torch.arange(16))
    decode = (params, torch.tensor([[3], [4]]), torch.tensor([16]), cache)
    decode_options = dict(cfg=tiny_cfg, sdpa_backend="auto", temperature=0.0, top_k=None)
    for fn, args, options in [(forward, prefill, prefill_options), (decode_step, decode, decode_options)]:
        explained = torch._dynamo.explain(fn)(*args, **options)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), fn.__name__
        torch.compile(fn, fullgraph=True, backend="aot_eager")(*args, **options)


def _decode(step, params, cfg, positions):
    cache = new_cache(cfg, batch_size=2)
    token, input_pos = torch.tensor([[3], [4]]), torch.tensor([0])
    for _ in range(positions):
        token = step(params, token, input_pos, cache, cfg=cfg, sdpa_backend="auto", temperature=0.0,
                     top_k=None).view(2, 1)
        input_pos += 1
    return token


@pytest.mark.parametrize("scheme, group_size", SCHEMES[:2], ids=SCHEME_IDS[:2])
def test_quantized_decode_compiles_once_for_64_positions(tiny_cfg, tiny_params, scheme, group_size):
    counter = CompileCounter()
    step = torch.compile(decode_step, fullgraph=True, backend=counter)
    _decode(step, quantize(tiny_params, scheme, group_size=group_size), tiny_cfg, 64)
    assert counter.frame_count == 1


def test_a_dense_and_two_quantized_models_in_one_process_compile_once_each_and_static(tiny_cfg,
                                                                                     tiny_params):
    symbolic = []

    def backend(gm, example_inputs):
        counter(gm, example_inputs)
        traced = [node.meta.get("example_value") for node in gm.graph.find_nodes(op="placeholder")]
        symbolic.append([tuple(t.shape) for t in traced
                         if isinstance(t, torch.Tensor) and not all(isinstance(s, int) for s in t.shape)])
        return gm

    counter = CompileCounter()
    step = torch.compile(decode_step, fullgraph=True, backend=backend)
    models = [tiny_params, quantize(tiny_params, "int8"), quantize(tiny_params, "int4", group_size=32)]
    for params in models:
        # What generate does before compiling: params' shapes are static.
        step_functions(params, new_cache(tiny_cfg, batch_size=2), compile=True,
                        device=torch.device("cpu"))
    for params in models + models:  # the second round must find every model's graph compiled
        _decode(step, params, tiny_cfg, 4)
    assert counter.frame_count == len(models)
    # Without the marks, the packed int4 weights' other sizes under the dense names made dynamo
    # trace the int4 graph with symbolic weight sizes (automatic dynamic shapes).
    assert symbolic == [[]] * len(models)


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("args, kwargs, message", [
    (("int3",), {}, "unknown scheme 'int3'; known schemes: int8, int4"),
    (("int4",), {"group_size": 48}, r"group_size must be one of \(32, 64, 128\) for int4, got 48"),
    (("int8",), {"group_size": 32}, "group_size is for int4"),
    (("int4",), {}, r"group_size 128 does not divide the input dim 64 of layers.0.attention.wq.weight"),
])
def test_bad_arguments_say_which(tiny_params, args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantize(tiny_params, *args, **kwargs)


@pytest.mark.parametrize("first, second", [("int8", "int8"), ("int8", "int4"), ("int4", "int8")])
def test_quantizing_twice_is_refused(tiny_params, first, second):
    once = quantize(tiny_params, first, group_size=32 if first == "int4" else None)
    with pytest.raises(ValueError, match=r"already quantized \(layers.0.attention.wq.scales"):
        quantize(once, second, group_size=32 if second == "int4" else None)


# --- loading quantized, and generating text from it ----------------------------------------------


CORPUS = Path(__file__).parent.parent / "data" / "tokenizer_corpus.txt"


def _meta_checkpoint(folder, params, cfg):
    folder.mkdir()
    args = {"dim": cfg.dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
            "n_kv_heads": cfg.n_kv_heads, "vocab_size": cfg.vocab_size,
            "multiple_of": cfg.multiple_of, "norm_eps": cfg.norm_eps}
    (folder / "params.json").write_text(json.dumps(args))
    torch.save(params, folder / "consolidated.00.pth")
    return folder


def test_loaders_quantize_while_loading_what_quantize_stores(tmp_path, tiny_cfg, tiny_params):
    from fullgraph.model import load_meta_checkpoint

    folder = _meta_checkpoint(tmp_path / "meta", tiny_params, tiny_cfg)
    _, loaded = load_meta_checkpoint(folder, device="cpu", quantize="int4", group_size=32)
    expected = quantize(tiny_params, "int4", group_size=32)
    assert list(loaded) == list(expected)
    assert all(torch.equal(loaded[name], tensor) for name, tensor in expected.items())


def test_loaders_refuse_a_bad_scheme_before_reading_anything(tmp_path):
    from fullgraph.model import load_hf_checkpoint, load_meta_checkpoint

    for load in (load_meta_checkpoint, load_hf_checkpoint):
        with pytest.raises(ValueError, match="unknown scheme 'int2'"):
            load(tmp_path / "nowhere", quantize="int2")
        with pytest.raises(ValueError, match="group_size=64 needs quantize='int4'"):
            load(tmp_path / "nowhere", group_size=64)


def test_generate_text_loads_quantized_and_prints_the_greedy_continuation(tmp_path, tiny_cfg,
                                                                          tiny_params, capsys):
    sentencepiece = pytest.importorskip("sentencepiece")
    from fullgraph.model import Tokenizer, generate
    from fullgraph.model.generate_text import main

    folder = _meta_checkpoint(tmp_path / "meta", tiny_params, tiny_cfg)
    sentencepiece.SentencePieceTrainer.train(
        input=str(CORPUS), model_prefix=str(folder / "tokenizer"), vocab_size=tiny_cfg.vocab_size,
        model_type="bpe", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    assert main([str(folder), "--prompt", "The harbour", "--quantize", "int8", "--device", "cpu",
                 "--max-new-tokens", "6", "--no-compile"]) == 0
    tok = Tokenizer(folder / "tokenizer.model")
    prompt = tok.encode("The harbour")
    [new] = generate(quantize(tiny_params, "int8"), [prompt], cfg=tiny_cfg, max_new_tokens=6,
                     eos_id=tok.eos_id, compile=False)
    assert capsys.readouterr().out == tok.decode(prompt + new) + "\n"


# --- CUDA: torch's int4 kernel and its tiled layout, CUDA graphs -------------------------------


def _on_cuda(tiny_cfg, scheme, group_size):
    params = init_params(tiny_cfg, dtype=torch.bfloat16, device="cuda")
    return params, quantize(params, scheme, group_size=group_size)


@pytest.mark.gpu
@pytest.mark.parametrize("scheme, group_size", SCHEMES, ids=SCHEME_IDS)
def test_cuda_quantized_forward_equals_the_forward_on_fake_quantized_weights(tiny_cfg, scheme,
                                                                             group_size):
    from fullgraph.checks.parity import assert_parity

    params, quantized = _on_cuda(tiny_cfg, scheme, group_size)
    fake = fake_quantized_params(params, scheme, group_size)
    for name, tensor in dequantize(quantized).items():
        torch.testing.assert_close(tensor, fake[name], msg=name)
    tokens = torch.randint(0, tiny_cfg.vocab_size, (2, 64), device="cuda")
    expected = forward(fake, tokens, cfg=tiny_cfg)
    assert_parity(forward(quantized, tokens, cfg=tiny_cfg), expected, dtype=torch.bfloat16)
    compiled = torch.compile(forward, fullgraph=True)(quantized, tokens, cfg=tiny_cfg)
    assert_parity(compiled, expected, dtype=torch.bfloat16)


@pytest.mark.gpu
def test_llama2_7b_quantized_logits_are_within_the_documented_bound(capsys):
    # The bounds at full size: 32 layers of 4096 on random bf16 weights, 2 x 256 positions, every
    # scheme against the same dense logits (the kernels of batch 1 are not on this path).
    cfg = LlamaConfig.from_name("llama2-7b")
    params = init_params(cfg, seed=3, dtype=torch.bfloat16, device="cuda")
    tokens = torch.randint(0, cfg.vocab_size, (2, 256), device="cuda",
                           generator=torch.Generator(device="cuda").manual_seed(1))
    schemes = [("int8", None), ("int4", 32), ("int4", 64), ("int4", 128)]
    with torch.inference_mode():
        dense = forward(params, tokens, cfg=cfg).float()
        logits = [forward(quantize(params, scheme, group_size=group_size), tokens, cfg=cfg).float()
                  for scheme, group_size in schemes]
    for (scheme, group_size), quantized in zip(schemes, logits):
        relative, agreement = error_against(quantized, dense)
        with capsys.disabled():
            print(f"\nllama2-7b {scheme} group {group_size}: relative RMS {relative:.4f}, "
                  f"greedy agreement {agreement:.3f}")
    for (scheme, _), quantized in zip(schemes, logits):
        assert_within_bound(quantized, dense, scheme)


@pytest.mark.gpu
@pytest.mark.parametrize("scheme, group_size", SCHEMES, ids=SCHEME_IDS)
def test_cuda_fusing_quantized_params_stores_what_quantizing_fused_params_does(tiny_cfg, scheme,
                                                                               group_size):
    params, quantized_then_fused = _on_cuda(tiny_cfg, scheme, group_size)
    fuse_projections_(quantized_then_fused, tiny_cfg)
    fuse_projections_(params, tiny_cfg)
    fused_then_quantized = quantize(params, scheme, group_size=group_size)
    for name, tensor in fused_then_quantized.items():
        assert torch.equal(quantized_then_fused[name], tensor), name


@pytest.mark.gpu
def test_cuda_int8_batch_1_decode_calls_the_gemv_kernel_inside_the_graph(tiny_cfg):
    _, params = _on_cuda(tiny_cfg, "int8", None)
    targets = []

    def backend(gm, example_inputs):
        targets.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm

    token = torch.tensor([[3]], device="cuda")
    torch.compile(forward, backend=backend, fullgraph=True)(params, token, cfg=tiny_cfg)
    gemvs = [t for t in targets if "int8_gemv" in t]
    # Every layer's q/k/v, wo, w1, w2, w3 and the output projection.
    assert len(gemvs) == 7 * tiny_cfg.n_layers + 1, targets
    expected = forward(dequantize(params), token, cfg=tiny_cfg)
    torch.testing.assert_close(forward(params, token, cfg=tiny_cfg), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("scheme, group_size", SCHEMES[:2], ids=SCHEME_IDS[:2])
def test_cuda_quantized_decode_records_one_cuda_graph_and_replays_it(tiny_cfg, scheme, group_size,
                                                                     batch_size):
    from fullgraph.checks.cudagraphs import assert_cudagraphs
    from fullgraph.model.generate import step_functions

    _, params = _on_cuda(tiny_cfg, scheme, group_size)
    cache = new_cache(tiny_cfg, batch_size=batch_size, dtype=torch.bfloat16, device="cuda")
    # Marks params and cache as static addresses, as generate does before compiling decode.
    step_functions(params, cache, compile=True, device=torch.device("cuda"))

    def decode(params, token, input_pos, cache):
        return decode_step(params, token, input_pos, cache, cfg=tiny_cfg, sdpa_backend="auto",
                           temperature=0.0, top_k=None)

    with torch.inference_mode():
        token = torch.tensor([[3], [4]][:batch_size], device="cuda")
        calls = ((params, token, torch.tensor([pos], device="cuda"), cache) for pos in range(32))
        report = assert_cudagraphs(decode, calls, max_recordings=1, max_memory_growth_mb=0)
    assert report.replays == 32 - report.warmups - len(report.recordings)


# --- bench and the fullgraph command ------------------------------------------------------------


def test_bench_counts_the_quantized_bytes():
    from fullgraph.model.bench import BenchSpec, run_bench

    runs = {scheme: run_bench(BenchSpec("tiny", device="cpu", dtype=torch.float32, prompt_len=4,
                                        new_tokens=4, compile=False, quantize=scheme,
                                        group_size=32 if scheme == "int4" else None),
                              bandwidth_gbps=10.0)
            for scheme in (None, "int8", "int4")}
    assert [(run.quantize, run.group_size) for run in runs.values()] == [(None, None), ("int8", None),
                                                                         ("int4", 32)]
    # fp32 weights: int8 reads a quarter of their bytes plus a scale per row, int4 an eighth plus
    # two per group; the embedding table and the cache stay.
    assert runs["int4"].bytes_per_token < runs["int8"].bytes_per_token < runs[None].bytes_per_token


@pytest.mark.parametrize("command", ["bench", "check"])
def test_group_size_without_int4_is_refused(command, capsys):
    from fullgraph.checks.cli import main

    assert main([command, "--quantize", "int8", "--group-size", "32"]) == 2
    assert f"fullgraph {command}: --group-size applies to --quantize int4 only" in capsys.readouterr().err


@pytest.mark.parametrize("scheme, group_size", SCHEMES[:2], ids=SCHEME_IDS[:2])
def test_check_rows_run_on_quantized_params(scheme, group_size):
    from fullgraph.checks.suite import CHECKS, build_target, run_checks

    target = build_target(quantize=scheme, group_size=group_size, backend="eager")
    assert target.label == f"tiny on cpu, float32, {scheme} weights, backend eager"
    rows = {"params match the config", "parity: forward vs ReferenceLlama", "graph breaks: training",
            "collectives: tensor-parallel forward", "graph breaks: decode"}
    results = run_checks(target, checks=[check for check in CHECKS if check[0] in rows])
    assert [r.name for r in results if not r.passed] == []
    details = {r.name: r.detail for r in results}
    assert details["graph breaks: training"].startswith(f"not applicable: {scheme} weights")
    assert details["collectives: tensor-parallel forward"].endswith("4 all-reduces, 0 breaks")
