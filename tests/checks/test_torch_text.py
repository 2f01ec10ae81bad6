"""torch's text that the _compat boundary reads, beyond the recorded guard failures, parsed.

Each message below is copied from torch's source (the format string, filled in) or printed by
torch, in the wording of every supported release that has it; the versions are noted beside it.
The parsers are plain text functions, so every release's wording is checked whichever torch runs
the tests.
"""

import pytest

from fullgraph.checks._compat import cudagraphs as torch_cudagraphs
from fullgraph.checks._compat import distributed as torch_distributed
from fullgraph.checks._compat import dynamo as torch_dynamo
from fullgraph.checks._compat import guard_failures as torch_guard_failures
from fullgraph.checks._compat import guards as torch_guards
from fullgraph.checks._compat import sdpa as torch_sdpa

# -- convert_frame's recompile-limit warning (torch/_dynamo/convert_frame.py, 2.11, 2.13, 2.15) --

LIMIT_WARNING = (
    "torch._dynamo hit config.recompile_limit (8)\n"
    "   function: 'scale' (/work/proj/model.py:12)\n"
    "   last reason: 0/7: n == 7\n"
    'To log all recompilation reasons, use TORCH_LOGS="recompiles".\n'
    "To diagnose recompilation issues, see https://pytorch.org/docs/main/"
    "torch.compiler_troubleshooting.html")


def test_the_recompile_limit_warning_names_the_limit_and_the_function():
    assert torch_guard_failures.limit_warning(LIMIT_WARNING) == torch_guard_failures.LimitWarning(
        limit="recompile_limit", value="8", function="scale", file="/work/proj/model.py", line=12)
    accumulated = LIMIT_WARNING.replace("config.recompile_limit (8)",
                                        "config.accumulated_recompile_limit (256)")
    assert torch_guard_failures.limit_warning(accumulated).limit == "accumulated_recompile_limit"


def test_other_convert_frame_messages_are_not_the_limit_warning():
    assert torch_guard_failures.limit_warning("Recompiling function scale in m.py:12") is None


# -- inductor's CUDA-graph skip messages (cudagraph_utils.py, cudagraph_trees.py, compile_fx.py,
#    output_code.py) --

SKIPS = [
    # (versions, message, kind)
    ("2.11-2.15", "skipping cudagraphs due to mutated inputs (1 instances). Found from : \n"
                  ' File "/work/proj/model.py", line 40, in step\n    cache.copy_(x)',
     "mutated inputs"),
    ("2.13-2.15", "skipping cudagraphs due to input storage mutation (1 instances). Found from:\n"
                  ' File "/work/proj/model.py", line 41, in step\n    x.set_(y)',
     "input storage mutation"),
    ("2.11-2.15", "skipping cudagraphs due to cpu device (arg1_1). Found from : \n"
                  ' File "/work/proj/model.py", line 42, in step\n    return x + pos',
     "CPU tensors"),
    ("2.11-2.15", "skipping cudagraphs due to multiple devices: cpu, cuda:0", "multiple devices"),
    ("2.11-2.15", "disabling cudagraphs due to incompatible op aten._local_scalar_dense.default "
                  'Found from  File "/work/proj/model.py", line 43, in step\n    x.item()\n',
     "incompatible op"),
    ("2.11-2.15", "graph with symbolic shapes inputs and "
                  "config.triton.cudagraph_skip_dynamic_graphs=True.", "dynamic shapes"),
    ("2.11-2.15", "skipping cudagraphs due to non-Tensor inputs", "non-tensor inputs"),
    ("2.11-2.15", "skipping cudagraph due to function 0 exceeding max re-recording limit (=50) on "
                  "cudagraph node None due to static input data pointer changed.",
     "re-record limit"),
    ("2.13-2.15", "skipping cudagraphs due to cudagraph capture requires the caching allocator; "
                  "current allocator is uncached", "caching allocator off"),
    ("none", "skipping cudagraphs due to a reason no torch gives yet", "other"),
]


@pytest.mark.parametrize("versions, text, kind", SKIPS, ids=[kind for _, _, kind in SKIPS])
def test_each_skip_message_has_its_kind(versions, text, kind):
    message, stack = torch_cudagraphs.split_skip_message(text)
    assert torch_cudagraphs.skip_kind(message) == kind
    assert "Found from" not in message and not message.endswith(".")
    assert ("model.py" in stack) == ("Found from" in text)


# -- ATen's SDPA errors and warnings, as torch 2.11.0, 2.13.0 and 2.15.0 printed them on CPU --

SDPA_WARNINGS = {
    "2.11": "Flash attention requires q,k,v to have the same last dimension. Got Query.size(-1): "
            "8, Key.size(-1): 16, Value.size(-1): 16 instead. (Triggered internally at "
            "/pytorch/aten/src/ATen/native/transformers/sdp_utils_cpp.cpp:21.)",
    "2.13": "Flash attention requires q,k,v to have the same last dimension. Got Query.size(-1): "
            "8, Key.size(-1): 16, Value.size(-1): 16 instead. (Triggered internally at "
            "/__w/pytorch/pytorch/aten/src/ATen/native/transformers/sdp_utils_cpp.cpp:21.)",
    "2.15": "Flash attention requires q,k,v to have the same last dimension. Got Query.size(-1): "
            "8, Key.size(-1): 16, Value.size(-1): 16 instead. (Triggered internally at "
            "/__w/pytorch/pytorch/aten/src/ATen/native/transformers/sdp_utils_cpp.cpp:23.)",
}


