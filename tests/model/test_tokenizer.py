"""The SentencePiece tokenizer, on small models trained here from tests/data/tokenizer_corpus.txt."""

import dataclasses
import sys
from pathlib import Path

import pytest
import sentencepiece

from fullgraph.model import Tokenizer, generate, init_params

CORPUS = Path(__file__).parent.parent / "data" / "tokenizer_corpus.txt"
SENTENCES = [
    "The harbour wakes up slowly on a grey morning in early spring.",
    "A café at the end of the street opens at half past six.",
    "  Two spaces first, numbers 1 2 3 and punctuation: (yes!)",
    "",
]


def train(folder, *, vocab_size, model_type, bos_id, eos_id, pad_id):
    prefix = folder / model_type
    sentencepiece.SentencePieceTrainer.train(
        input=str(CORPUS), model_prefix=str(prefix), vocab_size=vocab_size, model_type=model_type,
        unk_id=0, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id, character_coverage=1.0, minloglevel=2,
    )
    return prefix.with_suffix(".model")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    # Llama's layout: unk 0, bos 1, eos 2; a pad piece too, to see it reported.
    return train(tmp_path_factory.mktemp("bpe"), vocab_size=300, model_type="bpe",
                 bos_id=1, eos_id=2, pad_id=3)


@pytest.fixture(scope="module")
def tok(model_file):
    return Tokenizer(model_file)


@pytest.fixture(scope="module")
def eos_only_model_file(tmp_path_factory):
    return train(tmp_path_factory.mktemp("unigram"), vocab_size=280, model_type="unigram",
                 bos_id=-1, eos_id=1, pad_id=-1)


def test_corpus_is_big_enough_to_train_on():
    lines = [line for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(lines) >= 250


def test_special_ids_and_vocab_size(tok):
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (300, 1, 2, 3)


@pytest.mark.parametrize("text", SENTENCES)
def test_round_trip(tok, text):
    ids = tok.encode(text, bos=False)
    assert all(isinstance(i, int) and 0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text.strip()  # SentencePiece folds leading whitespace away


def test_ids_are_sentencepieces(tok, model_file):
    processor = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    text = SENTENCES[0]
    assert tok.encode(text, bos=False) == processor.encode(text)
    assert len(tok.encode(text, bos=False)) < len(text) / 2  # merges learnt, not characters


def test_bos_and_eos(tok):
    text = SENTENCES[0]
    plain = tok.encode(text, bos=False)
    assert tok.encode(text) == [tok.bos_id, *plain]
    assert tok.encode(text, eos=True) == [tok.bos_id, *plain, tok.eos_id]
    assert tok.encode(text, bos=False, eos=True) == [*plain, tok.eos_id]
    assert tok.encode("") == [tok.bos_id]
    assert tok.bos_id not in plain and tok.eos_id not in plain


def test_special_pieces_decode_to_nothing(tok):
    text = SENTENCES[1]
    assert tok.decode([tok.bos_id, *tok.encode(text, bos=False), tok.eos_id, tok.pad_id]) == text
    assert tok.decode([]) == ""


def test_unknown_characters_map_to_unk(tok):
    assert 0 in tok.encode("日本", bos=False)


def test_model_without_bos_or_pad(eos_only_model_file):
    tok = Tokenizer(eos_only_model_file)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (-1, 1, -1)
    assert tok.encode("the sea", bos=False, eos=True)[-1] == 1
    with pytest.raises(ValueError, match=r"unigram\.model defines no bos piece; pass bos=False"):
        tok.encode("the sea")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer model file at .*nowhere.model"):
        Tokenizer(tmp_path / "nowhere.model")
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        Tokenizer(tmp_path)


@pytest.mark.parametrize("content", [b"", b"not a sentencepiece model" * 8])
def test_invalid_file(tmp_path, content):
    path = tmp_path / "tokenizer.model"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"tokenizer\.model is not a valid SentencePiece model"):
        Tokenizer(path)


def test_bad_arguments(tok):
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match=r"ids must be ints in \[0, 300\); got \[300, -1\]"):
        tok.decode([5, 300, -1])
    with pytest.raises(ValueError, match=r"got \[2\.0\]"):
        tok.decode([2.0])


def test_without_sentencepiece_says_what_to_install(model_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "sentencepiece", None)
    with pytest.raises(ImportError, match=r"pip install 'fullgraph\[model\]'"):
        Tokenizer(model_file)


def test_repr_names_the_file(tok, model_file):
    assert repr(tok) == f"Tokenizer({str(model_file)!r}, vocab_size=300)"


def test_generates_text_with_the_tiny_model(tok, tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg, vocab_size=tok.vocab_size)
    prompt = "The harbour wakes up"
    prompt_ids = tok.encode(prompt)
    new = generate(init_params(cfg), [prompt_ids], cfg=cfg, max_new_tokens=12, compile=False,
                   eos_id=tok.eos_id)[0]
    assert len(new) <= 12 and tok.eos_id not in new
    assert all(0 <= i < tok.vocab_size for i in new)
    text = tok.decode(prompt_ids + new)
    assert isinstance(text, str)
    assert text.startswith(prompt)
    assert isinstance(tok.decode(new), str)


def test_importing_the_model_needs_neither_sentencepiece_nor_safetensors(run_python):
    code = ("import sys, fullgraph.model; "
            "print(sorted({'sentencepiece', 'safetensors'} & set(sys.modules)))")
    [result] = run_python(["-c", code], timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
