"""Tensor parallel: sharding rules, collectives traced into one graph, and parity with one process.

The parity test launches real ranks (gloo) through fullgraph.model.launch, as tp_generate does;
everything else runs in this process, with torch's fake process group standing in for world sizes
2, 4 and 8.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch._dynamo.testing import CompileCounter

from fullgraph.model import (
    LlamaConfig,
    check_params,
    forward,
    fuse_projections_,
    generate,
    init_params,
    new_cache,
)
from fullgraph.model.launch import rank_environments
from fullgraph.model.llama import attention, feed_forward, rope_tables
from fullgraph.model.tensor_parallel import (
    fake_process_group,
    init_shard,
    local_kv_heads,
    make_all_reduce,
    shard_params,
    shard_shapes,
    teardown_process_group,
)
from tp_worker import HANGING

WORKER = Path(__file__).with_name("tp_worker.py")
KILL_LAUNCHER = Path(__file__).with_name("kill_launcher.py")
TINY = LlamaConfig.from_name("tiny")  # 4 query heads, 2 KV heads, head_dim 16, ffn_dim 192
# 8 query heads over 2 KV heads: splits evenly for 2 ranks and replicates KV heads for 4 and 8.
WIDE = dataclasses.replace(TINY, n_heads=8, n_kv_heads=2)
# Dynamo's graph calls the op packet; graphs after AOT autograd call its overload.
ALL_REDUCE = torch.ops._c10d_functional.all_reduce


@pytest.fixture(params=[2, 4, 8], ids=lambda n: f"world{n}")
def fake_world(request: pytest.FixtureRequest) -> Iterator[int]:
    """World size of a fake process group, destroyed after the test so later tests see none."""
    with fake_process_group(request.param, rank=request.param - 1):
        yield request.param
    assert not dist.is_initialized()


# --- shapes and the replication rule ---------------------------------------------------------


def test_shard_shapes_split_heads_and_ffn() -> None:
    shapes = shard_shapes(TINY, world_size=2)
    assert shapes["layers.1.attention.wq.weight"] == (32, 64)  # 2 of 4 heads
    assert shapes["layers.1.attention.wk.weight"] == (16, 64)  # 1 of 2 KV heads
    assert shapes["layers.1.attention.wo.weight"] == (64, 32)
    assert shapes["layers.1.feed_forward.w1.weight"] == (96, 64)
    assert shapes["layers.1.feed_forward.w2.weight"] == (64, 96)
    assert shapes["output.weight"] == (256, 64)
    assert shapes["layers.0.ffn_norm.weight"] == (64,)


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_every_rank_matches_shard_shapes(world_size: int) -> None:
    params = init_params(TINY)
    for rank in range(world_size):
        shard = shard_params(params, TINY, world_size=world_size, rank=rank)
        check_params(shard, TINY, shapes=shard_shapes(TINY, world_size=world_size))


def test_kv_heads_replicate_when_world_exceeds_them() -> None:
    # 4 ranks, 2 KV heads: ranks 0 and 1 ask queries of KV head 0, ranks 2 and 3 of KV head 1.
    assert local_kv_heads(TINY, world_size=4) == 1
    params = init_params(TINY)
    wk, D = params["layers.0.attention.wk.weight"], TINY.head_dim
    for rank, kv_head in enumerate([0, 0, 1, 1]):
        shard = shard_params(params, TINY, world_size=4, rank=rank)
        torch.testing.assert_close(shard["layers.0.attention.wk.weight"],
                                   wk[kv_head * D:(kv_head + 1) * D], rtol=0, atol=0)


@pytest.mark.parametrize("world_size", [1, 2])
def test_shards_reassemble_the_full_weights(world_size: int) -> None:
    params = init_params(TINY)
    shards = [shard_params(params, TINY, world_size=world_size, rank=r) for r in range(world_size)]
    for name, dim in [("attention.wq.weight", 0), ("attention.wk.weight", 0),
                      ("attention.wo.weight", 1), ("feed_forward.w2.weight", 1),
                      ("feed_forward.w3.weight", 0)]:
        name = f"layers.1.{name}"
        whole = torch.cat([s[name] for s in shards], dim=dim)
        torch.testing.assert_close(whole, params[name], rtol=0, atol=0, msg=name)


def test_split_weights_are_contiguous_copies_and_replicated_ones_shared() -> None:
    params = init_params(TINY)
    shard = shard_params(params, TINY, world_size=2, rank=1)
    wo = shard["layers.0.attention.wo.weight"]
    assert wo.is_contiguous()
    assert wo.untyped_storage().data_ptr() != params["layers.0.attention.wo.weight"].data_ptr()
    assert shard["output.weight"] is params["output.weight"]


@pytest.mark.usefixtures("highest_precision")
@pytest.mark.parametrize("cfg, world_size", [(TINY, 2), (TINY, 4), (WIDE, 8)])
def test_partial_outputs_sum_to_the_full_layer(cfg: LlamaConfig, world_size: int) -> None:
    """What the all-reduce computes, done by hand: per-rank partial outputs add up exactly."""
    params = init_params(cfg)
    x = torch.randn(2, 5, cfg.dim, generator=torch.Generator().manual_seed(0))
    input_pos = torch.arange(5)
    cos, sin = rope_tables(input_pos, head_dim=cfg.head_dim, theta=cfg.rope_theta)
    kwargs = dict(prefix="layers.0", layer=0, cfg=cfg, cos=cos, sin=sin, input_pos=input_pos,
                  cache=None, sdpa_backend="math")
    shards = [shard_params(params, cfg, world_size=world_size, rank=r) for r in range(world_size)]
    torch.testing.assert_close(sum(attention(s, x, **kwargs) for s in shards),
                               attention(params, x, **kwargs), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sum(feed_forward(s, x, prefix="layers.0") for s in shards),
                               feed_forward(params, x, prefix="layers.0"), atol=1e-5, rtol=1e-5)
    # A rank fuses its own shard's projections; the partial outputs must not change.
    for shard in shards:
        fuse_projections_(shard, cfg)
    torch.testing.assert_close(sum(attention(s, x, **kwargs) for s in shards),
                               attention(params, x, **kwargs), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sum(feed_forward(s, x, prefix="layers.0") for s in shards),
                               feed_forward(params, x, prefix="layers.0"), atol=1e-5, rtol=1e-5)


def test_70b_shards_from_meta_params() -> None:
    cfg = LlamaConfig.from_name("llama2-70b")
    shard = shard_params(init_params(cfg, device="meta"), cfg, world_size=8, rank=7)
    check_params(shard, cfg, shapes=shard_shapes(cfg, world_size=8))
    assert shard["layers.79.attention.wk.weight"].shape == (128, 8192)  # one of 8 KV heads
    assert shard["layers.79.feed_forward.w1.weight"].shape == (3584, 8192)
    assert shard["layers.79.feed_forward.w1.weight"].is_meta


def test_init_shard_materialises_only_the_shard() -> None:
    shard = init_shard(TINY, world_size=2, rank=1, seed=3)
    check_params(shard, TINY, shapes=shard_shapes(TINY, world_size=2))
    assert not any(t.is_meta for t in shard.values())
    # Replicated weights agree with every other rank's and with the full model's.
    full = init_params(TINY, seed=3)
    torch.testing.assert_close(shard["tok_embeddings.weight"], full["tok_embeddings.weight"],
                               rtol=0, atol=0)
    # Row-parallel shards keep the full weight's scale although they see half its fan-in.
    w2 = "layers.0.feed_forward.w2.weight"
    torch.testing.assert_close(shard[w2].std(), full[w2].std(), rtol=0.05, atol=0)


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg, world_size, message", [
    (TINY, 3, r"LlamaConfig.n_heads \(4\) is not divisible by world_size \(3\)"),
    (dataclasses.replace(TINY, multiple_of=3), 2,
     r"LlamaConfig.ffn_dim \(171, .*\) is not divisible by world_size \(2\)"),
    (LlamaConfig(dim=96, n_layers=1, n_heads=12, n_kv_heads=4, vocab_size=32, multiple_of=48), 6,
     r"LlamaConfig.n_kv_heads \(4\) and world_size \(6\) must divide one another"),
    (TINY, 0, r"world_size must be a positive int, got 0"),
])
def test_indivisible_configs_are_rejected(cfg: LlamaConfig, world_size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        shard_shapes(cfg, world_size=world_size)


def test_bad_rank_and_bad_params_are_rejected() -> None:
    params = init_params(TINY, device="meta")
    with pytest.raises(ValueError, match=r"rank must be an int in \[0, 2\), got 2"):
        shard_params(params, TINY, world_size=2, rank=2)
    del params["norm.weight"]
    with pytest.raises(ValueError, match="missing norm.weight"):
        shard_params(params, TINY, world_size=2, rank=0)


def test_make_all_reduce_needs_a_process_group() -> None:
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="no process group"):
        make_all_reduce()


# --- tracing under the fake process group ----------------------------------------------------


def test_tp_forward_traces_to_one_graph_with_two_all_reduces_per_layer(fake_world: int) -> None:
    shard = shard_params(init_params(WIDE), WIDE, world_size=fake_world, rank=fake_world - 1)
    cache = new_cache(WIDE, batch_size=2, max_seq_len=16,
                      n_kv_heads=local_kv_heads(WIDE, world_size=fake_world))
    tokens, input_pos = torch.randint(WIDE.vocab_size, (2, 5)), torch.arange(5)
    explained = torch._dynamo.explain(forward)(shard, tokens, cfg=WIDE, input_pos=input_pos,
                                               cache=cache, all_reduce=make_all_reduce())
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    targets = [node.target for node in explained.graphs[0].graph.nodes]
    assert sum(t in (ALL_REDUCE, ALL_REDUCE.default) for t in targets) == 2 * WIDE.n_layers


def test_fake_process_group_runs_the_shard_eagerly(fake_world: int) -> None:
    # The fake group does not communicate, so only shapes are meaningful here.
    shard = shard_params(init_params(WIDE), WIDE, world_size=fake_world, rank=0)
    logits = forward(shard, torch.randint(WIDE.vocab_size, (1, 3)), cfg=WIDE,
                     all_reduce=make_all_reduce())
    assert logits.shape == (1, 3, WIDE.vocab_size)


# --- real ranks ------------------------------------------------------------------------------


def _ranks(run_python, spec: dict, tmp_path: Path, *, nproc: int, timeout: float = 120,
           timeout_from: Path | None = None) -> list[dict]:
    """Each rank's results; fails the test with the ranks' output if any rank fails or hangs."""
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    command = [str(WORKER), str(tmp_path / "spec.json"), str(tmp_path)]
    ranks = run_python(*[command] * nproc, timeout=timeout, env=rank_environments(nproc),
                       label="rank", timeout_from=timeout_from and str(timeout_from))
    failed = [rank for rank in ranks if rank.failed]
    if failed:
        pytest.fail("\n\n".join(f"rank {rank.index} exited with {rank.returncode}:\n{rank.output()}"
                                 for rank in failed), pytrace=False)
    return [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(nproc)]


def _spec(cfg: LlamaConfig, **extra: object) -> dict:
    tokens = torch.randint(cfg.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    # Prompts of unequal length: the longer one runs its tail through the decode step.
    return {"cfg": cfg.to_dict(), "tokens": tokens.tolist(),
            "prompts": [[1, 2, 3, 4, 5], [7, 8, 9]], "max_new_tokens": 8, "backend": "aot_eager",
            **extra}


@pytest.mark.usefixtures("highest_precision")
def test_world_2_matches_single_process(tmp_path: Path, run_python) -> None:
    _assert_world_2_matches_single_process(run_python, _spec(TINY), tmp_path, device="cpu")


@pytest.mark.gpu
@pytest.mark.usefixtures("highest_precision")
def test_world_2_over_nccl_matches_single_process(tmp_path: Path, run_python) -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    spec = _spec(TINY, device="cuda", backend="inductor")
    _assert_world_2_matches_single_process(run_python, spec, tmp_path, device="cuda", timeout=300)


def _assert_world_2_matches_single_process(run_python, spec: dict, tmp_path: Path, *, device: str,
                                           timeout: float = 120) -> None:
    """Logits (fp32, 1e-5) and greedy tokens of both ranks, eager and compiled, equal one process's."""
    params = {name: t.to(device) for name, t in init_params(TINY, seed=0).items()}
    expected_logits = forward(params, torch.tensor(spec["tokens"], device=device), cfg=TINY).cpu()
    expected_tokens = generate(params, spec["prompts"], cfg=TINY,
                               max_new_tokens=spec["max_new_tokens"], compile=False)
    for rank, results in enumerate(_ranks(run_python, spec, tmp_path, nproc=2, timeout=timeout)):
        for key in ("logits_eager", "logits_compiled"):
            torch.testing.assert_close(results[key], expected_logits, atol=1e-5, rtol=1e-5,
                                       msg=lambda m, k=key, r=rank: f"rank {r} {k}: {m}")
        for key in ("tokens_eager", "tokens_compiled"):
            assert results[key] == expected_tokens, f"rank {rank} {key}"


