"""Text from a checkpoint folder, Meta's or Hugging Face's, quantized while loading if asked:

    python -m fullgraph.model.generate_text llama-2-7b --prompt "The capital of France is" --quantize int8

Greedy by default; decode compiled and, on CUDA, under CUDA graphs (fullgraph.model.generate).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from .generate import generate
from .loaders import load_hf_checkpoint, load_meta_checkpoint
from .quant import DEFAULT_INT4_GROUP_SIZE, INT4_GROUP_SIZES, SCHEMES
from .tokenizer import Tokenizer

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fullgraph.model.generate_text",
                                     description="Greedy or sampled text from a Llama-2 checkpoint.")
    parser.add_argument("checkpoint", type=Path,
                        help="a folder with Meta's params.json or Hugging Face's config.json")
    parser.add_argument("--prompt", action="append", required=True, help="repeat for a batch")
    parser.add_argument("--tokenizer", type=Path, help="default: CHECKPOINT/tokenizer.model")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quantize", choices=SCHEMES, help="weight-only quantization while loading")
    parser.add_argument("--group-size", type=int, choices=INT4_GROUP_SIZES,
                        help=f"inputs per int4 scale (default {DEFAULT_INT4_GROUP_SIZE})")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args(argv)
    if args.group_size is not None and args.quantize != "int4":
        parser.error("--group-size applies to --quantize int4 only")

    tokenizer = Tokenizer(args.tokenizer or args.checkpoint / "tokenizer.model")
    meta = (args.checkpoint / "params.json").is_file()
    load = load_meta_checkpoint if meta else load_hf_checkpoint
    cfg, params = load(args.checkpoint, device=args.device, quantize=args.quantize,
                       group_size=args.group_size)
    prompts = [tokenizer.encode(prompt) for prompt in args.prompt]
    outputs = generate(params, prompts, cfg=cfg, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_k=args.top_k, eos_id=tokenizer.eos_id,
                       compile=not args.no_compile)
    for prompt, new in zip(prompts, outputs):
        print(tokenizer.decode(prompt + new))
    return 0


if __name__ == "__main__":
    sys.exit(main())
