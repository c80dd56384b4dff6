"""Two tokenizers behind one small interface: d2l's word vocabulary and WordPiece.

Both turn a list of texts into lists of ids without special tokens; packing adds
`<cls>`/`<sep>` later (encode.py). `text_field` says which SNLI column a tokenizer reads:
the d2l vocabulary was built on the binary-parse words, WordPiece on raw sentences.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from bertnli import BertnliError


@dataclass
class D2LTokenizer:
    """d2l: lowercased whitespace words looked up in the archive's `vocab.json`."""

    idx_to_token: list[str]
    source: Path | None = None
    text_field: str = "parse"
    words_are_independent: bool = False  # true, but encode_batch is already one dict lookup per word

    def __post_init__(self) -> None:
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}
        for special in ("<unk>", "<pad>", "<cls>", "<sep>"):
            if special not in self.token_to_idx:
                raise BertnliError(f"vocab.json lacks {special}; is this a d2l BERT vocabulary?")
        self.unk_id = self.token_to_idx["<unk>"]
        self.pad_id = self.token_to_idx["<pad>"]
        self.cls_id = self.token_to_idx["<cls>"]
        self.sep_id = self.token_to_idx["<sep>"]

    @classmethod
    def from_file(cls, path: str | Path) -> "D2LTokenizer":
        path = Path(path)
        try:
            tokens = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise BertnliError(f"cannot read d2l vocabulary {path}: {e}") from None
        if not isinstance(tokens, list):
            raise BertnliError(f"{path} is not a d2l vocab.json (a JSON list of tokens)")
        return cls(tokens, path)

    @property
    def vocab_size(self) -> int:
        return len(self.idx_to_token)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        get, unk = self.token_to_idx.get, self.unk_id
        return [[get(w, unk) for w in t.lower().split()] for t in texts]

    def fingerprint(self) -> str:
        return "d2l-" + hashlib.sha256("\n".join(self.idx_to_token).encode()).hexdigest()[:16]

    def save(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "vocab.json").write_text(json.dumps(self.idx_to_token), encoding="utf-8")


class WordPieceTokenizer:
    """WordPiece through the `tokenizers` library, from `tokenizer.json` or else `vocab.txt`."""

    text_field = "raw"

    def __init__(self, folder: str | Path, lowercase: bool = True):
        from tokenizers import Tokenizer
        from tokenizers.implementations import BertWordPieceTokenizer

        self.folder = Path(folder)
        tj, vt = self.folder / "tokenizer.json", self.folder / "vocab.txt"
        if tj.is_file():
            self._tok = Tokenizer.from_file(str(tj))
        elif vt.is_file():
            self._tok = BertWordPieceTokenizer(str(vt), lowercase=lowercase)._tokenizer
        else:
            raise BertnliError(f"no tokenizer.json or vocab.txt in {self.folder}; is this a Hugging Face BERT folder?")
        # We pack and pad ourselves: a checkpoint's stored truncation/padding would fight encode.py.
        self._tok.no_truncation()
        self._tok.no_padding()
        ids = {t: self._tok.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]")}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise BertnliError(
                f"tokenizer in {self.folder} lacks {', '.join(missing)}; not a BERT WordPiece vocabulary"
            )
        self.cls_id, self.sep_id, self.pad_id, self.unk_id = ids["[CLS]"], ids["[SEP]"], ids["[PAD]"], ids["[UNK]"]
        # BERT's normalizer works per character and its pre-tokenizer splits on whitespace first, so a
        # text's ids are its whitespace-separated words' ids concatenated: encode.py then tokenizes each
        # distinct word once (SNLI's 16M words are ~60k distinct ones), 4x faster than text by text.
        self.words_are_independent = type(self._tok.pre_tokenizer).__name__ in (
            "BertPreTokenizer",
            "WhitespaceSplit",
        ) and type(self._tok.normalizer).__name__ in ("BertNormalizer", "Lowercase", "NoneType")

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # encode_batch_fast (tokenizers >= 0.21) skips the character offsets nobody here reads.
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        return [e.ids for e in encode(texts, add_special_tokens=False)]

    def fingerprint(self) -> str:
        return "wp-" + hashlib.sha256(self._tok.to_str().encode()).hexdigest()[:16]

    def save(self, folder: str | Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
            src = self.folder / name
            if src.is_file():
                shutil.copy2(src, Path(folder) / name)


Tokenizer = D2LTokenizer | WordPieceTokenizer


def load_tokenizer(folder: str | Path) -> Tokenizer:
    """The tokenizer stored beside a checkpoint: `vocab.json` means d2l, else WordPiece."""
    folder = Path(folder)
    if (folder / "vocab.json").is_file():
        return D2LTokenizer.from_file(folder / "vocab.json")
    return WordPieceTokenizer(folder)
