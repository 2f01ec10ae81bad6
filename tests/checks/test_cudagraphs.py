import contextlib
import dataclasses
import json
import logging
import threading

import pytest
import torch

from fullgraph.checks import (
    CudaGraphError,
    CudaGraphReport,
    CudaGraphSkip,
    Recording,
    assert_cudagraphs,
    cudagraph_report,
    cudagraphs,
    suite,
    track_cudagraphs,
)
from fullgraph.checks._compat import cudagraphs as torch_cudagraphs
from fullgraph.checks._message import Frame
from fullgraph.model import forward, generate, init_params, new_cache
from fullgraph.model.generate import decode_step, step_functions

THIS_FILE = __file__
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
gpu = pytest.mark.gpu


def _line_of(text):
    source = open(THIS_FILE).read().splitlines()
    return next(number for number, line in enumerate(source, 1) if line.strip().startswith(text))


def _must_not_run(x):
    raise AssertionError("called without CUDA")


def _mutate(x, y):
    x.add_(y)
    return x * 2


def _mutate_static(x, y):
    # Not _mutate: torch 2.11 reuses a graph compiled with x not static from inductor's caches
    # when x is marked later, and goes on skipping it.
    x.add_(y)
    return x * 3


def _scale_by_cpu(x, scale):
    return x * scale.to(x.device)


def _grow(x):
    return torch.sin(x) * 2


def _double(x):
    return x * 2


# -- without CUDA: nothing runs ------------------------------------------------------------------

@no_cuda
def test_without_cuda_the_report_is_not_applicable_and_nothing_runs():
    report = cudagraph_report(_must_not_run, [torch.ones(2)] * 3)
    assert report.status == "not applicable" and not report.applicable
    assert (report.calls, report.recordings, report.skips, report.memory_growth_bytes) == (0, (), (), None)
    assert str(report) == ("_must_not_run: CUDA graphs not applicable: torch sees no CUDA device, "
                           "so nothing was compiled or run")
    assert json.loads(json.dumps(report.to_dict()))["status"] == "not applicable"


@no_cuda
def test_without_cuda_the_assertion_returns_the_not_applicable_report():
    report = assert_cudagraphs(_must_not_run, [torch.ones(2)], max_recordings=1)
    assert report.status == "not applicable"


@no_cuda
def test_the_suite_row_passes_as_not_applicable_on_cpu():
    target = suite.build_target(backend="eager")
    name, check = next(row for row in suite.CHECKS if row[0] == "cuda graphs: decode")
    [result] = suite.run_checks(target, checks=[(name, check)])
    assert result.passed
    assert result.detail == "not applicable: CUDA graphs need a CUDA device (target on cpu)"


# -- misuse ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, text", [
    (dict(fn=1), TypeError, "fn must be callable, got int"),
    (dict(inputs=torch.ones(2)), TypeError, "inputs must be an iterable of calls"),
    (dict(inputs=[]), ValueError, "inputs is empty"),
    (dict(warmup=-1), ValueError, "warmup must be >= 0"),
    (dict(warmup=1.5), TypeError, "warmup must be an int"),
    (dict(dynamic="yes"), TypeError, "dynamic must be None, True or False"),
])
def test_report_arguments_are_checked(kwargs, error, text):
    arguments = dict(fn=_double, inputs=[torch.ones(2)]) | kwargs
    with pytest.raises(error, match=text):
        cudagraph_report(arguments.pop("fn"), arguments.pop("inputs"), **arguments)


@pytest.mark.parametrize("kwargs, error, text", [
    (dict(max_recordings=0), ValueError, "max_recordings must be >= 1"),
    (dict(max_recordings=True), TypeError, "max_recordings must be an int"),
    (dict(max_memory_growth_mb="1"), TypeError, "max_memory_growth_mb must be a number, got str"),
    (dict(max_memory_growth_mb=-1), ValueError, "max_memory_growth_mb must be >= 0"),
    (dict(max_memory_growth_mb=float("nan")), ValueError, "max_memory_growth_mb must be >= 0"),
    (dict(allow_skips="no"), TypeError, "allow_skips must be True or False"),
    (dict(warmup=-2), ValueError, "warmup must be >= 0"),
])
def test_assertion_arguments_are_checked(kwargs, error, text):
    with pytest.raises(error, match=text):
        assert_cudagraphs(_must_not_run, [torch.ones(2)], **kwargs)


