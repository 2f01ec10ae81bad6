"""A user's wrapper around transformers' generate, with a graph break of its own (test_repro.py).

    fullgraph report --repro repros -- tests/checks/targets/hf_generate.py
"""

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def clean_prompt(input_ids, pad_id):
    keep = input_ids != pad_id
    if keep.all():  # break: the wrapper's data-dependent branch
        return input_ids
    return input_ids[:, keep.all(0)]


def generate(model, input_ids, pad_id):
    prompt = clean_prompt(input_ids, pad_id)
    return model.generate(prompt, max_new_tokens=2, do_sample=False, pad_token_id=pad_id)


def main():
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    compiled = torch.compile(generate, backend="eager")
    with torch.no_grad():
        print("generated", tuple(compiled(model, torch.randint(1, 64, (1, 5)), 0).shape))


if __name__ == "__main__":
    main()