def test_a_failing_rank_fails_the_test_with_its_error(tmp_path: Path, run_python) -> None:
    with pytest.raises(pytest.fail.Exception, match="rank 1 failed on purpose"):
        _ranks(run_python, _spec(TINY, fail_rank=1), tmp_path, nproc=2)


def test_a_hanging_rank_fails_the_test_with_its_output_and_leaves_nothing_behind(
        tmp_path: Path, run_python, leftover_processes) -> None:
    # The timeout counts from when rank 1 has begun to hang, past its imports: a few seconds are
    # enough on a loaded machine, where counting from the start needed most of a minute.
    with pytest.raises(pytest.fail.Exception) as failed:
        _ranks(run_python, _spec(TINY, hang_rank=1), tmp_path, nproc=2, timeout=3,
               timeout_from=tmp_path / HANGING)
    message = str(failed.value)
    assert "rank 1 timed out after 3 s; its last output:\nrank 1 hangs on purpose\n" in message
    assert f'File "{WORKER}", line ' in message  # its stack, where it hangs
    assert leftover_processes() == {}


def test_teardown_frees_compiled_code_then_destroys_the_group() -> None:
    # Freeing compiled code (and the CUDA graphs it holds) first is what keeps NCCL's teardown
    # from hanging; on CPU, check the order's effects: nothing compiled is left, no group either.
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    counter = CompileCounter()
    compiled = torch.compile(lambda x: x + 1, backend=counter)
    compiled(torch.ones(2))
    teardown_process_group()
    assert not dist.is_initialized()
    compiled(torch.ones(2))
    assert counter.frame_count == 2


