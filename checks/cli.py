"""The `fullgraph` command: `check` (the main job), `report`, `bench` and `env`."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import shlex
import sys
import tempfile
import time
from typing import TYPE_CHECKING, TextIO

from fullgraph.model import LlamaConfig
from fullgraph.model.llama import ATTENTION_BACKENDS
from fullgraph.model.quant import DEFAULT_INT4_GROUP_SIZE, INT4_GROUP_SIZES, SCHEMES

from ._args import check_backend
from .env import format_environment

if TYPE_CHECKING:
    from .report import RecordedReport

__all__ = ["main"]

NAME_WIDTH = 36
DETAIL_WIDTH = 64


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fullgraph", description=__doc__)
    # The installed distribution's version: pyproject.toml is its one source.
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {importlib.metadata.version('fullgraph')}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="run every check on the bundled reference Llama-2")
    check.add_argument("--config", default="tiny", choices=LlamaConfig.names())
    check.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    check.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    check.add_argument("--backend", default="inductor",
                       help="torch.compile backend for the compiled-parity check (default: inductor)")
    _add_quantize_arguments(check)
    check.add_argument("-o", "--output", metavar="PATH",
                       help="also write the results as Markdown, JSON or HTML (.md, .json, .html)")
    report = commands.add_parser(
        "report", help="run a program and report what torch.compile did in it",
        usage="fullgraph report [-o PATH] [--format {md,json,html}] [--timeout SECONDS] "
              "[--repro DIR [--no-reduce]] [--compare OLD.json] -- TARGET\n"
              "       fullgraph report --compare OLD.json --against NEW.json",
        description="Run TARGET in a child process and report every graph break, recompile and "
                    "CUDA-graph skip in it, even if a signal kills it. TARGET is `script.py "
                    "[args]`, `-m module [args]` or `module:function` (called with no arguments). "
                    "Exits with TARGET's exit code: 128 + N if signal N killed it, 124 at the "
                    "timeout.")
    report.add_argument("-o", "--output", metavar="PATH",
                        help="write the report here (default: Markdown on stdout)")
    report.add_argument("--format", choices=["md", "json", "html"],
                        help="default: from the extension of PATH, else md")
    report.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="stop TARGET after SECONDS, reporting where it was (default: none)")
    report.add_argument("--repro", metavar="DIR",
                        help="write a standalone script for each graph break and recompile cause "
                             "into DIR, reduce each, run each in a fresh interpreter, and add "
                             "them to the report")
    report.add_argument("--no-reduce", action="store_true",
                        help="with --repro: keep each script whole (reducing tries up to 64 "
                             "smaller scripts, or 120 s, a script, in one worker process)")
    report.add_argument("--compare", metavar="OLD.json",
                        help="print what is new, gone and changed since OLD.json (a JSON report); "
                             "exit 1 if anything is new")
    report.add_argument("--against", metavar="NEW.json",
                        help="with --compare: compare with this JSON report instead of running TARGET")
    report.add_argument("target", nargs=argparse.REMAINDER, metavar="TARGET")
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
    bench.add_argument("--coordinate-descent", action="store_true",
                       help="compile the decode graph with inductor's coordinate-descent tuning "
                            "(slower compile; it decoded faster on an H100 and slower on an H200, "
                            "see docs/performance.md)")
    bench.add_argument("--sdpa-backend", default="auto", choices=ATTENTION_BACKENDS,
                       help="forward's attention: an SDPA kernel, or flex (flex_attention skipping "
                            "unwritten cache blocks); default auto")
    bench.add_argument("--cache", default="contiguous", choices=["contiguous", "paged"],
                       help="KV cache: one contiguous tensor per layer, or a pool of pages with a "
                            "block table and split-KV decode attention (default: contiguous)")
    bench.add_argument("--block-size", type=int, default=16,
                       help="positions per page of --cache paged (default: 16)")
    bench.add_argument("--min-prompt-len", type=int, metavar="N",
                       help="with --cache paged: rows' prompt lengths spread evenly from N up to "
                            "--prompt-len, each row decoding at its own position")
    bench.add_argument("--no-fuse", action="store_true",
                       help="keep q/k/v and gate/up as separate matmuls (default: fused)")
    _add_quantize_arguments(bench)
    bench.add_argument("--profile", action="store_true",
                       help="CUDA only: break a compiled decode step down by kernel category")
    bench.add_argument("--nproc", type=int, default=1,
                       help="tensor-parallel ranks, one per GPU; launches them itself (default: 1)")
    bench.add_argument("--max-ms-per-token", type=float, metavar="MS",
                       help="exit 1 if a compiled run's decode takes longer than MS per token")
    bench.add_argument("--min-share", type=float, metavar="SHARE",
                       help="exit 1 if a compiled run reaches less than SHARE (0-1] of the "
                            "bandwidth limit")
    return parser


def _add_quantize_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quantize", choices=SCHEMES,
                        help="weight-only quantization of the linears: int8 (a scale per output "
                             "channel) or int4 (a scale and zero per group of inputs)")
    parser.add_argument("--group-size", type=int, choices=INT4_GROUP_SIZES,
                        help=f"inputs per int4 scale (default: {DEFAULT_INT4_GROUP_SIZE})")


def _quantize_args_error(args: argparse.Namespace) -> str | None:
    if args.group_size is not None and args.quantize != "int4":
        return "--group-size applies to --quantize int4 only"
    return None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "env":
        print(format_environment())
        return 0
    if args.command in ("bench", "check") and (error := _quantize_args_error(args)):
        print(f"fullgraph {args.command}: {error}", file=sys.stderr)
        return 2
    if args.command == "bench":
        if error := _bench_args_error(args):
            print(f"fullgraph bench: {error}", file=sys.stderr)
            return 2
        if args.nproc > 1 and "RANK" not in os.environ:
            return _launch_bench(args.nproc, sys.argv[1:] if argv is None else argv)
        return _bench(args, out=sys.stdout)
    command = shlex.join(["fullgraph", *(sys.argv[1:] if argv is None else argv)])
    if args.command == "report":
        return _report(args, command=command, out=sys.stdout)
    return _check(args, command=command, out=sys.stdout)


def _bench_args_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, checked once before any rank starts; None if nothing."""
    if args.device is not None and (error := _device_error(args.device)):
        return error
    if args.prompt_len < 1 or args.new_tokens < 2 or min(args.batch) < 1:
        return "--prompt-len and --batch must be >= 1, --new-tokens >= 2"
    if args.nproc < 1:
        return f"--nproc must be >= 1, got {args.nproc}"
    if args.block_size < 1:
        return f"--block-size must be >= 1, got {args.block_size}"
    if args.min_prompt_len is not None and args.cache != "paged":
        return "--min-prompt-len needs --cache paged (rows at their own positions)"
    if args.min_prompt_len is not None and not 1 <= args.min_prompt_len <= args.prompt_len:
        return f"--min-prompt-len must be in [1, --prompt-len], got {args.min_prompt_len}"
    if args.profile and not _on_cuda(args):
        return "--profile needs a CUDA device"
    if args.max_ms_per_token is not None and not args.max_ms_per_token > 0:
        return f"--max-ms-per-token must be > 0, got {args.max_ms_per_token}"
    if args.min_share is not None and not 0 < args.min_share <= 1:
        return f"--min-share must be in (0, 1], got {args.min_share}"
    return None


