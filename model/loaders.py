"""Load Meta's and Hugging Face's Llama-2 checkpoints into the param dict (Meta's names and layout).

    Meta          params.json + consolidated.00.pth, consolidated.01.pth, ... (one per model-parallel rank)
    Hugging Face  config.json + model.safetensors, or shards listed in model.safetensors.index.json

Every failure raises CheckpointError naming the file and, where one is at fault, the key. Tensors
stay in the checkpoint's dtype, on the CPU, unless `device` or `quantize` is given: then each moves to
the device on its own and its linears are quantized there (fullgraph.model.quant), so the whole model
in the checkpoint's dtype is never on the device.

Both formats stay in this one module, a little past 500 lines: each is one section, and both end
in the shared checks of the last section (files, keys, shapes, dtypes, placement on the device),
which would otherwise need a module of their own used by two.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from .config import PRESETS, LlamaConfig
from .params import check_params, param_shapes
from .quant import check_scheme
from .quant import quantize as quantize_params

__all__ = ["CheckpointError", "load_meta_checkpoint", "load_hf_checkpoint"]

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; `path` is the file (or folder) at fault, `key` the entry."""

    def __init__(self, path: PathLike, problem: str, key: str | None = None) -> None:
        self.path, self.problem, self.key = str(path), problem, key
        where = self.path if key is None else f"{self.path}, key {key!r}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):
        return type(self), (self.path, self.problem, self.key)


# ---------------------------------------------------------------------------------------------
# Meta

