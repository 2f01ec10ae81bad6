"""The paged KV cache: parity with the contiguous cache, one decode graph, the allocator, bad input.

Continuous batching is driven here the way a server would: a fixed number of batch slots, requests
prefilled alone as they arrive, one compiled decode step for every slot, pages reserved as
sequences grow and released when they finish.
"""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

from fullgraph.checks import (
    assert_cudagraphs,
    assert_no_graph_breaks,
    assert_recompiles_at_most,
    track_cudagraphs,
)
from fullgraph.model import (
    PageAllocator,
    PoolFullError,
    forward,
    generate,
    init_params,
    new_cache,
    new_paged_cache,
)
from fullgraph.model.generate import decode_step
from fullgraph.model.paged import MAX_SPLITS, NULL_PAGE, gather_pages, split_kv_attention

pytestmark = pytest.mark.usefixtures("highest_precision")

DECODE_OPTIONS = dict(sdpa_backend="auto", temperature=0.0, top_k=None)


def _shuffled_table(batch: int, pages: int, *, seed: int) -> torch.Tensor:
    """Every row `pages` distinct pages of a pool of 1 + batch * pages, in a random order."""
    order = torch.randperm(batch * pages, generator=torch.Generator().manual_seed(seed)) + 1
    return order.view(batch, pages).to(torch.int32)


