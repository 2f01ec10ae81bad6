import dataclasses

import pytest
import torch
from torch_versions import per_torch

from fullgraph.checks import suite
from fullgraph.checks.parity import LOGIT_TOLERANCES
from fullgraph.model import init_params


@pytest.fixture(scope="module")
def target():
    # aot_eager, as in `fullgraph check --backend aot_eager`: the compiled-parity check runs
    # AOTAutograd, which eager would skip, at a fraction of inductor's compile time.
    return suite.build_target(backend="aot_eager")


# Generation compiles prefill and decode with inductor whatever the backend: an end-to-end
# inductor run, slow.
EVERY_CHECK = [pytest.param(name, check, marks=pytest.mark.slow)
               if check is suite.check_compiled_generation else (name, check)
               for name, check in suite.CHECKS]


@pytest.mark.parametrize("name, check", EVERY_CHECK)
def test_every_check_passes_on_the_reference_model(target, name, check):
    assert check(target)


def _breaks_in_the_middle(x):
    x = x + 1
    print("side effect")
    return x + 1


def _breaks_at_the_first_statement(x):
    print("side effect")
    return x + 1


@pytest.mark.parametrize("fn, headline", [
    (_breaks_in_the_middle, "1 graph break in _breaks_in_the_middle (limit 0)"),
    (_breaks_at_the_first_statement, "1 graph break in _breaks_at_the_first_statement (limit 0)"),
])
def test_a_graph_break_fails_its_check_with_the_reason(target, fn, headline):
    def check(t):
        return suite._assert_one_graph(fn, torch.ones(2))

    [result] = suite.run_checks(target, checks=[("graph breaks: print", check)])
    assert not result.passed
    assert result.detail == headline
    assert "test_suite.py" in result.message and 'print("side effect")' in result.message


def test_a_crashing_check_is_reported_and_the_rest_still_run(target):
    def crash(t):
        raise RuntimeError("boom")

    seen = []
    results = suite.run_checks(target, checks=[("crash", crash), ("params", suite.check_params_match_config)],
                               on_result=seen.append)
    assert [(r.name, r.passed) for r in results] == [("crash", False), ("params", True)]
    assert results[0].detail == "RuntimeError: boom"
    assert seen == results


def _generator(x):
    yield x + 1


def test_a_break_before_tracing_is_caught_by_fullgraph(target):
    def check(t):
        return suite._assert_one_graph(_generator, torch.ones(2))

    [result] = suite.run_checks(target, checks=[("graph breaks: generator", check)])
    assert not result.passed
    assert result.detail == "graph break under fullgraph=True (limit 0)"
    assert "Attempt to trace generator" in result.message


def _line_of(text):
    source = open(__file__).read().splitlines()
    return next(number for number, line in enumerate(source, 1) if line.strip().startswith(text))


STEPS_TAKEN = {"count": 0}


def _decode_that_recompiles(params, token, input_pos, cache, **options):
    # The counter's value is baked into the graph, so every call fails a guard on it.
    STEPS_TAKEN["count"] += 1
    return token.view(-1) + STEPS_TAKEN["count"]


# The line torch attributes the guard on STEPS_TAKEN["count"] to, from each release on: the one
# that changes the value, then the one that reads it into the graph.
STEPS_GUARD_LINE = per_torch({(2, 11): 'STEPS_TAKEN["count"] += 1',
                              (2, 14): 'return token.view(-1) + STEPS_TAKEN["count"]'})


def test_a_recompiling_decode_fails_its_check(target, monkeypatch):
    monkeypatch.setattr(suite, "decode_step", _decode_that_recompiles)
    [result] = suite.run_checks(target, checks=[("decode", suite.check_decode_compiles_once)])
    assert not result.passed
    assert result.detail == ("_decode_that_recompiles recompiled 8 times, more than the limit of 0 per "
                             "function; 1 hit torch._dynamo.config.recompile_limit and fell back to eager")
    line = _line_of(STEPS_GUARD_LINE)
    assert f"guarded at tests/checks/test_suite.py:{line} in _decode_that_recompiles" in result.message


def test_build_target_rejects_bad_arguments():
    with pytest.raises(ValueError, match="dtype must be one of"):
        suite.build_target(dtype="float8")
    with pytest.raises(ValueError, match="unknown config name 'huge'"):
        suite.build_target(config="huge")


def _prefill_that_specialises(params, tokens, input_pos, cache, cfg):
    # A loop bounded by the length bakes every length into its own graph.
    total = tokens[:, 0]
    for _ in range(int(input_pos.shape[0])):
        total = total + 1
    return total


