"""A model folder's config.json is checked against its weights' tensor shapes, and against sane bounds, before
anything is allocated: a crafted config cannot drive the process out of memory or into a traceback."""

import json
import shutil

import pytest

import bertnli.model.presets
from bertnli import BadInput, BertnliError
from bertnli.model.presets import build_model, minilm_folder

TINY = {
    "vocab_size": 30522,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
}


@pytest.fixture
def hf_folder(tmp_path):
    """A tiny Hugging Face BERT folder written by transformers itself, with MiniLM's tokenizer."""
    transformers = pytest.importorskip("transformers")
    if minilm_folder() is None:
        pytest.skip("the MiniLM package is not installed")
    folder = tmp_path / "tiny-bert"
    transformers.BertModel(transformers.BertConfig(**TINY)).save_pretrained(folder, safe_serialization=True)
    for name in ("tokenizer.json", "vocab.txt"):
        shutil.copy(minilm_folder() / name, folder / name)
    return folder


@pytest.fixture
def nothing_allocated(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a model was built before its config was checked")

    monkeypatch.setattr(bertnli.model.presets, "NLIClassifier", refuse)


def with_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return f"hf:{folder}"


def test_a_tiny_folder_loads(hf_folder):
    model, _ = build_model(f"hf:{hf_folder}")
    assert model.config.hidden_size == 32 and model.config.num_layers == 2


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"hidden_size": 8192, "num_hidden_layers": 8}, "hidden_size"),  # ~27 GB asked of 0.1 MB of weights
        ({"hidden_size": 10**7}, "hidden_size"),  # 1.2 TB
        ({"num_hidden_layers": 48}, "num_hidden_layers"),
        ({"intermediate_size": 4096}, "intermediate_size"),
        ({"vocab_size": 10**6}, "vocab_size"),
        ({"max_position_embeddings": 512}, "max_position_embeddings"),
        ({"num_attention_heads": 0}, "num_attention_heads"),
        ({"num_attention_heads": 3}, "num_attention_heads"),  # does not divide 32
        ({"num_attention_heads": -2}, "num_attention_heads"),
        ({"intermediate_size": -64}, "intermediate_size"),
        ({"hidden_size": "big"}, "hidden_size"),
    ],
)
def test_a_config_that_does_not_fit_its_weights_is_one_line_naming_the_field(
    hf_folder, nothing_allocated, changes, named
):
    with pytest.raises(BadInput) as e:
        build_model(with_config(hf_folder, **changes))
    message = str(e.value)
    assert named in message and "config.json" in message and "\n" not in message


def test_an_empty_weights_file_is_refused_before_the_config_is_used(hf_folder, nothing_allocated):
    (hf_folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(BertnliError, match="model.safetensors"):
        build_model(with_config(hf_folder, hidden_size=8192, num_hidden_layers=8))
