"""Round trips through checkpoints written the way Meta and Hugging Face write them, and every failure."""

import dataclasses
import datetime
import json
import pickle
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from fullgraph.model import (
    CheckpointError,
    LlamaConfig,
    forward,
    init_params,
    load_hf_checkpoint,
    load_meta_checkpoint,
)
from fullgraph.model.loaders import _config_from_hf

# Written out here rather than imported, so the loaders are checked against an independent copy.
META_COLUMN_PARALLEL = ("wq", "wk", "wv", "w1", "w3", "output")  # cut along dim 0
META_ROW_PARALLEL = ("wo", "w2", "tok_embeddings")  # cut along dim 1
HF_NAMES = {
    "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj",
    "attention.wv": "self_attn.v_proj", "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj",
    "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
}


# --- writers -------------------------------------------------------------------------------


def meta_args(cfg, *, vocab_size=-1):
    return {"dim": cfg.dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
            "n_kv_heads": cfg.n_kv_heads, "vocab_size": vocab_size, "multiple_of": cfg.multiple_of,
            "ffn_dim_multiplier": cfg.ffn_dim_multiplier, "norm_eps": cfg.norm_eps}


def save_meta(folder, params, cfg, *, n_shards=1, vocab_size=-1):
    folder.mkdir(exist_ok=True)
    (folder / "params.json").write_text(json.dumps(meta_args(cfg, vocab_size=vocab_size)))
    for rank in range(n_shards):
        shard = {name: meta_shard(name, tensor, rank, n_shards) for name, tensor in params.items()}
        shard["rope.freqs"] = torch.rand(cfg.head_dim // 2)
        torch.save(shard, folder / f"consolidated.{rank:02d}.pth")
    return folder


def meta_shard(name, tensor, rank, n_shards):
    kind = name.split(".")[-2]
    if kind in META_COLUMN_PARALLEL:
        tensor = tensor.chunk(n_shards, dim=0)[rank]
    elif kind in META_ROW_PARALLEL:
        tensor = tensor.chunk(n_shards, dim=1)[rank]
    return tensor.clone()  # torch.save writes a view's whole storage


def hf_config(cfg, **overrides):
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "hidden_size": cfg.dim, "num_hidden_layers": cfg.n_layers,
              "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
              "vocab_size": cfg.vocab_size, "intermediate_size": cfg.ffn_dim,
              "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
              "max_position_embeddings": cfg.max_seq_len, "rope_scaling": None,
              "tie_word_embeddings": False, "torch_dtype": "float32"}
    return config | overrides