def _device_error(device: str) -> str | None:
    """What is wrong with --device: not a device torch knows, or a CUDA one torch cannot see."""
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as error:  # torch lists the device types it knows
        return f"--device {device!r} is not a device: {error}"
    if parsed.type == "cuda" and not torch.cuda.is_available():
        return f"--device {device}: CUDA was asked for, but torch sees no CUDA device"
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        return f"--device {device}: torch sees {torch.cuda.device_count()} CUDA devices"
    return None


def _device(args: argparse.Namespace) -> str:
    """--device, or CUDA where there is one."""
    import torch

    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _on_cuda(args: argparse.Namespace) -> bool:
    return _device(args).startswith("cuda")


def _launch_bench(nproc: int, argv: list[str]) -> int:
    from fullgraph.model.launch import launch_ranks

    # 1 if a rank failed: rank 0 printed why, the launcher which rank and how.
    return launch_ranks("fullgraph.checks.cli", nproc, argv)


def _bench(args: argparse.Namespace, *, out: TextIO) -> int:
    if "RANK" not in os.environ:
        return _bench_on(args, out=out, tensor_parallel=False)
    return _bench_rank(args, out=out)


def _bench_rank(args: argparse.Namespace, *, out: TextIO) -> int:
    """One tensor-parallel rank (launched by --nproc or torchrun): its own GPU, its shard, and
    rank 0 prints."""
    import torch
    import torch.distributed as dist

    from fullgraph.model.launch import teardown_process_group
    from fullgraph.model.tensor_parallel import backend_for

    cuda = _on_cuda(args)
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend_for(device))
    args.device = str(device)
    try:
        if dist.get_rank() == 0:
            return _bench_on(args, out=out, tensor_parallel=True)
        with open(os.devnull, "w") as devnull:
            # Rank 0 writes the figures and judges them against the bounds.
            args.json = args.max_ms_per_token = args.min_share = None
            return _bench_on(args, out=devnull, tensor_parallel=True)
    finally:
        teardown_process_group()


