import pytest
import torch

from fullgraph.model import generate

pytestmark = pytest.mark.usefixtures("highest_precision")

PROMPTS = [[1, 5, 9], [7, 3, 3, 2, 8, 100, 42], [11, 12, 13, 14]]


def test_batched_unequal_prompts_match_one_at_a_time(tiny_cfg, tiny_params):
    batched = generate(tiny_params, PROMPTS, cfg=tiny_cfg, max_new_tokens=12, compile=False)
    alone = [generate(tiny_params, [p], cfg=tiny_cfg, max_new_tokens=12, compile=False)[0] for p in PROMPTS]
    assert batched == alone
    assert [len(t) for t in batched] == [12, 12, 12]


def test_greedy_tokens_are_the_argmax_of_full_recompute(tiny_cfg, tiny_params):
    from fullgraph.model import forward

    prompt = PROMPTS[1]
    new = generate(tiny_params, [prompt], cfg=tiny_cfg, max_new_tokens=6, compile=False)[0]
    sequence = list(prompt)
    for token in new:
        logits = forward(tiny_params, torch.tensor([sequence]), cfg=tiny_cfg)
        assert logits[0, -1].argmax().item() == token
        sequence.append(token)


def test_generation_stops_at_eos(tiny_cfg, tiny_params):
    free = generate(tiny_params, PROMPTS, cfg=tiny_cfg, max_new_tokens=40, compile=False)
    eos = free[0][5]  # make the sixth token of the first row the end of sequence
    stopped = generate(tiny_params, PROMPTS, cfg=tiny_cfg, max_new_tokens=40, eos_id=eos, compile=False)
    assert stopped[0] == free[0][: free[0].index(eos)]
    for row, tokens in enumerate(free[1:], start=1):
        assert stopped[row] == (tokens[: tokens.index(eos)] if eos in tokens else tokens)


def test_sampling_is_reproducible_and_respects_top_k(tiny_cfg, tiny_params):
    def run():
        torch.manual_seed(123)
        return generate(tiny_params, PROMPTS, cfg=tiny_cfg, max_new_tokens=16, temperature=1.0,
                        top_k=1, compile=False)

    greedy = generate(tiny_params, PROMPTS, cfg=tiny_cfg, max_new_tokens=16, compile=False)
    assert run() == run() == greedy  # top_k=1 leaves only the argmax
    torch.manual_seed(0)
    hot = generate(tiny_params, PROMPTS, cfg=tiny_cfg, max_new_tokens=16, temperature=5.0, compile=False)
    assert hot != greedy


def test_zero_new_tokens(tiny_cfg, tiny_params):
    assert generate(tiny_params, PROMPTS, cfg=tiny_cfg, max_new_tokens=0) == [[], [], []]


@pytest.mark.parametrize(
    "prompts, kwargs, message",
    [
        ([], {}, "at least one non-empty prompt"),
        ([[1], []], {}, "at least one non-empty prompt"),
        ([[1, 256]], {}, r"prompt_tokens\[0\] holds ids outside \[0, 256\): \[256\]"),
        ([[1]], {"max_new_tokens": 600}, "exceeds cfg.max_seq_len=512"),
        ([[1]], {"max_new_tokens": -1}, "max_new_tokens must be a non-negative int"),
        ([[1]], {"temperature": -1.0}, "temperature must be >= 0"),
        ([[1]], {"top_k": 0}, "top_k must be a positive int"),
        ([[1]] * 9, {}, "more than cfg.max_batch_size=8"),
    ],
)
def test_bad_arguments_are_named(tiny_cfg, tiny_params, prompts, kwargs, message):
    kwargs = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(tiny_params, prompts, cfg=tiny_cfg, **kwargs)


@pytest.mark.slow
def test_compiled_greedy_generation_equals_eager(tiny_cfg, tiny_params):
    eager = generate(tiny_params, PROMPTS, cfg=tiny_cfg, max_new_tokens=20, compile=False)
    compiled = generate(tiny_params, PROMPTS, cfg=tiny_cfg, max_new_tokens=20, compile=True)
    assert compiled == eager