def hf_permute(w, n_heads):
    # transformers' convert_llama_weights_to_hf.py, verbatim.
    dim1, dim2 = w.shape
    return w.view(n_heads, dim1 // n_heads // 2, 2, dim2).transpose(1, 2).reshape(dim1, dim2)


def hf_tensors(params, cfg):
    tensors = {"model.embed_tokens.weight": params["tok_embeddings.weight"],
               "model.norm.weight": params["norm.weight"],
               "lm_head.weight": params["output.weight"]}
    for i in range(cfg.n_layers):
        for meta, hf in HF_NAMES.items():
            tensor = params[f"layers.{i}.{meta}.weight"]
            if meta == "attention.wq":
                tensor = hf_permute(tensor, cfg.n_heads)
            elif meta == "attention.wk":
                tensor = hf_permute(tensor, cfg.n_kv_heads)
            tensors[f"model.layers.{i}.{hf}.weight"] = tensor.contiguous()
    return tensors


def save_hf(folder, params, cfg, *, n_shards=1, tied=False, **config_overrides):
    folder.mkdir(exist_ok=True)
    tensors = hf_tensors(params, cfg)
    if tied:
        del tensors["lm_head.weight"]
        config_overrides.setdefault("tie_word_embeddings", True)
    (folder / "config.json").write_text(json.dumps(hf_config(cfg, **config_overrides)))
    if n_shards == 1:
        save_file(tensors, folder / "model.safetensors")
        return folder
    names = list(tensors)
    weight_map = {}
    for rank in range(n_shards):
        file = f"model-{rank + 1:05d}-of-{n_shards:05d}.safetensors"
        part = names[rank::n_shards]
        save_file({name: tensors[name] for name in part}, folder / file)
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
             "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


def assert_same_params(loaded, original):
    assert list(loaded) == list(original)
    for name, tensor in original.items():
        assert torch.equal(loaded[name], tensor), name


def logits(params, cfg):
    tokens = torch.arange(12).remainder(cfg.vocab_size).view(2, 6)
    return forward(params, tokens, cfg=cfg)


# --- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_shards", [1, 2])
@pytest.mark.parametrize("vocab_size", [-1, 256])
def test_meta_checkpoint_round_trips(tmp_path, tiny_cfg, tiny_params, n_shards, vocab_size):
    folder = save_meta(tmp_path / "meta", tiny_params, tiny_cfg, n_shards=n_shards, vocab_size=vocab_size)
    cfg, params = load_meta_checkpoint(folder)
    # params.json records neither max_seq_len nor max_batch_size.
    assert cfg == dataclasses.replace(tiny_cfg, max_seq_len=4096, max_batch_size=32)
    assert_same_params(params, tiny_params)
    assert torch.equal(logits(params, cfg), logits(tiny_params, tiny_cfg))


def test_meta_shards_really_are_cut(tmp_path, tiny_cfg, tiny_params):
    folder = save_meta(tmp_path / "meta", tiny_params, tiny_cfg, n_shards=2)
    shard = torch.load(folder / "consolidated.01.pth", weights_only=True)
    assert shard["tok_embeddings.weight"].shape == (256, 32)
    assert shard["layers.0.attention.wk.weight"].shape == (16, 64)
    assert shard["layers.0.feed_forward.w2.weight"].shape == (64, 96)


def test_meta_optional_keys(tmp_path, tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, n_kv_heads=tiny_cfg.n_heads)
    folder = save_meta(tmp_path / "meta", init_params(cfg), cfg)
    args = meta_args(cfg) | {"rope_theta": 500000.0}
    del args["n_kv_heads"], args["ffn_dim_multiplier"]
    (folder / "params.json").write_text(json.dumps(args))
    loaded, _ = load_meta_checkpoint(folder)
    assert (loaded.n_kv_heads, loaded.ffn_dim_multiplier, loaded.rope_theta) == (4, None, 500000.0)


@pytest.mark.parametrize("n_shards", [1, 2])
def test_hf_checkpoint_round_trips(tmp_path, tiny_cfg, tiny_params, n_shards):
    folder = save_hf(tmp_path / "hf", tiny_params, tiny_cfg, n_shards=n_shards)
    cfg, params = load_hf_checkpoint(folder)
    assert cfg == dataclasses.replace(tiny_cfg, max_batch_size=32)
    assert_same_params(params, tiny_params)
    assert torch.equal(logits(params, cfg), logits(tiny_params, tiny_cfg))


def test_hf_permutation_matters(tiny_cfg, tiny_params):
    # Without undoing the permutation the logits differ, so the round trip above proves the inverse.
    stored = hf_tensors(tiny_params, tiny_cfg)
    permuted = dict(tiny_params)
    for i in range(tiny_cfg.n_layers):
        for meta, hf in (("wq", "q_proj"), ("wk", "k_proj")):
            stored_weight = stored[f"model.layers.{i}.self_attn.{hf}.weight"]
            assert not torch.equal(stored_weight, tiny_params[f"layers.{i}.attention.{meta}.weight"])
            permuted[f"layers.{i}.attention.{meta}.weight"] = stored_weight
    assert not torch.allclose(logits(permuted, tiny_cfg), logits(tiny_params, tiny_cfg), atol=1e-3)


@pytest.mark.parametrize("config_says", [True, None])
def test_hf_tied_embeddings_share_the_embedding(tmp_path, tiny_cfg, tiny_params, config_says):
    folder = save_hf(tmp_path / "hf", tiny_params, tiny_cfg, tied=True, tie_word_embeddings=config_says)
    _, params = load_hf_checkpoint(folder)
    assert params["output.weight"] is params["tok_embeddings.weight"]
    assert torch.equal(params["output.weight"], tiny_params["tok_embeddings.weight"])


def test_hf_tied_config_ignores_a_saved_lm_head(tmp_path, tiny_cfg, tiny_params):
    folder = save_hf(tmp_path / "hf", tiny_params, tiny_cfg, tie_word_embeddings=True)
    _, params = load_hf_checkpoint(folder)
    assert torch.equal(params["output.weight"], tiny_params["tok_embeddings.weight"])


def test_hf_drops_saved_rotary_frequencies_and_keeps_dtype(tmp_path, tiny_cfg):
    bf16 = init_params(tiny_cfg, dtype=torch.bfloat16)
    folder = save_hf(tmp_path / "hf", bf16, tiny_cfg)
    tensors = hf_tensors(bf16, tiny_cfg) | {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}
    save_file(tensors, folder / "model.safetensors")
    _, params = load_hf_checkpoint(folder)
    assert_same_params(params, bf16)
    assert params["norm.weight"].dtype == torch.bfloat16


@pytest.mark.parametrize("dim, n_heads, intermediate_size", [(64, 4, 100), (32, 2, 1), (16, 2, 301)])
def test_hf_odd_feed_forward_widths_round_trip(tmp_path, dim, n_heads, intermediate_size):
    cfg = dataclasses.replace(LlamaConfig.from_name("tiny"), dim=dim, n_heads=n_heads, n_kv_heads=1)
    folder = tmp_path / "hf"
    folder.mkdir()
    # The params only need that width's shapes, which any config with that ffn_dim gives.
    width_cfg = _config_from_hf(hf_config(cfg, intermediate_size=intermediate_size), folder)
    params = init_params(width_cfg)
    save_hf(folder, params, width_cfg)
    loaded_cfg, loaded = load_hf_checkpoint(folder)
    assert loaded_cfg.ffn_dim == intermediate_size
    assert_same_params(loaded, params)


@pytest.mark.parametrize("name, intermediate_size", [
    ("llama2-7b", 11008), ("llama2-13b", 13824), ("llama2-70b", 28672),
])
def test_hf_configs_of_metas_models_equal_the_presets(name, intermediate_size):
    preset = LlamaConfig.from_name(name)
    cfg = _config_from_hf(hf_config(preset, intermediate_size=intermediate_size), Path("config.json"))
    assert cfg == preset


@settings(max_examples=300, deadline=None)
@given(dim=st.integers(1, 4096).map(lambda n: 2 * n), intermediate_size=st.integers(1, 40_000))
def test_any_intermediate_size_is_reproduced_exactly(dim, intermediate_size):
    hf = {"hidden_size": dim, "num_hidden_layers": 1, "num_attention_heads": 1, "vocab_size": 8,
          "intermediate_size": intermediate_size}
    assert _config_from_hf(hf, Path("config.json")).ffn_dim == intermediate_size


# --- failures --------------------------------------------------------------------------------


def raises(fn, folder, *fragments):
    with pytest.raises(CheckpointError) as info:
        fn(folder)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return info.value


DELETE = object()


def edited(data, changes):
    data = data | changes
    return {key: value for key, value in data.items() if value is not DELETE}


def edit_json(file, changes):
    file.write_text(json.dumps(edited(json.loads(file.read_text()), changes)))


def edit_pth(file, changes):
    torch.save(edited(torch.load(file, weights_only=True), changes), file)


def truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


@pytest.fixture
def meta_dir(tmp_path, tiny_cfg, tiny_params):
    return save_meta(tmp_path / "meta", tiny_params, tiny_cfg, n_shards=2)


def test_checkpoint_error_is_a_value_error_that_pickles():
    error = CheckpointError("/ckpt/model.safetensors", "expected shape (2,), got (3,)", key="norm.weight")
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.path, copy.key) == (str(error), error.path, "norm.weight")
    assert str(error) == "/ckpt/model.safetensors, key 'norm.weight': expected shape (2,), got (3,)"