@pytest.mark.parametrize("block_size", [1, 3, 16])
def test_paged_logits_equal_contiguous_for_shuffled_pages(tiny_cfg, tiny_params, block_size):
    batch, length, prompt = 2, 40, 24
    tokens = torch.randint(0, tiny_cfg.vocab_size, (batch, length))
    pages = -(-length // block_size)
    table = _shuffled_table(batch, pages, seed=block_size)
    paged = new_paged_cache(tiny_cfg, num_blocks=1 + batch * pages, block_size=block_size)
    contiguous = new_cache(tiny_cfg, batch_size=batch)
    with torch.inference_mode():
        steps = [(torch.arange(prompt), tokens[:, :prompt])]
        steps += [(torch.tensor([pos]), tokens[:, pos: pos + 1]) for pos in range(prompt, length)]
        for input_pos, chunk in steps:
            expected = forward(tiny_params, chunk, cfg=tiny_cfg, cache=contiguous, input_pos=input_pos)
            actual = forward(tiny_params, chunk, cfg=tiny_cfg, cache=paged, block_table=table,
                             input_pos=input_pos)
            torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_rows_at_different_positions_equal_each_row_alone(tiny_cfg, tiny_params):
    # Continuous batching: one decode step, each row at its own position in its own pages.
    lengths, block_size = [5, 17, 11], 4
    tokens = torch.randint(0, tiny_cfg.vocab_size, (3, 18))
    allocator = PageAllocator(16, block_size, max_blocks_per_seq=5)
    paged = new_paged_cache(tiny_cfg, num_blocks=16, block_size=block_size)
    expected = []
    with torch.inference_mode():
        for row, length in enumerate(lengths):
            allocator.reserve(row, length + 1)
            table = allocator.block_table([row])
            forward(tiny_params, tokens[row: row + 1, :length], cfg=tiny_cfg, cache=paged,
                    block_table=table, input_pos=torch.arange(length))
            alone = forward(tiny_params, tokens[row: row + 1, : length + 1], cfg=tiny_cfg)
            expected.append(alone[:, -1:])
        step_tokens = torch.stack([tokens[row, length] for row, length in enumerate(lengths)])
        actual = forward(tiny_params, step_tokens.view(3, 1), cfg=tiny_cfg, cache=paged,
                         block_table=allocator.block_table(range(3)),
                         input_pos=torch.tensor(lengths).view(3, 1))
    torch.testing.assert_close(actual, torch.cat(expected), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("pages", [5, MAX_SPLITS + 7], ids=["one page a split", "padded splits"])
def test_split_kv_attention_equals_sdpa_over_the_gathered_pages(pages, device):
    # On CUDA this is the triton kernel (kernels.py), on CPU the plain-torch splits.
    batch, heads, kv_heads, head_dim, block_size = 3, 4, 2, 8, 2
    generator = torch.Generator().manual_seed(pages)
    pool_rows = (1 + batch * pages) * block_size
    k_pool, v_pool = (torch.randn(pool_rows, kv_heads, head_dim, generator=generator) for _ in "kv")
    q = torch.randn(batch, heads, 1, head_dim, generator=generator)
    table = _shuffled_table(batch, pages, seed=pages)
    # First position, one inside the last page, and one mid-way, so some splits see nothing.
    positions = torch.tensor([[0], [pages * block_size - 1], [pages * block_size // 2]])
    k_pool, v_pool, q, table, positions = (t.to(device) for t in (k_pool, v_pool, q, table, positions))
    actual = split_kv_attention(q, k_pool, v_pool, table, positions, block_size=block_size)
    keys, values = (gather_pages(pool, table, block_size) for pool in (k_pool, v_pool))
    visible = torch.arange(keys.shape[2], device=device) <= positions[:, :, None]
    expected = F.scaled_dot_product_attention(q, keys, values, attn_mask=visible[:, None],
                                              enable_gqa=True)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_generate_on_the_paged_cache_equals_the_contiguous_cache(tiny_cfg, tiny_params):
    prompts = [[1, 5, 9], [7, 3, 3, 2, 8, 100, 42], [11, 12, 13, 14]]
    contiguous = generate(tiny_params, prompts, cfg=tiny_cfg, max_new_tokens=20, compile=False)
    paged = generate(tiny_params, prompts, cfg=tiny_cfg, max_new_tokens=20, compile=False,
                     cache="paged", block_size=4)
    assert paged == contiguous


def test_generate_names_an_unknown_cache(tiny_cfg, tiny_params):
    with pytest.raises(ValueError, match=r"cache must be one of \['contiguous', 'paged'\], got 'pages'"):
        generate(tiny_params, [[1]], cfg=tiny_cfg, max_new_tokens=2, cache="pages")


def _paged_decode_args(cfg, params, *, batch=2, pages=4, block_size=4):
    cache = new_paged_cache(cfg, num_blocks=1 + batch * pages, block_size=block_size)
    table = _shuffled_table(batch, pages, seed=0)
    return params, torch.tensor([[3], [4]]), torch.tensor([[5], [9]]), cache, table


def test_paged_prefill_and_decode_have_no_graph_breaks(tiny_cfg, tiny_params):
    params, token, positions, cache, table = _paged_decode_args(tiny_cfg, tiny_params)
    tokens = torch.randint(0, tiny_cfg.vocab_size, (2, 12))
    with torch.inference_mode():
        report = assert_no_graph_breaks(forward, params, tokens, cfg=tiny_cfg, cache=cache,
                                        block_table=table, input_pos=torch.arange(12))
        assert report.graph_count == 1
        report = assert_no_graph_breaks(decode_step, params, token, positions, cache,
                                        cfg=tiny_cfg, block_table=table, **DECODE_OPTIONS)
        assert report.graph_count == 1
        torch.compile(decode_step, fullgraph=True, backend="eager")(
            params, token, positions, cache, cfg=tiny_cfg, block_table=table, **DECODE_OPTIONS)


def _decode(params, token, positions, cache, table, cfg):
    return decode_step(params, token, positions, cache, cfg=cfg, block_table=table, **DECODE_OPTIONS)


def test_one_decode_graph_across_lengths_layouts_and_batch_compositions(tiny_cfg, tiny_params):
    params, token, _, cache, _ = _paged_decode_args(tiny_cfg, tiny_params, pages=8)
    idle = torch.full((8,), NULL_PAGE, dtype=torch.int32)

    def calls():
        for seed, positions in enumerate([[0, 0], [3, 17], [31, 8], [16, 0], [30, 31]]):
            table = _shuffled_table(2, 8, seed=seed)
            if seed == 3:  # the second slot idle, as between two requests
                table[1] = idle
            yield params, token, torch.tensor(positions).view(2, 1), cache, table, tiny_cfg

    with torch.inference_mode():
        report = assert_recompiles_at_most(_decode, calls(), 0)
    assert len(report.events) == 1


def test_a_new_length_per_call_recompiles_when_the_table_is_sized_by_it(tiny_cfg, tiny_params):
    # The failing direction of the test above: a table only as wide as the longest sequence
    # changes shape as sequences grow, and the checker names the recompiles.
    params, token, positions, cache, _ = _paged_decode_args(tiny_cfg, tiny_params, pages=8)
    calls = [(params, token, positions, cache, _shuffled_table(2, width, seed=0)[:, :width],
              tiny_cfg) for width in (3, 4, 5)]
    with torch.inference_mode(), pytest.raises(AssertionError, match="recompile"):
        assert_recompiles_at_most(_decode, calls, 0, dynamic=False)


class _Server:
    """Continuous batching over `slots` batch rows: requests join as slots free up."""

    def __init__(self, params, cfg, *, slots, num_blocks, block_size, max_blocks_per_seq,
                 device="cpu"):
        self.params, self.cfg, self.device = params, cfg, device
        self.allocator = PageAllocator(num_blocks, block_size, max_blocks_per_seq=max_blocks_per_seq)
        self.cache = new_paged_cache(cfg, num_blocks=num_blocks, block_size=block_size,
                                     device=device)
        self.slots: list[int | None] = [None] * slots
        self.outputs: dict[int, list[int]] = {}
        self.wanted: dict[int, int] = {}
        self.positions = torch.zeros(slots, 1, dtype=torch.long, device=device)
        self.tokens = torch.zeros(slots, 1, dtype=torch.long, device=device)
        self.steps = 0

    def admit(self, request: int, prompt: list[int], new_tokens: int) -> bool:
        """Prefill `prompt` alone into a free slot; False if no slot is free."""
        if None not in self.slots:
            return False
        slot = self.slots.index(None)
        self.allocator.reserve(request, len(prompt))
        logits = forward(self.params, torch.tensor([prompt], device=self.device), cfg=self.cfg,
                         cache=self.cache,
                         block_table=self.allocator.block_table([request], device=self.device),
                         input_pos=torch.arange(len(prompt), device=self.device))
        self.slots[slot], self.wanted[request] = request, new_tokens
        self.outputs[request] = [int(logits[0, -1].argmax())]
        self.tokens[slot, 0], self.positions[slot, 0] = self.outputs[request][-1], len(prompt)
        return True

    def serve(self, requests, *, step, min_steps=0) -> None:
        """Admit `requests` (prompt, new tokens) as slots free up, decoding with `step` until all
        are done and at least `min_steps` steps have run; idle slots keep stepping meanwhile."""
        self.step = step
        waiting = list(enumerate(requests))
        while waiting or any(slot is not None for slot in self.slots) or self.steps < min_steps:
            while waiting and self.admit(waiting[0][0], *waiting[0][1]):
                waiting.pop(0)
            self.decode()

    def decode(self) -> None:
        """One compiled step for every slot, then retire the requests that are done."""
        for slot, request in enumerate(self.slots):
            if request is not None:
                self.allocator.reserve(request, int(self.positions[slot]) + 1)
        table = self.allocator.block_table(self.slots, device=self.device)
        next_tokens = self.step(self.params, self.tokens, self.positions, self.cache, table,
                                self.cfg).tolist()
        self.steps += 1
        for slot, request in enumerate(self.slots):
            if request is None:
                continue
            self.outputs[request].append(int(next_tokens[slot]))
            self.tokens[slot, 0] = next_tokens[slot]
            self.positions[slot, 0] += 1
            if len(self.outputs[request]) == self.wanted[request]:
                self.allocator.release(request)
                self.slots[slot] = None


def _requests(cfg, count, *, seed=0):
    """(prompt, new tokens) pairs: prompts of 1 to 19 tokens, 2 to 23 new tokens."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, cfg.vocab_size, (int(n),), generator=generator).tolist(), int(m))
            for n, m in zip(torch.randint(1, 20, (count,), generator=generator),
                            torch.randint(2, 24, (count,), generator=generator))]


SERVER = dict(slots=3, num_blocks=34, block_size=4, max_blocks_per_seq=11)


def test_continuous_batching_matches_each_request_alone_with_flat_memory(tiny_cfg, tiny_params):
    cfg = dataclasses.replace(tiny_cfg, max_seq_len=64)
    requests = _requests(cfg, 10)
    counter = CompileCounter()
    server = _Server(tiny_params, cfg, **SERVER)
    pool = [t.data_ptr() for t in server.cache.tensors()]
    free_at_start = server.allocator.free_count
    with torch.inference_mode():
        server.serve(requests, step=torch.compile(_decode, fullgraph=True, backend=counter))
    assert counter.frame_count == 1
    assert [t.data_ptr() for t in server.cache.tensors()] == pool
    assert server.allocator.free_count == free_at_start
    for request, (prompt, new_tokens) in enumerate(requests):
        alone = generate(tiny_params, [prompt], cfg=cfg, max_new_tokens=new_tokens, compile=False)
        assert server.outputs[request] == alone[0], f"request {request}"


def test_allocator_hands_out_grows_releases_and_reuses_pages():
    allocator = PageAllocator(6, 4, max_blocks_per_seq=3)
    assert allocator.free_count == 5  # page 0 is the null page
    allocator.reserve("a", 5)
    allocator.reserve("b", 1)
    allocator.reserve("a", 8)  # still two pages
    assert allocator.pages("a") == (1, 2) and allocator.pages("b") == (3,)
    allocator.reserve("a", 9)
    assert allocator.pages("a") == (1, 2, 4)
    allocator.release("a")
    allocator.reserve("c", 12)
    assert set(allocator.pages("c")) <= {1, 2, 4, 5} and allocator.free_count == 1
    assert allocator.block_table(["b", None, "c"]).tolist() == [
        [3, NULL_PAGE, NULL_PAGE], [NULL_PAGE] * 3, list(allocator.pages("c"))]


def test_a_full_pool_is_named_and_changes_nothing():
    allocator = PageAllocator(4, 2, max_blocks_per_seq=8)
    allocator.reserve("a", 4)
    with pytest.raises(PoolFullError, match=r"page pool is full: sequence 'b' needs 2 more pages "
                                            r"of 2 positions for length 3, 1 of 3 are free"):
        allocator.reserve("b", 3)
    assert allocator.pages("a") == (1, 2) and allocator.pages("b") == () and allocator.free_count == 1
    with pytest.raises(ValueError, match="needs 9 pages, more than max_blocks_per_seq=8"):
        allocator.reserve("a", 17)
    with pytest.raises(KeyError, match="no sequence 'z' holds pages"):
        allocator.release("z")


@pytest.mark.parametrize(
    "bad, message",
    [
        ("page past the pool", r"block_table\[1, 2\] = 9 points past the pool of 9 pages"),
        ("longer than its pages", r"row 0 writes position 8, but block_table\[0, 2\] is the null "
                                  r"page: the sequence is longer than its pages"),
        ("past the table", r"input_pos of row 1 reaches 16, outside its block_table row of 4 "
                           r"pages of 4 positions"),
        ("no table", "a paged cache needs block_table"),
    ],
)
def test_bad_block_tables_are_named_and_leave_every_page_alone(tiny_cfg, tiny_params, bad, message):
    params, token, positions, cache, table = _paged_decode_args(tiny_cfg, tiny_params)
    for pool in cache.tensors():
        pool.normal_()
    before = [t.clone() for t in cache.tensors()]
    if bad == "page past the pool":
        table[1, 2] = cache.num_blocks
    elif bad == "longer than its pages":
        table[0, 2:] = NULL_PAGE
        positions = torch.tensor([[8], [3]])
    elif bad == "past the table":
        positions = torch.tensor([[2], [16]])
    with torch.inference_mode(), pytest.raises(ValueError, match=message):
        forward(params, token, cfg=tiny_cfg, cache=cache, input_pos=positions,
                block_table=None if bad == "no table" else table)
    assert all(torch.equal(a, b) for a, b in zip(cache.tensors(), before))


def test_idle_rows_write_only_the_null_page(tiny_cfg, tiny_params):
    params, token, positions, cache, table = _paged_decode_args(tiny_cfg, tiny_params)
    table[1] = NULL_PAGE
    before = [t.clone() for t in cache.tensors()]
    with torch.inference_mode():
        forward(params, token, cfg=tiny_cfg, cache=cache, input_pos=positions, block_table=table)
    block = cache.block_size
    written_row0 = int(table[0, 5 // block]) * block + 5 % block
    for pool, old in zip(cache.tensors(), before):
        changed = (pool != old).any(dim=(1, 2)).nonzero().flatten().tolist()
        assert changed == [NULL_PAGE * block + 9 % block, written_row0]


def test_flex_with_a_paged_cache_is_refused_by_name(tiny_cfg, tiny_params):
    params, token, positions, cache, table = _paged_decode_args(tiny_cfg, tiny_params)
    with pytest.raises(ValueError, match="sdpa_backend='flex' does not take a paged cache"):
        forward(params, token, cfg=tiny_cfg, cache=cache, input_pos=positions, block_table=table,
                sdpa_backend="flex")


@pytest.mark.parametrize("name, value", [("num_blocks", 1), ("block_size", 0), ("n_kv_heads", 2.0)])
def test_new_paged_cache_names_a_bad_size(tiny_cfg, name, value):
    sizes = dict(num_blocks=4, block_size=4, n_kv_heads=None) | {name: value}
    with pytest.raises(ValueError, match=f"new_paged_cache: {name} must be an int"):
        new_paged_cache(tiny_cfg, **sizes)


# -- CUDA: compiled with inductor, decode under CUDA graphs ---------------------------------------

def _cuda_params(cfg):
    params = init_params(cfg, device="cuda")
    for tensor in params.values():
        torch._dynamo.mark_static_address(tensor)
    return params


def _static(cache):
    # As generate does: the pool stays put, so CUDA graphs neither copy it nor refuse its writes.
    for tensor in cache.tensors():
        torch._dynamo.mark_static_address(tensor)
    return cache


@pytest.mark.gpu
def test_paged_decode_replays_one_cuda_graph_across_lengths_and_layouts(tiny_cfg):
    params = _cuda_params(tiny_cfg)
    cache = _static(new_paged_cache(tiny_cfg, num_blocks=17, block_size=4, device="cuda"))
    token = torch.tensor([[3], [4]], device="cuda")

    def calls():
        for step in range(64):
            table = _shuffled_table(2, 8, seed=step // 8).cuda()
            if step // 8 == 3:
                table[1] = NULL_PAGE
            positions = torch.tensor([[step // 2], [31 - step // 3]], device="cuda")
            yield params, token, positions, cache, table, tiny_cfg

    with torch.inference_mode():
        report = assert_cudagraphs(_decode, calls(), max_recordings=1, max_memory_growth_mb=0)
    assert report.replays == 64 - report.warmups - 1


@pytest.mark.gpu
def test_continuous_batching_under_cuda_graphs_for_1000_steps_keeps_memory_flat(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, max_seq_len=64)
    params = _cuda_params(cfg)
    # The longest prompt first, so that the prefills after the warm-up need no larger temporaries.
    requests = [(list(range(1, 20)), 8), *_requests(cfg, 400, seed=1)]
    server = _Server(params, cfg, **SERVER, device="cuda")
    _static(server.cache)
    pool = [t.data_ptr() for t in server.cache.tensors()]
    free_at_start = server.allocator.free_count
    step = torch.compile(_decode, fullgraph=True, mode="reduce-overhead")
    counters.clear()
    with torch.inference_mode(), track_cudagraphs() as tracker:
        server.serve(requests[:20], step=step, min_steps=100)
        torch.cuda.synchronize()
        warm = torch.cuda.max_memory_allocated()
        server.serve(requests[20:], step=step, min_steps=1000)
        torch.cuda.synchronize()
    assert server.steps >= 1000
    # Prefills of new prompt lengths may add a few temporaries; the decode steps add nothing.
    assert torch.cuda.max_memory_allocated() <= warm * 1.01, (warm, torch.cuda.max_memory_allocated())
    assert len(tracker.report().recordings) == 1 and counters["inductor"]["cudagraph_skips"] == 0
    assert [t.data_ptr() for t in server.cache.tensors()] == pool
    assert server.allocator.free_count == free_at_start
    # serve numbers requests from 0 in each call: these are the second call's first five.
    for request, (prompt, new_tokens) in enumerate(requests[20:25]):
        alone = generate(params, [prompt], cfg=cfg, max_new_tokens=new_tokens, compile=False)
        assert server.outputs[request] == alone[0], f"request {request}"


@pytest.mark.gpu
def test_compiled_paged_generate_on_cuda_equals_eager_contiguous(tiny_cfg):
    params = init_params(tiny_cfg, device="cuda")
    prompts = [[1, 5, 9], [7, 3, 3, 2, 8, 100, 42]]
    counters.clear()
    eager = generate(params, prompts, cfg=tiny_cfg, max_new_tokens=48, compile=False)
    paged = generate(params, prompts, cfg=tiny_cfg, max_new_tokens=48, cache="paged", block_size=8)
    assert paged == eager
    assert counters["inductor"]["cudagraph_skips"] == 0