# -- torch's skip messages, as torch 2.11 and 2.13 word them ------------------------------------

def _found_from(function, line):
    return (f'. Found from : \n   File "{THIS_FILE}", line {_line_of(line)}, in {function}\n'
            f"    {line}\n")


@pytest.mark.parametrize("text, kind, first_line, function", [
    ("skipping cudagraphs due to mutated inputs (1 instances)" + _found_from("_mutate", "x.add_(y)"),
     "mutated inputs", "skipping cudagraphs due to mutated inputs (1 instances)", "_mutate"),
    ("skipping cudagraphs due to skipping cudagraphs due to cpu device (arg1_1)"
     + _found_from("_scale_by_cpu", "return x * scale.to(x.device)"),
     "CPU tensors", "skipping cudagraphs due to skipping cudagraphs due to cpu device (arg1_1)",
     "_scale_by_cpu"),
    ("skipping cudagraphs due to disabling cudagraphs due to incompatible op "
     f'aten._local_scalar_dense.default Found from   File "{THIS_FILE}", line '
     f'{_line_of("return torch.sin(x) * 2")}, in _grow\n    return torch.sin(x) * 2\n\n',
     "incompatible op", "skipping cudagraphs due to disabling cudagraphs due to incompatible op "
     "aten._local_scalar_dense.default", "_grow"),
    ("skipping cudagraphs due to graph with symbolic shapes inputs and "
     "config.triton.cudagraph_skip_dynamic_graphs=True.\n", "dynamic shapes",
     "skipping cudagraphs due to graph with symbolic shapes inputs and "
     "config.triton.cudagraph_skip_dynamic_graphs=True", None),
    ("skipping cudagraph due to function 0 exceeding max re-recording limit (=128) on cudagraph "
     "node 3 due to static input data pointer changed.", "re-record limit",
     "skipping cudagraph due to function 0 exceeding max re-recording limit (=128) on cudagraph "
     "node 3 due to static input data pointer changed", None),
    ("skipping cudagraphs due to bisector", "other", "skipping cudagraphs due to bisector", None),
])
def test_skip_messages_are_classified_with_the_user_line(text, kind, first_line, function):
    skip = cudagraphs.parse_skip(text)
    assert (skip.kind, skip.message, skip.text) == (kind, first_line, text)
    assert (skip.where.function if skip.where else None) == function
    if function is not None:
        assert skip.where.filename == THIS_FILE and skip.where.line in text


# -- the failure message ---------------------------------------------------------------------------

def _report(**changes):
    fields = dict(function="decode", status="applied", recordings=(), replays=0, warmups=0,
                  eager_runs=0, skips=(), skip_count=0, calls=12, warmup=2, memory_growth_bytes=0)
    return CudaGraphReport(**(fields | changes))


def _fail(report, **limits):
    options = dict(max_recordings=1, max_memory_growth_mb=0.0, allow_skips=False, msg=None) | limits
    with pytest.raises(CudaGraphError) as failure:
        cudagraphs._raise_if_failing(report, **options)
    assert failure.value.report is report
    return str(failure.value)