@pytest.mark.parametrize("loader", [load_meta_checkpoint, load_hf_checkpoint])
def test_missing_folder_or_a_file_instead(tmp_path, loader):
    raises(loader, tmp_path / "nowhere", "nowhere", "checkpoint folder not found")
    (tmp_path / "file").write_text("x")
    raises(loader, tmp_path / "file", "file", "not a folder")


def test_meta_missing_params_json(meta_dir):
    (meta_dir / "params.json").unlink()
    error = raises(load_meta_checkpoint, meta_dir, "params.json", "file not found")
    assert error.path == str(meta_dir / "params.json")


def test_meta_params_json_not_json(meta_dir):
    (meta_dir / "params.json").write_text('{"dim": 64,')
    raises(load_meta_checkpoint, meta_dir, "params.json", "not valid JSON")
    (meta_dir / "params.json").write_bytes(b"\xff\xfe\x00")
    raises(load_meta_checkpoint, meta_dir, "params.json", "not valid JSON")
    (meta_dir / "params.json").write_text("[1, 2]")
    raises(load_meta_checkpoint, meta_dir, "params.json", "holds a JSON list")


@pytest.mark.parametrize("changes, fragments", [
    ({"dim": DELETE}, ["params.json, key 'dim'", "required key missing"]),
    ({"use_scaled_rope": True}, ["params.json, key 'use_scaled_rope'", "unknown key"]),
    ({"n_heads": 3}, ["params.json", "not divisible by n_heads (3)"]),
    ({"norm_eps": "small"}, ["params.json, key 'norm_eps'", "expected a number"]),
], ids=["required", "unknown", "invalid-config", "not-a-number"])
def test_meta_bad_params_json(meta_dir, changes, fragments):
    edit_json(meta_dir / "params.json", changes)
    raises(load_meta_checkpoint, meta_dir, *fragments)


