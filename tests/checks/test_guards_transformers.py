"""diff_guards on model code nobody here wrote: transformers' Llama, built from a tiny config.

Its forward reaches Python builtins from several modules, and dynamo installs the builtins dict
under a new global name in each compile (`__builtins_dict___0`, then `__builtins_dict___2`):
hundreds of guards that only moved to another name, next to the one or two that changed.
"""

import pytest
import torch

from fullgraph.checks.guards import diff_guards, guards_of


@pytest.fixture(scope="module")
def llama():
    # Imported here, not at the top: importing transformers' Llama takes seconds, which every
    # xdist worker would pay while collecting, whether or not it runs these tests.
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).eval()


def _compiled_twice(model, first: dict, second: dict):
    compiled = torch.compile(model.forward, backend="eager")
    with torch.no_grad():
        compiled(**first)
        compiled(**second)
    return model.forward


def test_a_batch_size_change_diffs_to_the_size_and_its_range_guard(llama):
    forward = _compiled_twice(llama, {"input_ids": torch.zeros(1, 5, dtype=torch.long)},
                              {"input_ids": torch.zeros(2, 5, dtype=torch.long)})
    diff = diff_guards(0, 1, of=forward)
    assert [(c.source, c.before, c.after) for c in diff.changes] == [
        ("kwargs['input_ids'].size()[0]", "1", "dynamic"),
        ("2 <= kwargs['input_ids'].size()[0]", None, "guarded")]
    assert all(change.failed for change in diff.changes)
    first, _ = guards_of(forward)
    assert diff.shared == len(first.guards) - 1  # all but the input_ids tensor guard
    assert str(diff).startswith(f"guards of 0/0 -> 0/1: 2 differences, {diff.shared} guards "
                                f"the same\n  kwargs['input_ids'].size()[0]: 1 -> dynamic  "
                                f"(the guard that failed)")


def test_a_dtype_change_diffs_to_the_dtype_guard(llama):
    ids = torch.zeros(1, 5, dtype=torch.long)
    forward = _compiled_twice(
        llama, {"input_ids": ids, "attention_mask": torch.ones(1, 5, dtype=torch.long)},
        {"input_ids": ids, "attention_mask": torch.ones(1, 5, dtype=torch.int32)})
    diff = diff_guards(0, 1, of=forward)
    assert diff.summary() == ("kwargs['attention_mask'].dtype: torch.int64 -> torch.int32  "
                              "(the guard that failed)")
