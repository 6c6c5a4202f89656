"""torch.hub: the repository's hubconf.py exposes every model."""
from pathlib import Path

import torch

import scnet

REPO = str(Path(__file__).resolve().parent.parent)


def test_hub_load_local() -> None:
    model = torch.hub.load(REPO, "scnet50", source="local", num_classes=10, trust_repo=True)
    assert isinstance(model, scnet.ResNet) and model.fc.out_features == 10
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_hub_entry_points_and_help() -> None:
    hubconf = torch.hub._import_module("hubconf", str(Path(REPO) / "hubconf.py"))
    public = sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_") and n in scnet.list_models())
    assert public == scnet.list_models()
    assert "SCNet-50 v1d" in hubconf.scnet50_v1d.__doc__
