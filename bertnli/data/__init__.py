"""SNLI on disk and on its way to the model: readers, tokenizers, truncation + packing, the encoded-split
cache, batches and nested subsets. Pure functions on lists and numpy arrays; no model, no MLflow."""