def test_a_skip_fails_with_its_reason_line_and_hint():
    where = Frame.at(THIS_FILE, _line_of("x.add_(y)"), "_mutate")
    skip = CudaGraphSkip("mutated inputs", "skipping cudagraphs due to mutated inputs (1 instances)",
                         where, "")
    message = _fail(_report(function="_mutate", status="skipped", skips=(skip,), skip_count=1,
                            eager_runs=12, calls=12))
    assert message == (
        "1 CUDA-graph skip in _mutate (limit 0); no CUDA graph recorded in 12 calls (limit: at least 1)\n"
        f"  1. tests/checks/test_cudagraphs.py:{_line_of('x.add_(y)')} in _mutate: skipped, mutated inputs\n"
        "       x.add_(y)\n"
        "       skipping cudagraphs due to mutated inputs (1 instances)\n"
        "Hint: " + cudagraphs._SKIP_HINTS["mutated inputs"])
    assert "torch._dynamo.mark_static_address" in message


def test_too_many_recordings_and_memory_growth_fail_with_each_recording():
    recordings = tuple(Recording(graph_id=n, compile_id="0/1", inputs=(16 + n, (16 + n,)),
                                 memory_bytes=2 * cudagraphs.MIB, replays=1, call=2 * n + 2)
                       for n in range(12))
    message = _fail(_report(function="_grow", recordings=recordings, replays=12, warmups=12,
                            calls=36, memory_growth_bytes=22 * cudagraphs.MIB),
                    max_recordings=4, max_memory_growth_mb=1)
    lines = message.splitlines()
    assert lines[0] == ("12 CUDA-graph recordings of _grow, more than the limit of 4; memory grew by "
                        "22.0 MiB after warmup, more than the limit of 1 MiB")
    assert lines[1:3] == ["  1. recording at call 2: inputs 16, (16,)", "       2.0 MiB pool, 1 replay"]
    assert lines[21:23] == ["  11. and 2 more recordings, 4.0 MiB pool",
                            "  12. memory: +22.0 MiB reserved between call 2 and call 36"]
    assert lines[23].startswith("Hint: Each distinct input shape records a graph of its own")
    assert "pad lengths to a few buckets" in lines[23]


def test_a_report_with_nothing_recorded_fails_and_within_limits_passes():
    message = _fail(_report(warmups=3, calls=3))
    assert message.splitlines()[0] == "no CUDA graph recorded in 3 calls (limit: at least 1)"
    assert "call it at least twice with the same shapes" in message
    one = Recording(0, "0/0", ((2, 1),), 0, 10, 2)
    cudagraphs._raise_if_failing(_report(recordings=(one,), replays=10, warmups=1), max_recordings=1,
                                 max_memory_growth_mb=0, allow_skips=False, msg=None)
    assert "wrapped" in _fail(_report(warmups=3), msg="wrapped").splitlines()[0]


def test_a_report_prints_each_recording_and_skip():
    recording = Recording(0, "0/0", ((2, 1), (1,)), 2 * cudagraphs.MIB, 98, 2)
    skip = CudaGraphSkip(cudagraphs.NOT_ON_CUDA, "1 graph skipped without a message", None, "")
    report = _report(status="partly skipped", recordings=(recording,), replays=98, warmups=1,
                     skips=(skip,), skip_count=1, calls=100, overwritten_outputs=97)
    assert str(report) == (
        "decode: CUDA graphs partly skipped over 100 calls: 1 recording, 98 replays, 1 warmup, "
        "0 eager runs, 1 skip; memory +0.0 MiB after 2 warmup calls\n"
        "  recording 1 at call 2: inputs (2, 1), (1,); 2.0 MiB pool, 98 replays\n"
        "  skipped, not on CUDA: 1 graph skipped without a message\n"
        "  97 calls returned outputs in the memory of the previous call's: clone what you keep")
    assert report.graph_runs == 100
    assert report.recordings_by_inputs() == {((2, 1), (1,)): 1}
    assert json.loads(json.dumps(report.to_dict()))["recordings"][0]["inputs"] == [[2, 1], [1]]


# -- the tracker leaves torch as it found it -------------------------------------------------------

def _tree_methods():
    manager = torch_cudagraphs._tree_manager_class()
    return {name: getattr(manager, name) for name in torch_cudagraphs._TREE_METHODS}


