"""SCNet FPN backbones in torchvision's detectors: a training step and an eval forward on small images."""
import pytest
import torch
from torchvision.ops import FrozenBatchNorm2d

import scnet.detection as det
from seeded import seeded_state_dict
import scnet


def _targets(masks: bool = False) -> list[dict]:
    out = []
    for i in range(2):
        t = dict(boxes=torch.tensor([[10.0, 12.0, 70.0, 90.0], [30.0, 5.0, 100.0, 60.0]]) + i, labels=torch.tensor([1, 3]))
        if masks:
            m = torch.zeros(2, 128, 128, dtype=torch.uint8)
            m[0, 12:90, 10:70] = 1
            m[1, 5:60, 30:100] = 1
            t["masks"] = m
        out.append(t)
    return out


def test_fpn_backbone_contract() -> None:
    backbone = det.fpn_backbone("scnet50", trainable_layers=3)
    assert backbone.out_channels == 256
    feats = backbone(torch.randn(1, 3, 128, 96))
    assert list(feats) == ["0", "1", "2", "3", "pool"] and all(f.shape[1] == 256 for f in feats.values())
    assert [f.shape[-1] for f in feats.values()] == [24, 12, 6, 3, 2]
    frozen = {n.split(".")[1] for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "layer1"}  # FrozenBatchNorm2d holds buffers, not parameters
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    with pytest.raises(ValueError, match="trainable_layers must be in 0..5, got 6"):
        det.fpn_backbone("scnet50", trainable_layers=6)


def test_fpn_backbone_loads_official_layout_weights(tmp_path) -> None:
    # Official checkpoints (with BN step counters) load into the frozen-norm backbone.
    state = seeded_state_dict(scnet.create_model("scnet50").state_dict(), seed=12)
    torch.save(state, tmp_path / "w.pth")
    backbone = det.fpn_backbone("scnet50", checkpoint_path=str(tmp_path / "w.pth"))
    torch.testing.assert_close(backbone.body.layer1[0].bn1_a.running_var, state["layer1.0.bn1_a.running_var"])


@pytest.mark.parametrize("build,masks", [(det.fasterrcnn, False), (det.maskrcnn, True), (det.retinanet, False)])
def test_detector_train_step_and_eval(build, masks: bool) -> None:
    torch.manual_seed(0)
    model = build("scnet50", num_classes=5, min_size=128, max_size=128)
    images = [torch.rand(3, 128, 128), torch.rand(3, 112, 128)]
    model.train()
    losses = model(images, _targets(masks))
    total = sum(losses.values())
    assert torch.isfinite(total) and ("loss_mask" in losses) == masks
    total.backward()
    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2 and {"boxes", "labels", "scores"} <= set(detections[0])
