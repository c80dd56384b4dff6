"""SNLI readers and the download path, against real files and a real HTTP server."""

import json
import zipfile

import pytest
from conftest import make_rows, write_jsonl_gz

from bertnli import BertnliError
from bertnli.data.snli import fetch_snli, parse_to_text, read_file, read_split
from bertnli.files import file_digest

TXT_HEADER = "\t".join(
    [
        "gold_label",
        "sentence1_binary_parse",
        "sentence2_binary_parse",
        "sentence1_parse",
        "sentence2_parse",
        "sentence1",
    ]
    + ["sentence2", "captionID", "pairID", "label1", "label2", "label3", "label4", "label5"]
)


def txt_line(r):
    return "\t".join(
        [
            r["gold_label"],
            r["sentence1_binary_parse"],
            r["sentence2_binary_parse"],
            "(ROOT)",
            "(ROOT)",
            r["sentence1"],
            r["sentence2"],
            "c",
            r["pairID"],
            r["gold_label"],
            "",
            "",
            "",
            "",
        ]
    )


def test_parse_to_text_is_d2l_reader():
    assert parse_to_text("( ( Two women ) ( ( are  embracing ) . ) )") == "Two women are embracing ."


def test_jsonl_and_txt_readers_agree_and_drop_dash(tmp_path):
    rows = make_rows(40)
    write_jsonl_gz(tmp_path / "a.jsonl.gz", rows)
    (tmp_path / "b.txt").write_text("\n".join([TXT_HEADER, *map(txt_line, rows)]) + "\n")
    a, b = read_file(tmp_path / "a.jsonl.gz"), read_file(tmp_path / "b.txt")
    kept = [r for r in rows if r["gold_label"] != "-"]
    assert a.labels == b.labels == [{"entailment": 0, "contradiction": 1, "neutral": 2}[r["gold_label"]] for r in kept]
    assert a.premises_parse == b.premises_parse and a.hypotheses == b.hypotheses
    assert a.dropped == b.dropped == len(rows) - len(kept) > 0
    assert a.ids == b.ids == [r["pairID"] for r in kept]  # per-example predictions are keyed by pairID
    assert a.head(5).ids == a.ids[:5]


def test_rows_without_pair_id_are_keyed_by_line(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "pairID"} for r in make_rows(6)]
    split = read_file(write_jsonl_gz(tmp_path / "a.jsonl.gz", rows))
    assert split.ids == [f"line{i + 1}" for i, r in enumerate(rows) if r["gold_label"] != "-"]


def test_real_splits_have_documented_sizes(real_snli):
    sizes = {s: len(read_split(real_snli, s)) for s in ("train", "dev", "test")}
    assert sizes == {"train": 13713, "dev": 2966, "test": 2987}


def test_official_dev_test_sizes():
    from conftest import SHARED_DATA

    folder = SHARED_DATA / "snli"
    if not folder.is_dir():
        pytest.skip("official SNLI dev/test not present")
    assert len(read_split(folder, "dev")) == 9842 and len(read_split(folder, "test")) == 9824
    assert read_split(folder, "train", required=False) is None


@pytest.mark.parametrize(
    "content,expect",
    [
        ('{"gold_label": "neutral", "sentence1": "a"\n', r"bad\.jsonl:1: not a JSON object"),
        (
            '{"gold_label": "maybe", "sentence1": "a", "sentence2": "b", "sentence1_binary_parse": "a", '
            '"sentence2_binary_parse": "b"}\n',
            r":1: unknown gold_label 'maybe'",
        ),
        ('{"gold_label": "neutral", "sentence1": "a"}\n', r":1: missing sentence2"),
        ("", r"no labelled rows"),
    ],
)
def test_bad_rows_are_one_line_errors_with_line_numbers(tmp_path, content, expect):
    p = tmp_path / "bad.jsonl"
    p.write_text(content)
    with pytest.raises(BertnliError, match=expect) as e:
        read_file(p)
    assert "\n" not in str(e.value)


def test_error_names_the_right_line(tmp_path):
    p = tmp_path / "x.jsonl"
    rows = [json.dumps(r) for r in make_rows(5)]
    rows.insert(3, "{broken")
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(BertnliError, match=r"x\.jsonl:4:"):
        read_file(p)


def test_wrong_encoding_and_truncated_gzip(tmp_path):
    p = tmp_path / "latin.jsonl"
    row = make_rows(2)[1]
    row["sentence1"] += " caf\u00e9"
    p.write_bytes(json.dumps(row, ensure_ascii=False).encode("latin-1") + b"\n")
    with pytest.raises(BertnliError, match="not UTF-8"):
        read_file(p)
    g = write_jsonl_gz(tmp_path / "t.jsonl.gz", make_rows(200))
    g.write_bytes(g.read_bytes()[:-40])
    with pytest.raises(BertnliError, match="damaged"):
        read_file(g)


def test_missing_split_and_folder(tmp_path):
    with pytest.raises(BertnliError, match="not found"):
        read_split(tmp_path / "nope", "dev")
    with pytest.raises(BertnliError, match="no dev split"):
        read_split(tmp_path, "dev")
    assert read_split(tmp_path, "train", required=False) is None


# ---------------------------------------------------------------- download


def test_fetch_snli_from_a_mirror(file_server, tmp_path):
    """The real path: zip served over HTTP, sha1 checked, unpacked, then readable."""
    z = file_server.root / "snli_1.0.zip"
    rows = make_rows(30)
    with zipfile.ZipFile(z, "w") as zf:
        for split in ("train", "dev", "test"):
            zf.writestr(f"snli_1.0/snli_1.0_{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    folder = fetch_snli(tmp_path / "data", url=f"{file_server.url}/snli_1.0.zip", sha1=file_digest(z, "sha1"))
    assert len(read_split(folder, "dev")) == len([r for r in rows if r["gold_label"] != "-"])
    with pytest.raises(BertnliError, match="sha1"):
        fetch_snli(tmp_path / "data2", url=f"{file_server.url}/snli_1.0.zip", sha1="1" * 40)


def test_duplicate_pair_ids_are_named_with_their_lines_when_read(tmp_path, capsys):
    """Seen: duplicated pairIDs trained silently; `compare` then blamed "another --limit-eval?"."""
    rows = make_rows(12)
    rows[5]["pairID"] = rows[2]["pairID"]
    rows[9]["pairID"] = rows[2]["pairID"]
    path = write_jsonl_gz(tmp_path / "snli_1.0_dev.jsonl.gz", rows)
    split = read_file(path, "dev")
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"warning: {path}: pairID {rows[2]['pairID']!r} on lines 3, 6, 10 (1 id repeated); "
        "paired comparisons between runs need unique pairIDs"
    )
    assert split.ids.count(rows[2]["pairID"]) == 3  # the rows are kept: training on them is still sound


def test_compare_names_duplicate_ids_instead_of_blaming_limits():
    import pandas as pd

    from bertnli.analysis.compare import correctness

    frame = pd.DataFrame({"id": ["a", "b", "a"], "gold": [0, 1, 2], "pred": [0, 1, 1]})
    with pytest.raises(BertnliError, match=r"repeat example ids \(e\.g\. 'a'\).*unique pairIDs"):
        correctness([frame])