@pytest.mark.parametrize("version", sorted(SDPA_WARNINGS))
def test_an_aten_warning_loses_where_in_aten_it_was_raised(version):
    assert torch_sdpa.without_torch_source(SDPA_WARNINGS[version]) == (
        "Flash attention requires q,k,v to have the same last dimension. Got Query.size(-1): 8, "
        "Key.size(-1): 16, Value.size(-1): 16 instead.")


@pytest.mark.parametrize("text, no_kernel", [
    ("No available kernel.  Aborting execution.", True),  # 2.11-2.15, CUDA and CPU
    ("No viable backend for scaled_dot_product_attention was found.", True),  # 2.11-2.15
    ("Expected query, key, and value to have the same dtype", False),
])
def test_no_kernel_errors_are_told_from_other_errors(text, no_kernel):
    assert torch_sdpa.is_no_kernel_error(RuntimeError(text)) is no_kernel


@pytest.mark.parametrize("event, backend", [
    # Profiler events of one CPU call, the same in 2.11.0, 2.13.0 and 2.15.0.
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "flash"),
    ("aten::_scaled_dot_product_attention_math", "math"),
    ("aten::_safe_softmax", "math"),
    ("aten::scaled_dot_product_attention", None),  # the dispatcher, whatever kernel runs
    ("aten::softmax", None),
    # CUDA kernels' ops, from torch/_meta_registrations.py.
    ("aten::_scaled_dot_product_efficient_attention", "efficient"),
    ("aten::_efficient_attention_forward", "efficient"),
    ("aten::_scaled_dot_product_cudnn_attention", "cudnn"),
    ("aten::_flash_attention_forward", "flash"),
])
def test_profiler_events_name_their_sdpa_backend(event, backend):
    assert torch_sdpa.kernel_backend(event) == backend


# -- graph breaks about collectives (gb_types of torch/_dynamo/graph_break_registry.json) --

@pytest.mark.parametrize("text, collective", [
    ("async_op=True for distributed collectives", True),  # GB0172, 2.11-2.15
    ("torch.distributed package is not available!", True),  # GB0210, 2.11-2.15
    ("Attempted to call function marked as skipped\n  Explanation: ... ProcessGroup.rank", True),
    ("Unsupported method call\n  Explanation: Dynamo does not know how to trace Work.wait", True),
    ("Data-dependent branching", False),
    ("Unsupported Tensor.item() call with capture_scalar_outputs=False", False),
    ("Workspace allocation", False),
])
def test_breaks_about_collectives_are_recognised(text, collective):
    assert torch_distributed.mentions_collectives(text) is collective


# -- guard code (torch/_dynamo/guards.py get_tensor_guard_code_part, 2.11-2.15) --

CHECK_TENSOR = ("check_tensor(L['cache'].k, Tensor, DispatchKeySet(CPU, BackendSelect, "
                "ADInplaceOrView, AutogradCPU), torch.float32, device=None, requires_grad=False, "
                "size=[2, None, 64], stride=[None, 64, 1])")


def test_a_tensor_guard_gives_its_source_and_sizes():
    assert torch_guards.tensor_sizes(CHECK_TENSOR) == ("L['cache'].k", ["2", "None", "64"])
    assert torch_guards.tensor_sizes("L['n'] == 1") is None


@pytest.mark.parametrize("guard, bound", [
    ("2 <= L['x'].size()[0]", ">= 2"),
    ("2 < L['x'].size()[0]", "> 2"),
    ("L['x'].size()[0] <= 512", "<= 512"),
    ("L['x'].size()[0] < 512", "< 512"),
    ("L['y'].size()[0] == L['x'].size()[0]", None),
    ("2 <= L['x'].stride()[0]", None),
    ("2 <= L['xx'].size()[0]", None),
])
def test_a_size_bound_reads_as_a_limit_on_the_size(guard, bound):
    assert torch_guards.size_bound(guard, "L['x'].size()[0]") == bound


@pytest.mark.parametrize("text, named", [
    ("x.size()[0] >= 2 and <= 11", True),
    ("y.size()[0] x.size()[0]", True),
    ("cache.x.size()[0] >= 2", False),
    ("xx.size()[0] >= 2", False),
    ("x.size()[1] >= 2", False),
])
def test_a_failure_names_a_size_only_by_its_whole_path(text, named):
    assert torch_guards.names_size(text, "x", 0) is named


@pytest.mark.parametrize("source, origin", [
    ("G['COUNT']", "global"), ("self.steps", "module attribute"), ("x.size()[0]", "argument"),
])
def test_a_guard_source_says_what_it_watches(source, origin):
    assert torch_guards.source_origin(source) == origin


def test_an_argument_path_is_written_as_guard_code_writes_it():
    assert torch_guards.guard_source("tokens") == "L['tokens']"
    assert torch_guards.guard_source("cache.k[0]") == "L['cache'].k[0]"


# -- compile ids (torch/_guards.py CompileId, 2.11-2.15: "0/1", "!0/0/1" under compiled autograd) --

def test_compile_ids_sort_in_the_order_dynamo_made_them():
    ids = ["1/0", "0/10", "0/2", "!0/0/1"]
    assert sorted(ids, key=torch_dynamo.compile_order) == ["!0/0/1", "0/2", "0/10", "1/0"]
    assert torch_dynamo.frame_of_compile("3/2") == "3"
    assert torch_dynamo.frame_of_compile("!0/3/2") == "!0/3"