def test_tracking_patches_cudagraph_trees_only_inside_the_block():
    before = _tree_methods()
    logger = logging.getLogger(torch_cudagraphs.CUDAGRAPH_LOGGER)
    handlers, level = list(logger.handlers), logger.level
    with track_cudagraphs() as outer:
        inside = _tree_methods()
        with track_cudagraphs():  # nested: one patch serves both
            assert _tree_methods() == inside
        assert _tree_methods() == inside != before
    assert _tree_methods() == before
    assert (logger.handlers, logger.level) == (handlers, level)
    assert outer.report() is outer.report()  # final: the same frozen report
    assert outer.report().calls is None


def test_tracking_on_one_thread_does_not_hold_up_tracking_on_another():
    before = _tree_methods()
    entered = threading.Event()

    def track_elsewhere():
        with track_cudagraphs():
            entered.set()

    with track_cudagraphs():
        worker = threading.Thread(target=track_elsewhere)
        worker.start()
        worker.join(timeout=60)
        assert entered.is_set(), "the second thread waited for the first thread's block"
        assert _tree_methods() != before  # still patched for the block that is open
    assert _tree_methods() == before


def test_a_graph_on_the_cpu_is_counted_as_a_skip_without_a_message():
    compiled = torch.compile(_double, mode="reduce-overhead")
    with track_cudagraphs() as seen:
        for _ in range(3):
            compiled(torch.ones(3))
    report = seen.report()
    assert [skip.kind for skip in report.skips] == [cudagraphs.NOT_ON_CUDA]
    assert report.skips[0].message == ("1 graph skipped without a message: inductor counts a graph "
                                       "with no CUDA tensor this way")
    assert (report.skip_count, report.recordings, report.graph_runs) == (1, (), 0)
    assert report.status == ("skipped" if torch.cuda.is_available() else "not applicable")


# -- on a GPU: both directions ---------------------------------------------------------------------

@gpu
def test_an_input_mutated_in_place_is_skipped_with_torchs_reason():
    x, y = torch.zeros(8, device="cuda"), torch.ones(8, device="cuda")
    report = cudagraph_report(_mutate, [(x, y)] * 4)
    assert report.status == "skipped", str(report)
    assert (report.recordings, report.replays, report.eager_runs) == ((), 0, 4)
    [skip] = report.skips
    assert skip.kind == "mutated inputs"
    assert skip.message.startswith("skipping cudagraphs due to mutated inputs")
    assert (skip.where.filename, skip.where.lineno) == (THIS_FILE, _line_of("x.add_(y)"))
    with pytest.raises(CudaGraphError) as failure:
        assert_cudagraphs(_mutate, [(x, y)] * 4)
    assert str(failure.value).startswith("1 CUDA-graph skip in _mutate (limit 0); no CUDA graph recorded")
    assert "mark_static_address" in str(failure.value)


@gpu
def test_an_input_marked_static_may_be_mutated_and_is_recorded_once():
    x, y = torch.zeros(8, device="cuda"), torch.ones(8, device="cuda")
    torch._dynamo.mark_static_address(x)
    report = assert_cudagraphs(_mutate_static, [(x, y)] * 4)
    assert (len(report.recordings), report.replays, report.warmups, report.skips) == (1, 2, 1, ())
    assert torch.equal(x, torch.full_like(x, 4.0))  # each call added once, recording included


@gpu
def test_a_graph_of_cpu_tensors_is_skipped():
    report = cudagraph_report(_double, [torch.ones(4)] * 3)
    assert report.status == "skipped"
    assert [skip.kind for skip in report.skips] == [cudagraphs.NOT_ON_CUDA]
    assert (report.recordings, report.graph_runs) == ((), 0)


def _without_graph_partition():
    # Graph partition (on by default since torch 2.9) runs CPU ops outside the CUDA graphs instead
    # of skipping the whole graph; without it, a CPU input skips the graph.
    config = torch._inductor.config
    if not hasattr(config, "graph_partition"):
        return contextlib.nullcontext()
    return config.patch(graph_partition=False)


