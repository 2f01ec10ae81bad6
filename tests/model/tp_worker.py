"""One rank of the tensor-parallel parity test, launched by test_tensor_parallel.py or torchrun.

    torchrun --nproc-per-node 2 tests/model/tp_worker.py SPEC.json OUT_DIR

SPEC.json holds the config, the tokens for forward, the prompts and max_new_tokens for generate,
the compile backend, the device type ("cpu" runs gloo, "cuda" one GPU per rank over NCCL), and
optionally a rank that should fail or hang. Each rank shards the same real
params, runs forward (eager, and compiled with fullgraph=True) and greedy generate (compile=False
and True), and saves the results to OUT_DIR/rank{r}.pt for the test to compare with the
single-process model.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import torch
import torch.distributed as dist

from fullgraph.model import LlamaConfig, forward, generate, init_params
from fullgraph.model.tensor_parallel import (
    backend_for,
    make_all_reduce,
    shard_params,
    teardown_process_group,
)

# The package re-exports the function under the module's name.
generate_module = importlib.import_module("fullgraph.model.generate")
# Written to OUT_DIR by the rank that hangs on purpose, once it hangs.
HANGING = "hanging"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("spec", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    spec = json.loads(args.spec.read_text())
    if int(os.environ["RANK"]) == spec.get("hang_rank"):
        # Lets the test check that a hung rank is named, with its output, and ended. The file
        # says it has begun to hang: the test's timeout counts from then, not from the imports.
        print(f"rank {os.environ['RANK']} hangs on purpose", flush=True)
        (args.out / HANGING).touch()
        time.sleep(3600)
    # Two cores are shared by every rank: one thread each avoids oversubscription.
    torch.set_num_threads(1)
    torch.set_float32_matmul_precision("highest")
    device = torch.device("cpu")
    if spec.get("device") == "cuda":
        device = torch.device(f"cuda:{os.environ['LOCAL_RANK']}")
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device))
    results = run(spec, device)
    torch.save(results, args.out / f"rank{dist.get_rank()}.pt")
    # Only on success: a rank that raised leaves its peers blocked in a collective, where a
    # collective teardown would hang; the launcher ends them instead.
    teardown_process_group()


def run(spec: dict, device: torch.device) -> dict:
    if dist.get_rank() == spec.get("fail_rank"):
        # Lets the test check that one rank's error reaches pytest instead of hanging the others.
        raise RuntimeError(f"rank {dist.get_rank()} failed on purpose")
    cfg = LlamaConfig(**spec["cfg"])
    shard = shard_params(init_params(cfg, seed=0), cfg, world_size=dist.get_world_size(),
                         rank=dist.get_rank())
    shard = {name: tensor.to(device) for name, tensor in shard.items()}
    all_reduce = make_all_reduce()
    tokens = torch.tensor(spec["tokens"], device=device)
    compiled = torch.compile(forward, fullgraph=True, backend=spec["backend"])
    options = dict(cfg=cfg, max_new_tokens=spec["max_new_tokens"], all_reduce=all_reduce)
    results = {
        "logits_eager": forward(shard, tokens, cfg=cfg, all_reduce=all_reduce).cpu(),
        "logits_compiled": compiled(shard, tokens, cfg=cfg, all_reduce=all_reduce).cpu(),
        "tokens_eager": generate(shard, spec["prompts"], compile=False, **options),
    }
    if device.type == "cuda":
        # The deployed path: inductor, and CUDA graphs for the decode step.
        results["tokens_compiled"] = generate(shard, spec["prompts"], compile=True, **options)
        return results
    # generate compiles its steps with inductor on CPU: over half a minute on two shared cores;
    # the same fullgraph step functions under a cheaper backend test the same tracing.
    with mock.patch.object(generate_module, "_compiled", _compiler(spec["backend"])):
        results["tokens_compiled"] = generate(shard, spec["prompts"], compile=True, **options)
    return results


def _compiler(backend: str) -> Callable:
    @functools.cache
    def compiled(fn: Callable, mode: str | None) -> Callable:
        return torch.compile(fn, fullgraph=True, mode=mode, backend=backend)

    return compiled


if __name__ == "__main__":
    main()
    # A gloo worker thread can still hold the last collective's tensors when the interpreter
    # shuts down, and releasing them then aborts the process (pytorch/pytorch#179291; about one
    # run in three with 4 ranks on 2 cores). The results are written: skip the shutdown.
    sys.stdout.flush()
    os._exit(0)
