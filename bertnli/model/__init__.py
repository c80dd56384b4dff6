"""The network: a plain-PyTorch BERT encoder with the NLI head, the weight key maps that load d2l and
Hugging Face checkpoints into it, the presets, and d2l's archives."""