def test_meta_no_shards_or_a_gap(meta_dir):
    (meta_dir / "consolidated.01.pth").rename(meta_dir / "consolidated.02.pth")
    raises(load_meta_checkpoint, meta_dir, "consolidated.01.pth", "shard missing", "[0, 2]")
    for file in meta_dir.glob("*.pth"):
        file.unlink()
    raises(load_meta_checkpoint, meta_dir, str(meta_dir), "no consolidated.NN.pth shards")


@pytest.mark.parametrize("changes, fragments", [
    ({"layers.1.ffn_norm.weight": DELETE},
     ["consolidated.01.pth, key 'layers.1.ffn_norm.weight'", "missing"]),
    ({"layers.0.attention.bias": torch.zeros(4)},
     ["consolidated.01.pth, key 'layers.0.attention.bias'", "unexpected"]),
    ({"layers.0.attention.wq.weight": torch.zeros(64, 64)},
     ["consolidated.01.pth, key 'layers.0.attention.wq.weight'", "expected shape (32, 64), got (64, 64)"]),
    ({"norm.weight": torch.ones(64, dtype=torch.float16)},
     ["consolidated.01.pth, key 'norm.weight'", "expected dtype torch.float32", "got torch.float16"]),
    ({"norm.weight": torch.full((64,), 2.0)},
     ["consolidated.01.pth, key 'norm.weight'", "replicated tensor differs from consolidated.00.pth"]),
    ({"output.weight": [1, 2]},
     ["consolidated.01.pth, key 'output.weight'", "holds a list, not a tensor"]),
], ids=["missing", "unexpected", "shape", "dtype", "replicas-differ", "not-a-tensor"])
def test_meta_bad_shard(meta_dir, changes, fragments):
    edit_pth(meta_dir / "consolidated.01.pth", changes)
    raises(load_meta_checkpoint, meta_dir, *fragments)


