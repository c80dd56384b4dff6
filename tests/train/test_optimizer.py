"""The optimizer and the learning-rate schedule."""

import pytest
import torch

from bertnli.config import TrainConfig
from bertnli.train.optimizer import lr_at


def test_linear_schedule_warms_up_then_decays():
    cfg = TrainConfig(lr=1.0, warmup=0.1)
    lrs = [lr_at(s, 100, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[50] == pytest.approx(50 / 90) and lrs[-1] == pytest.approx(1 / 90)
    assert lr_at(37, 100, TrainConfig(lr=0.3, schedule="constant")) == 0.3


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_the_fused_cpu_optimizer_takes_the_same_steps_as_pytorchs_default(optimizer):
    """make_optimizer fuses on the CPU too (several times faster a step); the update must stay the one
    PyTorch's default (unfused, a loop over tensors on the CPU) makes, weight-decay groups included."""
    from bertnli.model.bert import BertConfig, NLIClassifier
    from bertnli.train.optimizer import make_optimizer

    torch.manual_seed(0)
    model = NLIClassifier(BertConfig(50, 32, 2, 4, 64, 64, 2, 0.0))
    twin = NLIClassifier(BertConfig(50, 32, 2, 4, 64, 64, 2, 0.0))
    twin.load_state_dict(model.state_dict())
    cfg = TrainConfig(optimizer=optimizer, lr=1e-2, weight_decay=0.1)
    fused = make_optimizer(model, cfg, torch.device("cpu"))
    assert all(g["fused"] for g in fused.param_groups)
    plain = make_optimizer(twin, cfg, torch.device("cpu"), fused=False)
    assert not any(g["fused"] for g in plain.param_groups)
    start = [p.detach().clone() for p in model.parameters()]
    for _ in range(5):
        for m in (model, twin):
            for p in m.parameters():
                p.grad = torch.sin(p.detach() * 7 + 1)  # the same, deterministic "gradient" for both
        fused.step()
        plain.step()
    assert all(not torch.equal(p, s) for p, s in zip(model.parameters(), start))  # every tensor was stepped
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
