"""Fine-tuning conventions of dense-prediction users: frozen stages, frozen norms, and starting from weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

import scnet
from scnet.cli import main
from scnet.files import read_checkpoint


def _norms(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches_tracked" in k}


def test_frozen_stages_and_norm_eval_keep_what_they_freeze() -> None:
    torch.manual_seed(0)
    model = scnet.create_model("scnet_demo", num_classes=5, in_chans=1, frozen_stages=2, norm_eval=True).train()
    frozen = ("conv1.", "bn1.", "layer1.", "layer2.")
    before = {k: v.clone() for k, v in model.named_parameters()}
    stats = _norms(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(torch.randn(8, 1, 28, 28)), torch.randint(0, 5, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = dict(model.named_parameters())
    for k, v in after.items():
        if k.startswith(frozen):
            assert not v.requires_grad and v.grad is None and torch.equal(v, before[k]), k
    assert all(not torch.equal(after[k], before[k]) for k in after if k.startswith(("layer3.", "layer4.", "fc.")) and "bn" not in k)
    assert all(torch.equal(v, stats[k]) for k, v in _norms(model).items())  # every running statistic, bit for bit
    assert not any(m.training for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert model.layer3.training and not model.layer1.training


def test_frozen_stages_out_of_range_is_one_clear_error() -> None:
    for bad in (5, -2, 1.5, True):
        with pytest.raises(ValueError, match=r"frozen_stages must be an integer from -1 \(nothing frozen\) to 4"):
            scnet.create_model("scnet_demo", frozen_stages=bad)


def test_train_starts_from_weights_with_a_new_head(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = scnet.create_model("scnet_demo", num_classes=10, in_chans=1)  # e.g. trained on 10 classes
    torch.save(source.state_dict(), tmp_path / "ten-classes.pth")
    out = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--stem-type", "small", "--epochs", "1", "--batch-size", "32",
                 "--checkpoint", str(tmp_path / "ten-classes.pth"), "--frozen-stages", "1", "--norm-eval", "--out", str(out)]) == 0
    assert "from the weights of" in capsys.readouterr().out
    state = read_checkpoint(out / "checkpoint-last.pth")["model"]
    own = source.state_dict()
    kept = [k for k in own if k.startswith(("conv1.", "bn1.", "layer1."))]  # frozen, so still the starting weights
    assert kept and all(torch.equal(state[k], own[k]) for k in kept)
    assert state["fc.weight"].shape == (4, 192 * 4)  # synthetic data has 4 classes: a new head


def test_pretrained_offline_says_where_to_put_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    assert main(["train", "--model", "scnet50", "--pretrained", "--data", "synthetic", "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "could not download" in err and "scnet50-dc6a7e87.pth" in err and err.count("\n") == 1
