"""Tensor-parallel greedy generation from random weights: a smoke test and a timing, per world size.

    python -m fullgraph.model.tp_generate --nproc 2                 # launches its ranks itself
    torchrun --nproc-per-node 2 -m fullgraph.model.tp_generate      # or under torchrun

Each rank materialises only its own shard (init_shard), so 70B shapes fit across GPUs, and fuses
its projections (fuse_projections_) as `fullgraph bench` does. Rank 0 prints each phase's time as
it ends, then the timing and the first row's tokens.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist

from .config import LlamaConfig
from .generate import generate
from .launch import launch_ranks, teardown_process_group
from .params import fuse_projections_
from .tensor_parallel import backend_for, init_shard, make_all_reduce

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Launch the ranks (0 if every rank succeeded, else 1), or run as one of them (0)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parse_args(argv)
    if "RANK" not in os.environ:
        return launch_ranks(__spec__.name, args.nproc, argv)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local_rank}" if args.device == "cuda" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device))
    _run(args, device)
    # Only on success: a rank that raised leaves its peers blocked in a collective, where a
    # collective teardown would hang; the launcher ends them instead.
    teardown_process_group()
    return 0


def _run(args: argparse.Namespace, device: torch.device) -> None:
    rank, world_size = dist.get_rank(), dist.get_world_size()
    cfg = LlamaConfig.from_name(args.config)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    _say(f"world_size={world_size} device={device.type} config={args.config} dtype={dtype}")
    start = time.perf_counter()
    params = init_shard(cfg, world_size=world_size, rank=rank, seed=args.seed, dtype=dtype,
                        device=device)
    fuse_projections_(params, cfg)
    _say(f"shard built in {time.perf_counter() - start:.1f} s")
    # Every rank must feed the same prompts to stay in lockstep through the collectives.
    torch.manual_seed(args.seed)
    prompts = torch.randint(cfg.vocab_size, (args.batch_size, args.prompt_len)).tolist()
    options = dict(cfg=cfg, max_new_tokens=args.max_new_tokens, compile=not args.no_compile,
                   all_reduce=make_all_reduce())
    start = time.perf_counter()
    generate(params, prompts, **options)  # warm-up: compiles prefill and decode
    _say(f"warm-up generation (compiles prefill and decode) took {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    tokens = generate(params, prompts, **options)
    elapsed = time.perf_counter() - start
    _say(f"{1000 * elapsed / args.max_new_tokens:.2f} ms/token, prefill included")
    _say(f"tokens[0]: {tokens[0]}")


def _say(line: str) -> None:
    # Rank 0 speaks for all, as it goes: a long compile then reads as progress, not as a hang.
    if dist.get_rank() == 0:
        print(line, flush=True)


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    # No abbreviations, so "--nproc" is the only spelling launch_ranks has to remove.
    parser = argparse.ArgumentParser(prog="python -m fullgraph.model.tp_generate",
                                     description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--nproc", type=int, default=2,
                        help="ranks to launch when not already a rank (default 2)")
    parser.add_argument("--config", default="tiny", choices=LlamaConfig.names())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=["cpu", "cuda"])
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--prompt-len", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-compile", action="store_true",
                        help="run eagerly (on CPU, compiling means inductor: slow to start)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    code = main()
    # A gloo worker thread can still hold the last collective's tensors when the interpreter
    # shuts down, and releasing them then aborts the process (pytorch/pytorch#179291). All
    # output is printed: skip the shutdown.
    sys.stdout.flush()
    os._exit(code)