def test_meta_embeddings_needed_for_the_vocab_size(meta_dir):
    edit_pth(meta_dir / "consolidated.00.pth", {"tok_embeddings.weight": DELETE})
    raises(load_meta_checkpoint, meta_dir, "consolidated.00.pth, key 'tok_embeddings.weight'",
           "vocab_size -1")
    edit_pth(meta_dir / "consolidated.00.pth", {"tok_embeddings.weight": torch.tensor(1.0)})
    raises(load_meta_checkpoint, meta_dir, "consolidated.00.pth, key 'tok_embeddings.weight'",
           "not 2-D")


def test_meta_shards_that_do_not_divide(tmp_path, tiny_cfg, tiny_params):
    folder = save_meta(tmp_path / "meta", tiny_params, tiny_cfg, n_shards=2)
    torch.save({}, folder / "consolidated.02.pth")
    raises(load_meta_checkpoint, folder, "3 shards cannot split", "evenly")


@pytest.mark.parametrize("corrupt, fragment", [
    (truncate, "cannot read this .pth file"),
    (lambda f: f.write_bytes(b"not a checkpoint " * 20), "cannot read this .pth file"),
    (lambda f: f.write_bytes(b""), "cannot read this .pth file (EOFError)"),
    (lambda f: torch.save({"when": datetime.date(2023, 7, 18)}, f),
     "(UnpicklingError: Unsupported global: GLOBAL datetime.date was not an allowed global by default.)"),
    (lambda f: torch.save([torch.zeros(2)], f), "holds a list, not a dict of tensors"),
], ids=["truncated", "garbage", "empty", "not-weights-only", "not-a-dict"])
def test_meta_corrupt_shard(meta_dir, corrupt, fragment):
    corrupt(meta_dir / "consolidated.01.pth")
    error = raises(load_meta_checkpoint, meta_dir, "consolidated.01.pth", fragment)
    assert error.path == str(meta_dir / "consolidated.01.pth")


@pytest.fixture
def hf_dir(tmp_path, tiny_cfg, tiny_params):
    return save_hf(tmp_path / "hf", tiny_params, tiny_cfg, n_shards=2)


def test_hf_missing_config_or_weights(hf_dir):
    (hf_dir / "model.safetensors.index.json").unlink()
    raises(load_hf_checkpoint, hf_dir, str(hf_dir),
           "neither model.safetensors nor model.safetensors.index.json")
    (hf_dir / "config.json").unlink()
    raises(load_hf_checkpoint, hf_dir, "config.json", "file not found")


@pytest.mark.parametrize("changes, fragments", [
    ({"hidden_size": DELETE}, ["config.json, key 'hidden_size'", "required key missing"]),
    ({"hidden_size": "64"}, ["config.json, key 'hidden_size'", "expected a positive int, got '64'"]),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}},
     ["config.json, key 'rope_scaling'", "not supported; the model needs null"]),
    ({"hidden_act": "gelu"},
     ["config.json, key 'hidden_act'", '"gelu" is not supported; the model needs "silu"']),
    ({"model_type": "mistral"}, ["config.json, key 'model_type'", "not supported"]),
    ({"head_dim": 32}, ["config.json, key 'head_dim'", "not hidden_size / num_attention_heads"]),
    ({"num_key_value_heads": 3}, ["config.json", "not divisible by n_kv_heads (3)"]),
], ids=["required", "not-an-int", "rope-scaling", "activation", "model-type", "head-dim", "invalid-config"])
def test_hf_bad_config(hf_dir, changes, fragments):
    edit_json(hf_dir / "config.json", changes)
    raises(load_hf_checkpoint, hf_dir, *fragments)


def test_hf_bad_index(hf_dir):
    index = hf_dir / "model.safetensors.index.json"
    edit_json(index, {"weight_map": DELETE})
    raises(load_hf_checkpoint, hf_dir, "model.safetensors.index.json, key 'weight_map'", "needs a weight_map")
    index.write_text("{")
    raises(load_hf_checkpoint, hf_dir, "model.safetensors.index.json", "not valid JSON")


