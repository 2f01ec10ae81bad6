"""The helpers the checkers share (checks/_frames.py, _dumps.py, _message.py, _args.py): which
frames are the user's, faulthandler's dumps, counted nouns, function names, backend names."""

import functools
import os

import pytest
import torch

from fullgraph.checks import _compat, _dumps
from fullgraph.checks._args import backend_name, check_callable
from fullgraph.checks._frames import CHECKS_DIR, innermost_user_frame, is_user_file, user_frame_in
from fullgraph.checks._message import counted, function_name

TORCH_FILE = os.path.join(_compat.TORCH_DIR, "_dynamo", "eval_frame.py")
# torchvision sits beside torch, and its name starts with torch's directory's.
SIBLING_FILE = os.path.join(os.path.dirname(_compat.TORCH_DIR), "torchvision", "ops", "boxes.py")


def test_torch_and_the_checkers_are_not_the_users_and_torchs_neighbours_are():
    assert not is_user_file(TORCH_FILE)
    assert not is_user_file(os.path.join(CHECKS_DIR, "graph_breaks.py"))
    assert is_user_file(__file__)
    assert is_user_file(SIBLING_FILE)


def test_code_made_from_a_string_is_the_users_but_has_no_line_to_show():
    assert is_user_file("<string>")
    assert not is_user_file("<string>", with_source=True)
    assert not is_user_file("<eval_with_key>.3", with_source=True)
    assert is_user_file(__file__, with_source=True)


def test_the_innermost_user_frame_skips_torch_and_string_code():
    frames = [(__file__, 1, "outer"), (__file__, 2, "inner"), (TORCH_FILE, 3, "torch_call"),
              ("<eval_with_key>.0", 4, "forward")]
    assert innermost_user_frame(frames).function == "forward"
    assert innermost_user_frame(frames, with_source=True).function == "inner"
    assert innermost_user_frame([(TORCH_FILE, 3, "torch_call")]) is None


def test_a_stack_torch_wrote_points_at_the_innermost_user_line_even_in_torchs_neighbour():
    text = (f'  File "{__file__}", line 7, in caller\n'
            f'  File "{SIBLING_FILE}", line 9, in nms\n'
            f'  File "{TORCH_FILE}", line 11, in _fn\n')
    found = user_frame_in(text)
    assert (found.filename, found.lineno, found.function) == (SIBLING_FILE, 9, "nms")
    assert user_frame_in(f'  File "{TORCH_FILE}", line 11, in _fn\n') is None


def test_counted_nouns():
    assert counted(1, "recompile") == "1 recompile"
    assert counted(0, "recompile") == "0 recompiles"
    assert counted(2, "other entry", "other entries") == "2 other entries"
    assert counted(1, "other entry", "other entries") == "1 other entry"


def forward(x, *, scale):
    return x * scale


def test_a_function_is_named_through_partials_and_a_module_by_its_forward():
    assert function_name(forward) == "forward"
    assert function_name(functools.partial(functools.partial(forward, scale=2))) == "forward"
    assert function_name(torch.nn.Linear(2, 2)) == "Linear.forward"
    assert function_name(len) == "len"


def test_a_non_callable_is_refused_naming_the_checker_and_the_argument():
    check_callable("find_graph_breaks", forward)
    with pytest.raises(TypeError, match="^find_graph_breaks: fn must be callable, got int$"):
        check_callable("find_graph_breaks", 3)
    with pytest.raises(TypeError, match="^target must be callable, got str$"):
        check_callable(None, "f", argument="target")


def test_a_backend_is_named_by_its_name_or_its_function():
    def my_backend(gm, example_inputs):
        return gm

    assert backend_name("aot_eager") == "aot_eager"
    assert backend_name(my_backend) == "my_backend"


# As faulthandler writes them: the thread the signal arrived on first, marked "Current".
DUMP = """Thread 0x00007f0000000002 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 324 in wait
  File "/usr/lib/python3.11/threading.py", line 995 in _bootstrap

Current thread 0x00007f0000000001 (most recent call first):
  File "/work/train.py", line 12 in step
  File "/work/train.py", line 30 in main

Extension modules: numpy.core._multiarray_umath, torch._C (total: 2)
"""


def test_a_dump_splits_into_threads_with_the_extension_modules_apart():
    head, stacks, tail = _dumps.threads(DUMP)
    assert head == "" and tail.startswith("Extension modules: numpy")
    assert [stack.splitlines()[0] for stack in stacks] == [
        "Thread 0x00007f0000000002 (most recent call first):",
        "Current thread 0x00007f0000000001 (most recent call first):"]
    assert _dumps.threads("Main thread (most recent call last):") == (
        "Main thread (most recent call last):", [], "")


def test_the_main_thread_goes_first_and_its_frames_read_outermost_first():
    ordered = _dumps.main_thread_first(DUMP)
    assert ordered.startswith("Current thread 0x00007f0000000001")
    assert ordered.index("Thread 0x00007f0000000002") < ordered.index("Extension modules")
    current = _dumps.threads(DUMP)[1][1]
    assert _dumps.frames(current) == [("/work/train.py", 30, "main"), ("/work/train.py", 12, "step")]
    # Without a current thread, the oldest (listed last) is the main thread.
    two = DUMP.replace("Current thread", "Thread")
    assert _dumps.main_thread_first(two).startswith("Thread 0x00007f0000000001")