@gpu
def test_a_cpu_tensor_input_skips_the_graph_with_torchs_reason():
    calls = [(torch.ones(4, device="cuda"), torch.full((4,), 2.0))] * 3
    with _without_graph_partition():
        report = cudagraph_report(_scale_by_cpu, calls)
    [skip] = report.skips
    assert skip.kind == "CPU tensors" and "cpu device" in skip.message, str(report)
    assert skip.where.lineno == _line_of("return x * scale.to(x.device)")
    assert report.recordings == ()
    with pytest.raises(CudaGraphError, match="Move every tensor the graph reads to the GPU"):
        with _without_graph_partition():
            assert_cudagraphs(_scale_by_cpu, calls)


@gpu
def test_a_sweep_of_lengths_records_one_graph_each_and_fails_the_bound():
    lengths = range(16, 26)
    calls = [torch.ones(length, device="cuda") for length in lengths for _ in range(3)]
    with pytest.raises(CudaGraphError) as failure:
        assert_cudagraphs(_grow, calls, max_recordings=4, max_memory_growth_mb=1024)
    report = failure.value.report
    assert len(report.recordings) == len(lengths), str(report)
    by_inputs = report.recordings_by_inputs()
    assert list(by_inputs.values()) == [1] * len(lengths)
    assert [next(v for v in key if isinstance(v, tuple)) for key in by_inputs] == [(n,) for n in lengths]
    assert (report.warmups, report.replays, report.skips) == (len(lengths), len(lengths), ())
    message = str(failure.value)
    assert message.startswith(f"{len(lengths)} CUDA-graph recordings of _grow, more than the limit of 4\n")
    assert "pad lengths to a few buckets" in message


@gpu
def test_replays_overwrite_the_outputs_of_earlier_calls():
    double = torch.compile(_double, mode="reduce-overhead")
    for _ in range(2):  # warmup, then recording
        double(torch.ones(4, device="cuda"))
    first = double(torch.full((4,), 2.0, device="cuda"))
    second = double(torch.full((4,), 3.0, device="cuda"))
    try:
        overwritten = torch.equal(first, second)
    except RuntimeError as error:  # torch may also refuse to read an overwritten output
        overwritten = "overwritten by a subsequent run" in str(error)
    assert overwritten
    kept = double(torch.full((4,), 2.0, device="cuda")).clone()
    double(torch.full((4,), 3.0, device="cuda"))
    assert torch.equal(kept, torch.full((4,), 4.0, device="cuda"))
    report = cudagraph_report(_double, [torch.full((4,), float(n), device="cuda") for n in range(6)])
    assert report.overwritten_outputs >= 3, str(report)


# -- the reference model on a GPU --------------------------------------------------------------

def _decode(params, token, input_pos, cache, cfg):
    return decode_step(params, token, input_pos, cache, cfg=cfg, sdpa_backend="auto",
                       temperature=0.0, top_k=None)


@gpu
def test_reference_decode_records_once_and_replays_every_position_in_flat_memory(tiny_cfg):
    positions = 500
    cfg = dataclasses.replace(tiny_cfg, max_seq_len=520)
    params = init_params(cfg, device="cuda")
    cache = new_cache(cfg, batch_size=2, device="cuda")
    step_functions(params, cache, compile=True, device=torch.device("cuda"))  # marks them static
    with torch.inference_mode():
        token = torch.randint(0, cfg.vocab_size, (2, 1), device="cuda")
        calls = ((params, token, torch.tensor([pos], device="cuda"), cache, cfg)
                 for pos in range(positions))
        report = assert_cudagraphs(_decode, calls, max_recordings=1, max_memory_growth_mb=0)
    [recording] = report.recordings
    # The token and the position, in whichever order the compiled graph takes its inputs.
    assert sorted(recording.inputs) == [(1,), (2, 1)] and recording.call == 2
    assert recording.memory_bytes > 0  # its warmup and recording, in the private pool
    assert (report.calls, report.warmups, report.eager_runs) == (positions, 1, 0)
    assert report.replays == recording.replays == positions - 2
    assert (report.skips, report.memory_growth_bytes) == ((), 0)


