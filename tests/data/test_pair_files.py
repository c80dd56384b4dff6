"""`predict --file` input: lines are split on newlines only, a BOM is dropped, a header row is not a pair."""

import json

import pytest

from bertnli import BadInput
from bertnli.data.pair_files import read_pairs


def test_a_jsonl_string_holding_a_line_separator_is_one_pair(tmp_path):
    """U+2028 is valid inside a JSON string; str.splitlines() cut the line there and called it invalid JSON."""
    path = tmp_path / "pairs.jsonl"
    rows = [{"sentence1": "A man\u2028sings.", "sentence2": "A person sings."}, {"sentence1": "a", "sentence2": "b"}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert read_pairs(str(path)) == (["A man\u2028sings.", "a"], ["A person sings.", "b"])


def test_a_tsv_cell_holding_next_line_keeps_the_line_numbers(tmp_path):
    """U+0085 (NEL) inside a cell is text, not a line break: the pair stays whole and a bad line is named right."""
    path = tmp_path / "pairs.tsv"
    path.write_text("A man\u0085sings.\tA person sings.\nno tab here\n", encoding="utf-8")
    with pytest.raises(BadInput, match=r"pairs.tsv:2: expected premise<TAB>hypothesis"):
        read_pairs(str(path))
    path.write_text("A man\u0085sings.\tA person sings.\r\nTwo dogs run.\tDogs run.\r\n", encoding="utf-8")
    assert read_pairs(str(path)) == (["A man\u0085sings.", "Two dogs run."], ["A person sings.", "Dogs run."])


@pytest.mark.parametrize("header", ["premise\thypothesis", "sentence1\tsentence2", "Premise\tHypothesis\tlabel"])
def test_a_bom_and_a_header_row_are_not_scored_as_a_pair(tmp_path, header):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(("\ufeff" + header + "\nA man sings.\tA person sings.\n").encode("utf-8"))
    assert read_pairs(str(path)) == (["A man sings."], ["A person sings."])


def test_a_bom_before_jsonl_is_dropped(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_bytes(("\ufeff" + json.dumps({"sentence1": "a", "sentence2": "b"}) + "\n").encode("utf-8"))
    assert read_pairs(str(path)) == (["a"], ["b"])