def _bench_on(args: argparse.Namespace, *, out: TextIO, tensor_parallel: bool) -> int:
    import torch

    from fullgraph.model.bench import copy_bandwidth, device_name

    device = torch.device(_device(args))
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    bandwidth = copy_bandwidth(device)
    ranks = f", {os.environ['WORLD_SIZE']} tensor-parallel ranks (figures per GPU)" if tensor_parallel else ""
    print(f"fullgraph bench: {args.config}, {device.type}, {str(dtype).removeprefix('torch.')}"
          f"{_quantize_label(args)}, prompt {_prompt_lens(args)}, {args.new_tokens} new tokens"
          f"{_paged_label(args)}{ranks}; "
          f"copy bandwidth {bandwidth:,.0f} GB/s", file=out)
    print(f"on {device_name(device)}, torch {torch.__version__}", file=out)
    print(f"{'batch':>5}  {'mode':<8}  {'ms/token':>9}  {'tokens/s':>9}  {'limit ms':>8}  "
          f"{'share':>5}  {'compile s':>9}  {'decode s':>8}  {'peak GB':>7}  {'speed-up':>8}", file=out)
    results = _bench_batches(args, device=device, dtype=dtype, bandwidth=bandwidth, out=out,
                             tensor_parallel=tensor_parallel)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.to_dict() for r in results], f, indent=2)
    misses = _bound_misses(results, args)
    for miss in misses:
        print(f"fullgraph bench: {miss}", file=sys.stderr)
    return 1 if misses else 0


def _quantize_label(args: argparse.Namespace) -> str:
    if args.quantize is None:
        return ""
    group = f", group {args.group_size or DEFAULT_INT4_GROUP_SIZE}" if args.quantize == "int4" else ""
    return f" activations, {args.quantize} weights{group}"


def _prompt_lens(args: argparse.Namespace) -> str:
    if args.min_prompt_len is None or args.min_prompt_len == args.prompt_len:
        return str(args.prompt_len)
    return f"{args.min_prompt_len}..{args.prompt_len} (spread over each batch's rows)"


def _paged_label(args: argparse.Namespace) -> str:
    return f", paged cache of {args.block_size}-position pages" if args.cache == "paged" else ""


