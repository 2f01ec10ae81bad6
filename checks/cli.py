"""The `fullgraph` command: `check` (the main job), `bench` and `env`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TextIO

from fullgraph.model import LlamaConfig

from .env import format_environment

__all__ = ["main"]

NAME_WIDTH = 36
DETAIL_WIDTH = 64


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fullgraph", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="run every check on the bundled reference Llama-2")
    check.add_argument("--config", default="tiny", choices=LlamaConfig.names())
    check.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    check.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    check.add_argument("--backend", default="inductor",
                       help="torch.compile backend for the compiled-parity check (default: inductor)")
    commands.add_parser("env", help="print the environment block")
    bench = commands.add_parser("bench", help="decode speed against the memory-bandwidth limit")
    bench.add_argument("--config", default="tiny", choices=LlamaConfig.names())
    bench.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    bench.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                       help="default: bfloat16 on cuda, float32 on cpu")
    bench.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default: 1)")
    bench.add_argument("--prompt-len", type=int, default=128)
    bench.add_argument("--new-tokens", type=int, default=256)
    bench.add_argument("--no-eager", action="store_true", help="skip the eager baseline")
    bench.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "env":
        print(format_environment())
        return 0
    if args.command == "bench":
        return _bench(args, out=sys.stdout)
    return _check(args, out=sys.stdout)


def _bench(args: argparse.Namespace, *, out: TextIO) -> int:
    import torch

    from fullgraph.model.bench import copy_bandwidth, run_bench

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    if args.prompt_len < 1 or args.new_tokens < 2 or min(args.batch) < 1:
        print("fullgraph bench: --prompt-len and --batch must be >= 1, --new-tokens >= 2", file=sys.stderr)
        return 2
    bandwidth = copy_bandwidth(device)
    print(f"fullgraph bench: {args.config}, {device}, {str(dtype).removeprefix('torch.')}, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens; copy bandwidth {bandwidth:,.0f} GB/s", file=out)
    print(f"{'batch':>5}  {'mode':<8}  {'ms/token':>9}  {'tokens/s':>9}  {'limit ms':>8}  "
          f"{'share':>5}  {'compile s':>9}  {'peak GB':>7}  {'speed-up':>8}", file=out)
    results = []
    for batch in args.batch:
        modes = [True] if args.no_eager else [True, False]
        runs = [run_bench(args.config, device=str(device), dtype=dtype, batch_size=batch,
                          prompt_len=args.prompt_len, new_tokens=args.new_tokens, compile=compiled,
                          bandwidth_gbps=bandwidth) for compiled in modes]
        for run in runs:
            speedup = runs[-1].ms_per_token / run.ms_per_token
            peak = "-" if run.peak_memory_gb is None else f"{run.peak_memory_gb:.1f}"
            print(f"{batch:>5}  {'compiled' if run.compiled else 'eager':<8}  {run.ms_per_token:>9.2f}  "
                  f"{run.tokens_per_s:>9.1f}  {run.limit_ms_per_token:>8.2f}  {run.share_of_limit:>5.2f}  "
                  f"{run.compile_s:>9.1f}  {peak:>7}  {speedup:>7.2f}x", file=out, flush=True)
        results.extend(runs)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_dict() for r in results], f, indent=2)
    return 0


def _check(args: argparse.Namespace, *, out: TextIO) -> int:
    from .suite import build_target, run_checks  # imports the model and torch's compiler stack

    start = time.perf_counter()
    try:
        target = build_target(config=args.config, device=args.device, dtype=args.dtype,
                              backend=args.backend)
    except ValueError as error:
        print(f"fullgraph check: {error}", file=sys.stderr)
        return 2
    print(f"fullgraph check: {target.label}", file=out)
    print(_row("check", "result", "detail", "time"), file=out)
    print(_row("-" * NAME_WIDTH, "------", "-" * DETAIL_WIDTH, "------"), file=out)

    def show(result) -> None:
        verdict = "pass" if result.passed else "FAIL"
        print(_row(result.name, verdict, result.detail, f"{result.seconds:5.1f}s"), file=out, flush=True)

    results = run_checks(target, on_result=show)
    failed = [r for r in results if not r.passed]
    for result in failed:
        print(f"\n== {result.name} ==\n{result.message}", file=out)
    total = time.perf_counter() - start
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed in {total:.1f}s", file=out)
    return 1 if failed else 0


def _row(name: str, result: str, detail: str, seconds: str) -> str:
    if len(detail) > DETAIL_WIDTH:
        detail = detail[: DETAIL_WIDTH - 3] + "..."
    return f"{name:<{NAME_WIDTH}}  {result:<6}  {detail:<{DETAIL_WIDTH}}  {seconds:>6}"


if __name__ == "__main__":
    sys.exit(main())