def test_hf_index_lists_a_missing_file_or_key(hf_dir):
    index = hf_dir / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    edit_json(index, {"weight_map": weight_map | {"model.norm.weight": "model-00009-of-00009.safetensors"}})
    raises(load_hf_checkpoint, hf_dir, "model-00009-of-00009.safetensors, key 'model.norm.weight'",
           "file not found")
    elsewhere = next(f for f in weight_map.values() if f != weight_map["model.norm.weight"])
    edit_json(index, {"weight_map": weight_map | {"model.norm.weight": elsewhere}})
    raises(load_hf_checkpoint, hf_dir, f"{elsewhere}, key 'model.norm.weight'", "not in this file",
           "model.safetensors.index.json lists it here")


def test_hf_missing_and_unexpected_keys(tmp_path, tiny_cfg, tiny_params):
    folder = save_hf(tmp_path / "hf", tiny_params, tiny_cfg)
    tensors = hf_tensors(tiny_params, tiny_cfg)
    save_file({k: v for k, v in tensors.items() if k != "model.layers.1.mlp.up_proj.weight"},
              folder / "model.safetensors")
    raises(load_hf_checkpoint, folder, "model.safetensors, key 'model.layers.1.mlp.up_proj.weight'",
           "missing")
    bias = {"model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}
    save_file(tensors | bias, folder / "model.safetensors")
    raises(load_hf_checkpoint, folder, "model.safetensors, key 'model.layers.0.self_attn.q_proj.bias'",
           "unexpected")
    edit_json(folder / "config.json", {"num_hidden_layers": 3})
    save_file(tensors, folder / "model.safetensors")
    raises(load_hf_checkpoint, folder, "key 'model.layers.2.", "missing, as are 8 more keys")


def test_hf_untied_config_needs_lm_head(tmp_path, tiny_cfg, tiny_params):
    folder = save_hf(tmp_path / "hf", tiny_params, tiny_cfg, tied=True, tie_word_embeddings=False)
    raises(load_hf_checkpoint, folder, "model.safetensors, key 'lm_head.weight'",
           "tie_word_embeddings false")


@pytest.mark.parametrize("name, tensor, fragment", [
    ("model.layers.0.self_attn.k_proj.weight", torch.zeros(64, 64), "expected shape (32, 64), got (64, 64)"),
    ("model.norm.weight", torch.ones(64, dtype=torch.bfloat16), "expected dtype torch.float32"),
], ids=["shape", "dtype"])
def test_hf_wrong_shape_or_dtype(hf_dir, name, tensor, fragment):
    weight_map = json.loads((hf_dir / "model.safetensors.index.json").read_text())["weight_map"]
    file = hf_dir / weight_map[name]
    tensors = safetensors.torch.load(file.read_bytes())
    save_file(tensors | {name: tensor}, file)
    raises(load_hf_checkpoint, hf_dir, f"{weight_map[name]}, key '{name}'", fragment)


@pytest.mark.parametrize("corrupt", [
    truncate,
    lambda f: f.write_bytes(b"not a checkpoint " * 20),
    lambda f: f.write_bytes(b""),
], ids=["truncated", "garbage", "empty"])
@pytest.mark.parametrize("n_shards", [1, 2])
def test_hf_corrupt_safetensors(tmp_path, tiny_cfg, tiny_params, corrupt, n_shards):
    folder = save_hf(tmp_path / "hf", tiny_params, tiny_cfg, n_shards=n_shards)
    file = sorted(folder.glob("*.safetensors"))[-1]
    corrupt(file)
    error = raises(load_hf_checkpoint, folder, file.name, "cannot read this .safetensors file",
                   "SafetensorError")
    assert error.path == str(file)


def test_hf_without_safetensors_says_what_to_install(hf_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    with pytest.raises(ImportError, match=r"fullgraph\[model\]"):
        load_hf_checkpoint(hf_dir)
