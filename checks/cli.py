"""The `fullgraph` command: `check` (the main job) and `env`."""

from __future__ import annotations

import argparse
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "env":
        print(format_environment())
        return 0
    return _check(args, out=sys.stdout)


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