def test_a_prefill_that_specialises_on_length_fails_its_check(target, monkeypatch):
    monkeypatch.setattr(suite, "_prefill", _prefill_that_specialises)
    [result] = suite.run_checks(target, checks=[("prefill", suite.check_prefill_recompiles)])
    assert not result.passed
    assert result.detail.startswith("_prefill_that_specialises recompiled 3 times, more than the limit of 1")


def _decode_with_a_counter(params, token, input_pos, cache, cfg):
    STEPS_TAKEN["count"] += 1
    return token + STEPS_TAKEN["count"]


def test_an_unstable_decode_guard_fails_its_check(target, monkeypatch):
    monkeypatch.setattr(suite, "_decode", _decode_with_a_counter)
    [result] = suite.run_checks(target, checks=[("guards", suite.check_decode_guards_are_stable)])
    assert not result.passed
    assert "STEPS_TAKEN" in result.message


def test_generation_check_accepts_near_ties_in_low_precision_and_rejects_real_differences(monkeypatch):
    target = suite.build_target(dtype="bfloat16", backend="eager")
    prompts = [target.tokens[0, :5].tolist(), target.tokens[1].tolist()]
    real_generate = suite.generate
    eager = real_generate(target.params, prompts, cfg=target.cfg, max_new_tokens=16, compile=False)
    assert suite._worst_greedy_gap(target, prompts, eager) < 0.08  # eager agrees with itself

    def generate_with(tokens):
        def fake(params, prompts, *, compile, **kwargs):
            return tokens if compile else real_generate(params, prompts, compile=False, **kwargs)
        return fake

    # A flip to eager's second-best last token is accepted when the gap is within tolerance.
    logits = suite.forward(target.params, torch.tensor([prompts[0] + eager[0][:-1]]), cfg=target.cfg)[0, -1]
    top2 = logits.topk(2)
    flipped = [row[:] for row in eager]
    flipped[0][-1] = top2.indices[1].item()
    gap = (top2.values[0] - top2.values[1]).item()
    monkeypatch.setattr(suite, "generate", generate_with(flipped))
    monkeypatch.setitem(LOGIT_TOLERANCES, torch.bfloat16, (gap * 1.01, 0.0))
    [result] = suite.run_checks(target, checks=[("generate", suite.check_compiled_generation)])
    assert result.passed and result.detail.startswith("tokens differ only at near-ties")
    monkeypatch.setitem(LOGIT_TOLERANCES, torch.bfloat16, (gap * 0.99, 0.0))
    [result] = suite.run_checks(target, checks=[("generate", suite.check_compiled_generation)])
    assert not result.passed

    # A token eager scores far below its best fails at the real tolerance.
    monkeypatch.undo()
    wrong = [row[:] for row in eager]
    wrong[0][-1] = logits.argmin().item()
    monkeypatch.setattr(suite, "generate", generate_with(wrong))
    [result] = suite.run_checks(target, checks=[("generate", suite.check_compiled_generation)])
    assert not result.passed
    assert result.detail.startswith("compiled greedy tokens differ from eager, and eager scores a compiled token")


_PAGED_DECODE_CALLS = suite._paged_decode_calls


def _tables_as_wide_as_the_longest_row(t, cache, token):
    # A table sized by the longest sequence changes shape as it grows: one recompile per width.
    for step, call in enumerate(_PAGED_DECODE_CALLS(t, cache, token)):
        params, token, positions, cache, table, cfg = call
        width = 1 + (suite.PROMPT_LEN + step) // suite.PAGE_SIZE
        yield params, token, positions, cache, table[:, :width], cfg


def test_a_paged_decode_that_recompiles_per_length_fails_its_check(target, monkeypatch):
    # One layer and 8 steps (the table widens at the fifth): the same recompile, at a fraction of
    # the tracing.
    cfg = dataclasses.replace(target.cfg, n_layers=1)
    target = dataclasses.replace(target, cfg=cfg, params=init_params(cfg))
    monkeypatch.setattr(suite, "DECODE_STEPS", 8)
    monkeypatch.setattr(suite, "_paged_decode_calls", _tables_as_wide_as_the_longest_row)
    [result] = suite.run_checks(target, checks=[("paged", suite.check_paged_decode_compiles_once)])
    assert not result.passed
    assert result.detail.startswith("_paged_decode recompiled 1 time, more than the limit of 0")
    assert "block_table" in result.message
