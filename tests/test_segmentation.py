"""torchvision's segmentation models on a dilated SCNet: a training step with a loss, logits at the input's size."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import scnet.segmentation as seg


def test_deeplabv3_scnet50_trains_and_predicts_at_an_odd_size() -> None:
    torch.manual_seed(0)
    model = seg.deeplabv3("scnet50", num_classes=5, output_stride=8, aux_loss=True).train()
    x, target = torch.randn(2, 3, 97, 130), torch.randint(0, 5, (2, 97, 130))
    out = model(x)
    loss = F.cross_entropy(out["out"], target) + 0.5 * F.cross_entropy(out["aux"], target)  # torchvision's recipe
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.layer4[0].scconv.k4[0].weight.grad is not None
    # Output stride 8: layer3 and layer4 are dilated, not strided.
    assert model.backbone.layer4[0].scconv.k4[0].dilation == (2, 2) and model.backbone.layer4[1].k1[0].dilation == (4, 4)
    model.eval()
    with torch.no_grad():
        logits = model(x[:1])["out"]
    assert logits.shape == (1, 5, 97, 130) and torch.isfinite(logits).all()


@pytest.mark.parametrize("build", [seg.fcn, seg.lraspp])
def test_fcn_and_lraspp_give_logits_of_the_input_size(build) -> None:
    model = build("scnet50", num_classes=3, output_stride=16).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 65, 81))["out"]
    assert out.shape == (1, 3, 65, 81)


def test_output_stride_must_suit_segmentation() -> None:
    with pytest.raises(ValueError, match="output_stride must be 8 or 16 for segmentation, got 32"):
        seg.deeplabv3("scnet_demo", output_stride=32)
