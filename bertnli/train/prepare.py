"""A run's inputs: the model and its tokenizer, then each split encoded through the on-disk cache.

Shared by training, the sweep's trials and the `evaluate` command, so every one of them sees
the same encoded examples and the same split digests.
"""

from __future__ import annotations

from dataclasses import dataclass

from bertnli import BadInput
from bertnli.config import TrainConfig
from bertnli.data.cache import encode_file
from bertnli.data.encode import EncodedSplit
from bertnli.data.snli import split_path
from bertnli.data.subsets import subset_rows
from bertnli.data.tokenize import Tokenizer
from bertnli.model.bert import NLIClassifier
from bertnli.model.presets import build_model, check_model_spec, max_positions
from bertnli.train.runtime import resolve_device


@dataclass
class Prepared:
    model: NLIClassifier
    tokenizer: Tokenizer
    train: EncodedSplit
    dev: EncodedSplit
    test: EncodedSplit | None
    digests: dict[str, str]


def check_inputs(cfg: TrainConfig) -> None:
    """Refuse what would fail a run at its start (a model that does not load, a max_len past its positions, a data
    folder without its train and dev splits, a device not here) before its MLflow run and output folder are made:
    a mistyped option leaves no failed run in the store and no empty folder behind."""
    resolve_device(cfg.device)
    check_model_spec(cfg.model)
    check_max_len(cfg.max_len, max_positions(cfg.model))
    for split in ("train", "dev"):
        split_path(cfg.data, split)


def check_max_len(max_len: int, positions: int | None) -> None:
    if positions is not None and max_len > positions:
        raise BadInput(f"max_len {max_len} exceeds the model's {positions} positions; lower --max-len")


def prepare(cfg: TrainConfig, need_train: bool = True) -> Prepared:
    """Model + tokenizer, then each split encoded through the cache (limits, then the train fraction, applied after)."""
    model, tok = build_model(cfg.model, cfg.num_layers, cfg.dropout, cfg.seed, num_heads=cfg.num_heads)
    check_max_len(cfg.max_len, model.config.max_position)
    paths = {
        "train": split_path(cfg.data, "train", required=need_train),
        "dev": split_path(cfg.data, "dev", required=True),
        "test": split_path(cfg.data, "test", required=False),
    }
    enc, digests = {}, {}
    for name, path in paths.items():
        if path is None:
            continue
        e, digests[name] = encode_file(path, name, tok, cfg.max_len, cfg.truncation, cfg.cache_dir)
        enc[name] = e.head(cfg.limit_train if name == "train" else cfg.limit_eval)
    if "train" in enc and cfg.train_fraction < 1:
        enc["train"] = enc["train"].take(subset_rows(enc["train"].labels, cfg.train_fraction))
    if paths["test"] is None and cfg.eval_test:
        print(f"note: no test split in {cfg.data}; test accuracy will not be reported")
    return Prepared(model, tok, enc.get("train"), enc["dev"], enc.get("test"), digests)