def _bound_misses(results: list, args: argparse.Namespace) -> list[str]:
    """One line per compiled run and bound it misses (--max-ms-per-token, --min-share)."""
    misses = []
    for run in results:
        if not run.compiled:  # the eager baseline is there for the speed-up, not to be judged
            continue
        name = f"batch {run.batch_size}, compiled"
        if args.max_ms_per_token is not None and run.ms_per_token > args.max_ms_per_token:
            misses.append(f"{name}: {run.ms_per_token:.2f} ms/token is over "
                          f"--max-ms-per-token {args.max_ms_per_token:g}")
        if args.min_share is not None and run.share_of_limit < args.min_share:
            misses.append(f"{name}: {run.share_of_limit:.2f} of the bandwidth limit is under "
                          f"--min-share {args.min_share:g}")
    return misses


def _bench_batches(args: argparse.Namespace, *, device, dtype, bandwidth: float, out: TextIO,
                   tensor_parallel: bool) -> list:
    import torch

    from fullgraph.model.bench import BenchSpec, profile_decode, run_bench

    results = []
    for batch in args.batch:
        # Each batch size gets its own static graphs, as a deployment at that size would; without
        # the reset, the second size would run the dynamic-shape graph compiled for both.
        torch.compiler.reset()
        # The build both the timed runs and the profile measure.
        build = BenchSpec(args.config, device=str(device), dtype=dtype, batch_size=batch,
                          prompt_len=args.prompt_len, new_tokens=args.new_tokens,
                          fuse=not args.no_fuse, sdpa_backend=args.sdpa_backend,
                          tensor_parallel=tensor_parallel, quantize=args.quantize,
                          group_size=args.group_size, cache=args.cache,
                          block_size=args.block_size, min_prompt_len=args.min_prompt_len)
        modes = [True] if args.no_eager else [True, False]
        runs = [run_bench(dataclasses.replace(build, compile=compiled,
                                              coordinate_descent=args.coordinate_descent and compiled),
                          bandwidth_gbps=bandwidth)
                for compiled in modes]
        for run in runs:
            speedup = runs[-1].ms_per_token / run.ms_per_token
            peak = "-" if run.peak_memory_gb is None else f"{run.peak_memory_gb:.1f}"
            print(f"{batch:>5}  {'compiled' if run.compiled else 'eager':<8}  {run.ms_per_token:>9.2f}  "
                  f"{run.tokens_per_s:>9.1f}  {run.limit_ms_per_token:>8.2f}  {run.share_of_limit:>5.2f}  "
                  f"{run.compile_s:>9.1f}  {run.decode_compile_s:>8.1f}  {peak:>7}  {speedup:>7.2f}x",
                  file=out, flush=True)
        results.extend(runs)
        if args.profile:
            breakdown = profile_decode(
                dataclasses.replace(build, coordinate_descent=args.coordinate_descent),
                steps=min(32, args.new_tokens - 4))
            parts = ", ".join(f"{name} {ms:.3f}" for name, ms in breakdown.by_category.items())
            print(f"{batch:>5}  profile ms/step {breakdown.total_ms:.3f}: {parts}", file=out)
            if (gbps := breakdown.matmul_gbps()) is not None:
                print(f"{'':>7}matmuls read {breakdown.matmul_weight_bytes / 1e9:.1f} GB of weights at "
                      f"{gbps:,.0f} GB/s, {gbps / bandwidth:.0%} of copy bandwidth", file=out)
            for name, ms in breakdown.top_kernels:
                print(f"{'':>7}{ms:8.3f}  {name[:120]}", file=out, flush=True)
    return results


def _output_format(command: str, path: str | None, format: str | None) -> str | None:
    """The format to write -o PATH in; prints the error and returns None if there is none."""
    from .report import format_for_path

    try:
        return format_for_path(path, format) if path else format or "md"
    except ValueError:
        print(f"fullgraph {command}: -o {path}: the extension must be .md, .json or .html"
              + (" (or give --format)" if command == "report" else ""), file=sys.stderr)
        return None