def test_fake_process_group_leaves_the_excepthook_as_it_was() -> None:
    before = sys.excepthook
    with fake_process_group(2):
        pass
    assert sys.excepthook is before


def test_tp_generate_reports_progress_from_rank_0_only(run_python) -> None:
    [done] = run_python(["-m", "fullgraph.model.tp_generate", "--nproc", "2", "--device", "cpu",
                         "--no-compile", "--max-new-tokens", "4"], timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert lines[0] == "world_size=2 device=cpu config=tiny dtype=torch.float32"
    assert lines[1].startswith("shard built in ")
    assert lines[2].startswith("warm-up generation (compiles prefill and decode) took ")
    assert lines[3].endswith("ms/token, prefill included")
    assert lines[4].startswith("tokens[0]: [") and len(lines) == 5


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_no_rank_outlives_a_killed_launcher(signum, run_python) -> None:
    # kill_launcher.py starts tp_generate's two-rank gloo run, kills the launcher as the ranks
    # start generating (over 10 s of work left), and watches them for 5 s.
    [driver] = run_python([str(KILL_LAUNCHER), str(int(signum))], timeout=240)
    assert driver.returncode == 0, driver.output()
    seen = json.loads(driver.stdout.splitlines()[-1])
    assert len(seen["alive_at_kill"]) == 2 and seen["launcher_returncode"] == -signum
    assert seen["alive_after"] == [], driver.output()