def _bucket(length, multiple=64):
    return -(-length // multiple) * multiple


def _prefill_at(params, tokens, input_pos, last, cache, cfg):
    # Padding after the prompt changes nothing before it (attention is causal): read the last
    # prompt position, not the last padded one.
    logits = forward(params, tokens, cfg=cfg, input_pos=input_pos, cache=cache)
    return logits.index_select(1, last).argmax(dim=-1)


def _prefill_calls(params, cache, cfg, lengths, *, bucket):
    for length in lengths:
        padded = _bucket(length) if bucket else length
        tokens = torch.randint(1, cfg.vocab_size, (2, padded), device="cuda")
        for _ in range(2):  # warmup, then recording, for each new shape
            yield (params, tokens, torch.arange(padded, device="cuda"),
                   torch.tensor([length - 1], device="cuda"), cache, cfg)


@gpu
def test_prefill_records_one_graph_per_length_and_one_per_bucket(tiny_cfg):
    lengths = [5, 9, 17, 33, 47, 60, 70, 100]
    params = init_params(tiny_cfg, device="cuda")
    cache = new_cache(tiny_cfg, batch_size=2, device="cuda")
    step_functions(params, cache, compile=True, device=torch.device("cuda"))
    with torch.inference_mode():
        with pytest.raises(CudaGraphError) as failure:
            assert_cudagraphs(_prefill_at, _prefill_calls(params, cache, tiny_cfg, lengths, bucket=False),
                              max_recordings=2, max_memory_growth_mb=1024)
        per_length = failure.value.report
        bucketed = assert_cudagraphs(_prefill_at,
                                     _prefill_calls(params, cache, tiny_cfg, lengths, bucket=True),
                                     max_recordings=2, max_memory_growth_mb=1024)
    assert len(per_length.recordings) == len(lengths), str(per_length)
    assert [recording.call for recording in per_length.recordings] == [2 * n + 2 for n in range(len(lengths))]
    assert len(bucketed.recordings) == 2 and bucketed.skips == (), str(bucketed)
    assert sorted({_bucket(n) for n in lengths}) == [64, 128]


@gpu
def test_a_padded_prefill_samples_what_the_unpadded_one_does(tiny_cfg):
    params = init_params(tiny_cfg, device="cuda")
    with torch.inference_mode():
        tokens = torch.randint(1, tiny_cfg.vocab_size, (2, 47), device="cuda")
        padded = torch.cat([tokens, torch.zeros((2, 64 - 47), dtype=tokens.dtype, device="cuda")], 1)
        last = torch.tensor([46], device="cuda")
        outputs = [_prefill_at(params, t, torch.arange(t.shape[1], device="cuda"), last,
                               new_cache(tiny_cfg, batch_size=2, device="cuda"), tiny_cfg)
                   for t in (tokens, padded)]
    assert torch.equal(*outputs)


@gpu
def test_tracking_generate_sees_one_decode_recording_and_no_skip(tiny_cfg):
    params = init_params(tiny_cfg, device="cuda")
    with track_cudagraphs() as seen:
        generate(params, [[1, 5, 9], [7, 3, 3, 2, 8, 100, 42]], cfg=tiny_cfg, max_new_tokens=32)
    report = seen.report()
    assert len(report.recordings) == 1 and report.skip_count == 0, str(report)
    assert (report.warmups, report.eager_runs) == (1, 0)
    assert report.replays == report.graph_runs - 2 > 0


@gpu
def test_the_suite_row_passes_on_cuda():
    target = suite.build_target(device="cuda")
    [result] = suite.run_checks(target, checks=[r for r in suite.CHECKS if r[0] == "cuda graphs: decode"])
    assert result.passed, result.message
    assert result.detail.startswith(f"1 recording, {suite.DECODE_STEPS - 2} replays for "
                                    f"{suite.DECODE_STEPS} positions, 0 skips")
