"""The encoded-split cache: a round trip, keys, and a hit that does not read the file."""

import numpy as np
from conftest import make_rows, small_vocabulary, write_jsonl_gz

from bertnli.data.cache import encode_file, encode_split
from bertnli.data.snli import read_split
from bertnli.files import file_digest


def test_cache_round_trip_and_keying(tiny_snli, tmp_path):
    tok = small_vocabulary()
    split = read_split(tiny_snli, "dev")
    a = encode_split(split, tok, 16, "ratio", tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    b = encode_split(split, tok, 16, "ratio", tmp_path)  # from the cache
    assert all(
        np.array_equal(getattr(a, k), getattr(b, k)) for k in ("ids", "offsets", "seg1", "labels", "example_ids")
    )
    assert list(b.example_ids) == split.ids and list(b.head(3).example_ids) == split.ids[:3]
    encode_split(split, tok, 16, "longest_first", tmp_path)
    encode_split(split, tok, 20, "ratio", tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 3  # truncation and max_len are part of the key
    files[0].write_bytes(b"garbage")  # a damaged entry is rebuilt, not trusted
    c = encode_split(split, tok, 16, "ratio", tmp_path)
    assert np.array_equal(a.ids, c.ids)


def test_a_cache_hit_does_not_parse_the_file_and_an_edit_misses(tiny_snli, tmp_path, monkeypatch):
    import shutil

    import bertnli.data.cache

    tok = small_vocabulary()
    data = tmp_path / "data"
    shutil.copytree(tiny_snli, data)
    path = data / "snli_1.0_dev.jsonl.gz"
    cold, digest = encode_file(path, "dev", tok, 16, "ratio", tmp_path / "cache")
    assert digest == file_digest(path)

    def no_parsing(*a, **k):
        raise AssertionError("a cache hit parsed the JSON")

    with monkeypatch.context() as m:
        m.setattr(bertnli.data.cache, "read_file", no_parsing)
        warm, _ = encode_file(path, "dev", tok, 16, "ratio", tmp_path / "cache")
    assert all(np.array_equal(getattr(cold, k), getattr(warm, k)) for k in ("ids", "offsets", "seg1", "labels"))
    write_jsonl_gz(path, make_rows(40, 9))  # the file changed: its digest changes, the old entry is not used
    edited, digest2 = encode_file(path, "dev", tok, 16, "ratio", tmp_path / "cache")
    assert digest2 != digest and len(edited) != len(cold)