_META_REQUIRED = ("dim", "n_layers", "n_heads", "vocab_size", "multiple_of", "norm_eps")
_META_OPTIONAL = ("n_kv_heads", "ffn_dim_multiplier", "rope_theta")
# fairscale's model-parallel layers cut each weight along one dim: ColumnParallelLinear its outputs
# (dim 0), RowParallelLinear its inputs (dim 1), ParallelEmbedding the embedding dim (dim 1).
# Anything not listed (the norms) is replicated on every rank.
_META_SPLIT_DIM = {"tok_embeddings": 1, "output": 0,
                   "wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "wo": 1, "w2": 1}
# Meta's checkpoints carry the rotary frequencies as a buffer; forward computes its own.
_META_IGNORED = {"rope.freqs"}
_SHARD_NAME = re.compile(r"consolidated\.(\d+)\.pth")


def load_meta_checkpoint(
    path: PathLike,
    *,
    device: str | torch.device | None = None,
    quantize: str | None = None,
    group_size: int | None = None,
) -> tuple[LlamaConfig, dict[str, Tensor]]:
    """(config, params) from a folder of Meta's params.json and consolidated.NN.pth shards.

    Model-parallel shards are merged back the way Meta cut them; replicated tensors must agree.
    max_seq_len is LlamaConfig's default (4096), which params.json does not record.
    device, quantize, group_size: see the module's docstring and `fullgraph.model.quant.quantize`.
    """
    _check_quantize(quantize, group_size)
    folder = _existing_folder(path)
    params_file = folder / "params.json"
    args = _read_json(params_file)
    _check_keys(args, params_file, required=_META_REQUIRED, allowed=_META_REQUIRED + _META_OPTIONAL)
    files = _meta_shard_files(folder)
    shards = [_without(_load_pth(file), _META_IGNORED) for file in files]
    cfg = _config_from_meta(args, params_file, vocab_size=_meta_vocab_size(args, files[0], shards[0]))

    shapes = _meta_shard_shapes(cfg, n_shards=len(files), folder=folder)
    dtype = _dtype_of(shards[0], "tok_embeddings.weight", files[0])
    for file, shard in zip(files, shards):
        _check_tensors(file, shard, shapes, dtype)
    merged = _merge_meta_shards(files, shards)
    params = _checked({name: merged[name] for name in param_shapes(cfg)}, cfg, folder)
    return cfg, _placed(params, device=device, quantize=quantize, group_size=group_size)


def _meta_shard_files(folder: Path) -> list[Path]:
    by_number = {int(m.group(1)): p for p in folder.iterdir() if (m := _SHARD_NAME.fullmatch(p.name))}
    if not by_number:
        raise CheckpointError(folder, "no consolidated.NN.pth shards in this folder")
    missing = sorted(set(range(max(by_number) + 1)) - set(by_number))
    if missing:
        raise CheckpointError(folder / f"consolidated.{missing[0]:02d}.pth",
                              f"shard missing; found shards {sorted(by_number)}")
    return [by_number[n] for n in sorted(by_number)]


def _meta_vocab_size(args: dict, first_file: Path, first_shard: dict[str, Tensor]) -> int:
    if args["vocab_size"] != -1:
        return args["vocab_size"]
    # Meta's files say -1 and leave the size to the tokenizer; the embedding rows say it too.
    embeddings = first_shard.get("tok_embeddings.weight")
    if embeddings is None or embeddings.dim() != 2:
        raise CheckpointError(first_file, "missing or not 2-D; params.json has vocab_size -1, so the "
                              "vocab size is its row count", key="tok_embeddings.weight")
    return embeddings.shape[0]


def _config_from_meta(args: dict, file: Path, *, vocab_size: int) -> LlamaConfig:
    n_kv_heads = args.get("n_kv_heads")
    multiplier = args.get("ffn_dim_multiplier")
    return _config(
        file,
        dim=args["dim"], n_layers=args["n_layers"], n_heads=args["n_heads"],
        n_kv_heads=args["n_heads"] if n_kv_heads is None else n_kv_heads,
        vocab_size=vocab_size, multiple_of=args["multiple_of"],
        ffn_dim_multiplier=None if multiplier is None else _number(multiplier, file, "ffn_dim_multiplier"),
        norm_eps=_number(args["norm_eps"], file, "norm_eps"),
        rope_theta=_number(args.get("rope_theta", 10000.0), file, "rope_theta"),
    )


def _meta_shard_shapes(cfg: LlamaConfig, *, n_shards: int, folder: Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name, shape in param_shapes(cfg).items():
        dim = _META_SPLIT_DIM.get(_weight_kind(name))
        if dim is not None:
            if shape[dim] % n_shards:
                raise CheckpointError(folder, f"{n_shards} shards cannot split {name} of shape "
                                      f"{shape} evenly along dim {dim}")
            shape = shape[:dim] + (shape[dim] // n_shards,) + shape[dim + 1:]
        shapes[name] = shape
    return shapes


def _merge_meta_shards(files: list[Path], shards: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    if len(shards) == 1:
        return shards[0]
    merged = {}
    for name in shards[0]:
        parts = [shard[name] for shard in shards]
        dim = _META_SPLIT_DIM.get(_weight_kind(name))
        if dim is not None:
            merged[name] = torch.cat(parts, dim=dim)
            continue
        for file, part in zip(files[1:], parts[1:]):
            if not torch.equal(part, parts[0]):
                raise CheckpointError(file, f"replicated tensor differs from {files[0].name}'s", key=name)
        merged[name] = parts[0]
    return merged


def _weight_kind(name: str) -> str:
    # "layers.3.attention.wq.weight" -> "wq"; "tok_embeddings.weight" -> "tok_embeddings"
    return name.split(".")[-2]


def _load_pth(file: Path) -> dict[str, Tensor]:
    try:
        # Memory-map where the format allows (torch.save's zip format), so nothing is read twice.
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(file))
    except Exception as exc:  # noqa: BLE001 - corrupt bytes make the unpickler raise a dozen unrelated types
        raise CheckpointError(file, f"cannot read this .pth file ({_reason(exc)})") from exc
    return _tensor_dict(state, file)


# ---------------------------------------------------------------------------------------------
# Hugging Face

_HF_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                "intermediate_size")
# Settings that would change the computation; the model supports only Llama-2's values.
_HF_SUPPORTED = {"model_type": "llama", "hidden_act": "silu", "rope_scaling": None,
                 "attention_bias": False, "mlp_bias": False}
_HF_TOP_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight",
                 "norm.weight": "model.norm.weight",
                 "output.weight": "lm_head.weight"}
_HF_LAYER_NAMES = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
                   "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
                   "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
                   "feed_forward.w3": "mlp.up_proj",
                   "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
# Older transformers versions saved the rotary frequencies as a buffer.
_HF_IGNORED = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
_HF_SINGLE, _HF_INDEX = "model.safetensors", "model.safetensors.index.json"


def load_hf_checkpoint(
    path: PathLike,
    *,
    device: str | torch.device | None = None,
    quantize: str | None = None,
    group_size: int | None = None,
) -> tuple[LlamaConfig, dict[str, Tensor]]:
    """(config, params) from a Hugging Face Llama folder: config.json plus safetensors weights.

    Names are mapped to Meta's, and wq/wk get back the row order Meta's rotary embedding expects.
    Without lm_head.weight (tied embeddings), output.weight is the embedding tensor itself (or,
    quantized, a quantized copy of it).
    device, quantize, group_size: see the module's docstring and `fullgraph.model.quant.quantize`.
    """
    _check_quantize(quantize, group_size)
    folder = _existing_folder(path)
    config_file = folder / "config.json"
    hf = _read_json(config_file)
    cfg = _config_from_hf(hf, config_file)
    listing, weight_map = _hf_weight_map(folder)
    tied = hf.get("tie_word_embeddings")
    if tied is None:
        tied = "lm_head.weight" not in weight_map

    meta_names = {_hf_name(name): name for name in param_shapes(cfg)
                  if not (tied and name == "output.weight")}
    _check_hf_names(weight_map, meta_names, listing=listing, tied=tied)
    tensors = _read_safetensors(weight_map, wanted=meta_names, listing=listing)
    dtype = tensors["model.embed_tokens.weight"].dtype
    shapes = param_shapes(cfg)
    for hf_name, meta_name in meta_names.items():
        _check_tensor(weight_map[hf_name], hf_name, tensors[hf_name], shapes[meta_name], dtype)

    params = {meta: _from_hf_layout(meta, tensors[hf], cfg) for hf, meta in meta_names.items()}
    if tied:
        params["output.weight"] = params["tok_embeddings.weight"]
    params = _checked({name: params[name] for name in shapes}, cfg, folder)
    return cfg, _placed(params, device=device, quantize=quantize, group_size=group_size)


def _check_hf_names(weight_map: dict[str, Path], meta_names: dict[str, str], *, listing: Path,
                    tied: bool) -> None:
    for hf_name, file in weight_map.items():
        if hf_name not in meta_names and not _hf_ignored(hf_name, tied=tied):
            raise CheckpointError(file, "unexpected (not a Llama-2 parameter for config.json)", key=hf_name)
    missing = [name for name in meta_names if name not in weight_map]
    if missing:
        hint = " and config.json sets tie_word_embeddings false" if missing[0] == "lm_head.weight" else ""
        raise CheckpointError(listing, _missing(missing) + hint, key=missing[0])


def _config_from_hf(hf: dict, file: Path) -> LlamaConfig:
    _check_keys(hf, file, required=_HF_REQUIRED)
    for key, supported in _HF_SUPPORTED.items():
        if hf.get(key, supported) != supported:
            raise CheckpointError(file, f"{json.dumps(hf[key])} is not supported; the model needs "
                                  f"{json.dumps(supported)}", key=key)
    dim = _positive_int(hf["hidden_size"], file, "hidden_size")
    n_heads = _positive_int(hf["num_attention_heads"], file, "num_attention_heads")
    intermediate_size = _positive_int(hf["intermediate_size"], file, "intermediate_size")
    head_dim = hf.get("head_dim")
    if head_dim is not None and head_dim * n_heads != dim:
        raise CheckpointError(file, f"{head_dim!r} is not hidden_size / num_attention_heads, "
                              "which the model needs", key="head_dim")
    n_kv_heads = hf.get("num_key_value_heads")
    # Defaults are those of transformers' LlamaConfig, for files that leave a key out.
    common = dict(
        dim=dim, n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=n_heads if n_kv_heads is None else n_kv_heads,
        vocab_size=hf["vocab_size"],
        norm_eps=_number(hf.get("rms_norm_eps", 1e-6), file, "rms_norm_eps"),
        rope_theta=_number(hf.get("rope_theta", 10000.0), file, "rope_theta"),
        max_seq_len=hf.get("max_position_embeddings", 2048),
    )
    for multiple_of, multiplier in _ffn_knobs(dim, intermediate_size):
        cfg = _config(file, **common, multiple_of=multiple_of, ffn_dim_multiplier=multiplier)
        if cfg.ffn_dim == intermediate_size:
            return cfg
    raise CheckpointError(file, f"no multiple_of / ffn_dim_multiplier reproduces {intermediate_size}",
                          key="intermediate_size")


def _ffn_knobs(dim: int, intermediate_size: int) -> list[tuple[int, float | None]]:
    """Candidate (multiple_of, ffn_dim_multiplier) pairs for LlamaConfig.ffn_dim == intermediate_size.

    The presets' pairs come first, so Hugging Face copies of Meta's models load to configs equal to
    the presets. The last pair fits any width I. Meta's rounding goes up to a multiple of I,
    which is I itself from any base width (int(8 * dim / 3)) between 1 and I; a base width above I
    is scaled to I + 0.5 first, which int() truncates to I with half a unit to spare either way.
    """
    presets = list(dict.fromkeys((c.multiple_of, c.ffn_dim_multiplier) for c in PRESETS.values()))
    base = int(2 * (4 * dim) / 3)
    multiplier = None if base <= intermediate_size else (intermediate_size + 0.5) / base
    return presets + [(intermediate_size, multiplier)]


def _hf_ignored(name: str, *, tied: bool) -> bool:
    # With tied embeddings transformers ignores a saved lm_head.weight, and so do we.
    return bool(_HF_IGNORED.fullmatch(name)) or (tied and name == "lm_head.weight")


def _hf_name(meta_name: str) -> str:
    if meta_name in _HF_TOP_NAMES:
        return _HF_TOP_NAMES[meta_name]
    _, layer, rest = meta_name.split(".", 2)  # "layers", "3", "attention.wq.weight"
    return f"model.layers.{layer}.{_HF_LAYER_NAMES[rest.removesuffix('.weight')]}.weight"


def _from_hf_layout(meta_name: str, tensor: Tensor, cfg: LlamaConfig) -> Tensor:
    kind = _weight_kind(meta_name)
    if kind == "wq":
        return _unpermute_rotary(tensor, cfg.n_heads)
    if kind == "wk":
        return _unpermute_rotary(tensor, cfg.n_kv_heads)
    return tensor


def _unpermute_rotary(weight: Tensor, n_heads: int) -> Tensor:
    # HF's convert script reorders each head's rows from Meta's interleaved rotary pairs
    # (0, 1), (2, 3), ... into two halves (0, 2, ...), (1, 3, ...) for its rotate_half RoPE:
    # view(n_heads, D // 2, 2, E).transpose(1, 2). The inverse view puts the pairs back together.
    rows, cols = weight.shape
    return weight.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def _hf_weight_map(folder: Path) -> tuple[Path, dict[str, Path]]:
    """The file that lists the tensor names, and each name's file."""
    single, index = folder / _HF_SINGLE, folder / _HF_INDEX
    if single.is_file():
        return single, {name: single for name in _safetensors_keys(single)}
    if not index.is_file():
        raise CheckpointError(folder, f"neither {_HF_SINGLE} nor {_HF_INDEX} in this folder")
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(index, "needs a weight_map object of tensor name -> file name",
                              key="weight_map")
    return index, {name: folder / file for name, file in weight_map.items()}


def _safetensors_keys(file: Path) -> list[str]:
    safe_open, safetensor_error = _import_safetensors()
    try:
        with safe_open(file, framework="pt") as handle:
            return list(handle.keys())
    except (safetensor_error, OSError) as exc:
        raise CheckpointError(file, f"cannot read this .safetensors file ({_reason(exc)})") from exc


def _read_safetensors(weight_map: dict[str, Path], *, wanted: dict[str, str],
                      listing: Path) -> dict[str, Tensor]:
    safe_open, safetensor_error = _import_safetensors()
    by_file: dict[Path, list[str]] = {}
    for name in wanted:
        by_file.setdefault(weight_map[name], []).append(name)
    tensors = {}
    for file, names in by_file.items():
        if not file.is_file():
            raise CheckpointError(file, f"file not found; {listing.name} lists it for {len(names)} "
                                  f"tensors", key=names[0])
        try:
            with safe_open(file, framework="pt") as handle:
                stored = set(handle.keys())
                for name in names:
                    if name not in stored:
                        raise CheckpointError(file, f"not in this file, though {listing.name} lists it "
                                              "here", key=name)
                    tensors[name] = handle.get_tensor(name)
        except (safetensor_error, OSError) as exc:
            raise CheckpointError(file, f"cannot read this .safetensors file ({_reason(exc)})") from exc
    return tensors


def _import_safetensors():
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError as exc:
        raise ImportError("loading Hugging Face checkpoints needs safetensors: "
                          "pip install 'fullgraph[model]'") from exc
    return safe_open, SafetensorError


# ---------------------------------------------------------------------------------------------
# Shared checks


def _existing_folder(path: PathLike) -> Path:
    folder = Path(path)
    if not folder.exists():
        raise CheckpointError(folder, "checkpoint folder not found")
    if not folder.is_dir():
        raise CheckpointError(folder, "not a folder; pass the checkpoint folder, not a file in it")
    return folder


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_bytes())
    except FileNotFoundError as exc:
        raise CheckpointError(file, "file not found") from exc
    except OSError as exc:
        raise CheckpointError(file, f"cannot read ({_reason(exc)})") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise CheckpointError(file, f"not valid JSON ({_reason(exc)})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(file, f"holds a JSON {type(data).__name__}, not an object")
    return data


def _check_keys(data: dict, file: Path, *, required: tuple[str, ...],
                allowed: tuple[str, ...] | None = None) -> None:
    for key in required:
        if key not in data:
            raise CheckpointError(file, "required key missing", key=key)
    unknown = [] if allowed is None else [key for key in data if key not in allowed]
    if unknown:
        raise CheckpointError(file, f"unknown key; known keys are {', '.join(allowed)}", key=unknown[0])


def _positive_int(value: object, file: Path, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(file, f"expected a positive int, got {value!r}", key=key)
    return value


def _number(value: object, file: Path, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointError(file, f"expected a number, got {value!r}", key=key)
    return float(value)


def _config(file: Path, **fields) -> LlamaConfig:
    try:
        return LlamaConfig(**fields)
    except ValueError as exc:
        raise CheckpointError(file, f"does not describe a valid Llama-2 config ({exc})") from exc


def _tensor_dict(state: object, file: Path) -> dict[str, Tensor]:
    if not isinstance(state, dict):
        raise CheckpointError(file, f"holds a {type(state).__name__}, not a dict of tensors")
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(file, f"holds a {type(value).__name__}, not a tensor", key=str(key))
    return state


def _without(tensors: dict[str, Tensor], ignored: set[str]) -> dict[str, Tensor]:
    return {name: t for name, t in tensors.items() if name not in ignored}


def _dtype_of(tensors: dict[str, Tensor], key: str, file: Path) -> torch.dtype:
    if key not in tensors:
        raise CheckpointError(file, "missing", key=key)
    return tensors[key].dtype


def _check_tensors(file: Path, tensors: dict[str, Tensor], shapes: dict[str, tuple[int, ...]],
                   dtype: torch.dtype) -> None:
    missing = [name for name in shapes if name not in tensors]
    if missing:
        raise CheckpointError(file, _missing(missing), key=missing[0])
    for name, tensor in tensors.items():
        if name not in shapes:
            raise CheckpointError(file, "unexpected (not a Llama-2 parameter for this config)", key=name)
        _check_tensor(file, name, tensor, shapes[name], dtype)


def _missing(names: list[str]) -> str:
    return "missing" if len(names) == 1 else f"missing, as are {len(names) - 1} more keys"


def _check_tensor(file: Path, key: str, tensor: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise CheckpointError(file, f"expected shape {tuple(shape)}, got {tuple(tensor.shape)}", key=key)
    if tensor.dtype != dtype:
        raise CheckpointError(file, f"expected dtype {dtype} like the embeddings, got {tensor.dtype}",
                              key=key)


def _checked(params: dict[str, Tensor], cfg: LlamaConfig, where: Path) -> dict[str, Tensor]:
    try:
        check_params(params, cfg)
    except ValueError as exc:
        raise CheckpointError(where, str(exc)) from exc
    return params


def _check_quantize(quantize: str | None, group_size: int | None) -> None:
    # Before any file is read: a bad scheme should not cost a 13 GB read to report.
    if quantize is not None:
        check_scheme(quantize, group_size)
    elif group_size is not None:
        raise ValueError(f"group_size={group_size!r} needs quantize='int4'")


def _placed(params: dict[str, Tensor], *, device: str | torch.device | None, quantize: str | None,
            group_size: int | None) -> dict[str, Tensor]:
    if quantize is not None:
        return quantize_params(params, quantize, group_size=group_size, device=device)
    if device is None:
        return params
    moved: dict[int, Tensor] = {}  # tied embeddings stay one tensor
    for tensor in params.values():
        if id(tensor) not in moved:
            moved[id(tensor)] = tensor.to(device)
    return {name: moved[id(tensor)] for name, tensor in params.items()}


def _reason(exc: BaseException) -> str:
    # torch's messages run to a page of advice; keep the sentence that says what went wrong. For the
    # weights-only unpickler that is the one after its marker, not the preamble.
    text = str(exc)
    _, marker, detail = text.partition("WeightsUnpickler error:")
    lines = (detail if marker else text).strip().splitlines() or [""]
    end = lines[0].find(". ")
    sentence = lines[0] if end < 0 else lines[0][: end + 1]
    return f"{type(exc).__name__}: {sentence}" if sentence else type(exc).__name__