def _report(args: argparse.Namespace, *, command: str, out: TextIO) -> int:
    from ._report_run import run_reported
    from ._target import TargetError, load_target
    from .report import render, write_report
    from .report_compare import CompareError, compare, load_report

    if args.against is not None:
        return _compare_files(args, out=out)
    if args.no_reduce and not args.repro:
        print("fullgraph report: --no-reduce needs --repro DIR", file=sys.stderr)
        return 2
    try:
        old = load_report(args.compare, "--compare") if args.compare else None
    except CompareError as error:
        print(f"fullgraph report: {error}", file=sys.stderr)
        return 2
    format = _output_format("report", args.output, args.format)
    if format is None:
        return 2
    if args.timeout is not None and not args.timeout > 0:
        print(f"fullgraph report: --timeout must be > 0, got {args.timeout:g}", file=sys.stderr)
        return 2
    try:
        target = load_target(args.target)  # checked here, run in the child
    except TargetError as error:
        print(f"fullgraph report: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="fullgraph-inputs-") as workdir:
        inputs_path = os.path.join(workdir, "inputs.json") if args.repro else None
        report, code = run_reported(args.target, command=command, label=target.label,
                                    timeout=args.timeout, inputs_path=inputs_path)
        if args.repro:
            report = _with_repros(report, inputs_path, args.repro, reduce=not args.no_reduce)
    if args.output:
        write_report(report, args.output, format)
        print(f"fullgraph report: wrote {args.output}", file=sys.stderr)
    else:
        print(render(report, format), end="", file=out)
    if old is None:
        return code
    new_found = compare(old, report.to_dict(), out=out)
    return code or int(new_found)


def _with_repros(report: RecordedReport, inputs_path: str, directory: str, *,
                 reduce: bool) -> RecordedReport:
    from .report import with_repros
    from .repro import REPRODUCES, make_repros
    from .repro_record import read_recorded

    data = report.to_dict()
    repros = make_repros(data, read_recorded(inputs_path), directory, reduce=reduce)
    written = [repro for repro in repros if repro["file"]]
    verified = [repro for repro in written if repro["status"] == REPRODUCES]
    print(f"fullgraph report: wrote {len(written)} repros in {directory}, {len(verified)} of them "
          f"reproduce on their own", file=sys.stderr)
    return with_repros(data, repros)


def _compare_files(args: argparse.Namespace, *, out: TextIO) -> int:
    """`--compare OLD.json --against NEW.json`: two reports compared, nothing run."""
    from .report_compare import CompareError, compare, load_report

    if not args.compare or args.target or args.repro:
        print("fullgraph report: --against needs --compare and takes no TARGET or --repro",
              file=sys.stderr)
        return 2
    try:
        old, new = load_report(args.compare, "--compare"), load_report(args.against, "--against")
    except CompareError as error:
        print(f"fullgraph report: {error}", file=sys.stderr)
        return 2
    return int(compare(old, new, out=out))


def _check(args: argparse.Namespace, *, command: str, out: TextIO) -> int:
    from .suite import build_target, run_checks  # imports the model and torch's compiler stack

    if args.output and _output_format("check", args.output, None) is None:
        return 2
    if error := _device_error(args.device):
        print(f"fullgraph check: {error}", file=sys.stderr)
        return 2
    try:  # up front: an unknown backend would fail one row after a minute of the others
        check_backend("fullgraph check", args.backend, argument="--backend")
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        target = build_target(config=args.config, device=args.device, dtype=args.dtype,
                              backend=args.backend, quantize=args.quantize,
                              group_size=args.group_size)
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
    if args.output:
        from .report import CheckReport, write_report

        write_report(CheckReport(tuple(results), command=command, target=target.label, seconds=total),
                     args.output)
    return 1 if failed else 0


def _row(name: str, result: str, detail: str, seconds: str) -> str:
    if len(detail) > DETAIL_WIDTH:
        detail = detail[: DETAIL_WIDTH - 3] + "..."
    return f"{name:<{NAME_WIDTH}}  {result:<6}  {detail:<{DETAIL_WIDTH}}  {seconds:>6}"


if __name__ == "__main__":
    sys.exit(main())
