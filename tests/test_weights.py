"""The one weight-loading path: downloads (file:// and a loopback server), hashes, file formats, errors."""
from __future__ import annotations

import functools
import hashlib
import http.server
import pickle
import socket
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import scnet
from scnet.models import SCBottleneck, weights
from scnet.models.resolve import load_pretrained
from scnet.models.spec import ModelSpec
from scnet.models.weights import IMAGENET_MEAN, IMAGENET_STD, WeightsUnavailableError
from seeded import seeded_input, seeded_state_dict


def _tiny(num_classes: int = 10) -> scnet.ResNet:
    return scnet.ResNet(SCBottleneck, (1, 1, 1, 1), num_classes=num_classes).eval()


def _save_seeded(model: torch.nn.Module, path: Path, **save_kwargs) -> dict:
    state = seeded_state_dict(model.state_dict(), seed=7)
    torch.save(state, path, **save_kwargs)
    return state


def _published(url: str, sha256: str) -> ModelSpec:
    return ModelSpec("imagenet", 1000, 3, 224, IMAGENET_MEAN, IMAGENET_STD, (), crop_pct=0.875, url=url, sha256=sha256)


def _spec_for(path: Path, url: str, prefix_len: int = 8) -> ModelSpec:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return _published(url, digest[:prefix_len])


def _assert_loaded(model: torch.nn.Module, state: dict) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.fixture
def hub_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


@pytest.fixture
def loopback_server(tmp_path: Path):
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow
def test_create_model_pretrained_from_a_file_url(tmp_path: Path, hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The full user path with a real-size scnet50 file: download, hash check, cache, strict load.
    src = tmp_path / "scnet50-upload.pth"
    state = _save_seeded(scnet.create_model("scnet50"), src)
    monkeypatch.setitem(weights.PRETRAINED, "scnet50", _spec_for(src, src.as_uri()))
    model = scnet.create_model("scnet50", pretrained=True)
    _assert_loaded(model, state)
    assert (hub_dir / "scnet50-upload.pth").is_file()
    src.unlink()  # the second call uses the cache
    _assert_loaded(scnet.create_model("scnet50", pretrained=True), state)


def test_download_from_loopback_server(loopback_server, hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = loopback_server
    path = root / "tiny-weights.pth"
    state = _save_seeded(_tiny(), path)
    monkeypatch.setitem(weights.PRETRAINED, "tiny", _spec_for(path, f"{base}/tiny-weights.pth"))
    _assert_loaded(load_pretrained(_tiny(), "tiny", progress=False), state)
    assert (hub_dir / "tiny-weights.pth").read_bytes() == path.read_bytes()


def test_wrong_hash_is_refused_and_nothing_is_kept(loopback_server, hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, base = loopback_server
    _save_seeded(_tiny(), root / "tiny-weights.pth")
    monkeypatch.setitem(weights.PRETRAINED, "tiny", _published(f"{base}/tiny-weights.pth", "00000000"))
    with pytest.raises(WeightsUnavailableError, match="did not match its sha256 prefix 00000000"):
        load_pretrained(_tiny(), "tiny", progress=False)
    assert not (hub_dir / "tiny-weights.pth").exists()


def test_corrupt_cached_file_is_refused(tmp_path: Path, hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "tiny-weights.pth"
    _save_seeded(_tiny(), src)
    monkeypatch.setitem(weights.PRETRAINED, "tiny", _spec_for(src, src.as_uri()))
    hub_dir.mkdir(parents=True)
    (hub_dir / "tiny-weights.pth").write_bytes(b"truncated")
    with pytest.raises(WeightsUnavailableError, match="corrupt or not the published one; delete it"):
        load_pretrained(_tiny(), "tiny")


def test_offline_error_names_the_file_and_where_to_put_it(hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/scnet50-dc6a7e87.pth"
    monkeypatch.setitem(weights.PRETRAINED, "scnet50", _published(url, "dc6a7e87"))
    with pytest.raises(WeightsUnavailableError) as info:
        scnet.create_model("scnet50", pretrained=True)
    message = str(info.value)
    assert url in message and str(hub_dir / "scnet50-dc6a7e87.pth") in message and "checkpoint_path" in message


def test_scnet101_v1d_has_no_official_weights() -> None:
    with pytest.raises(WeightsUnavailableError, match="scnet101_v1d has no published pretrained weights"):
        scnet.create_model("scnet101_v1d", pretrained=True)


def test_official_weight_table() -> None:
    table = scnet.PRETRAINED
    assert sorted(table) == ["scnet101", "scnet50", "scnet50_v1d"]
    for name, spec in table.items():
        assert spec.filename.startswith(name + "-") and spec.filename == f"{name}-{spec.sha256}.pth" and spec.arch == name
    assert (table["scnet50"].top1, table["scnet50_v1d"].top1, table["scnet101"].top1) == (77.81, 80.47, 78.94)
    assert scnet.create_model("scnet50").pretrained_cfg["crop_pct"] == 0.875


# ---- checkpoint_path ------------------------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True])
def test_checkpoint_path_official_pth(tmp_path: Path, legacy: bool) -> None:
    path = tmp_path / "official.pth"
    state = _save_seeded(_tiny(), path, _use_new_zipfile_serialization=not legacy)
    _assert_loaded(scnet.load_checkpoint(_tiny(), path), state)


def test_checkpoint_path_safetensors_and_wrappers(tmp_path: Path) -> None:
    state = seeded_state_dict(_tiny().state_dict(), seed=8)
    save_file(state, str(tmp_path / "w.safetensors"))
    _assert_loaded(scnet.load_checkpoint(_tiny(), tmp_path / "w.safetensors"), state)
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "ddp.pth")
    _assert_loaded(scnet.load_checkpoint(_tiny(), tmp_path / "ddp.pth"), state)


def test_create_model_with_checkpoint_path(tmp_path: Path) -> None:
    path = tmp_path / "scnet50.safetensors"
    model = scnet.create_model("scnet50", num_classes=3)
    state = seeded_state_dict(model.state_dict(), seed=9)
    save_file(state, str(path))
    loaded = scnet.create_model("scnet50", num_classes=3, checkpoint_path=str(path)).eval()
    _assert_loaded(loaded, state)


def test_other_num_classes_keeps_the_backbone(tmp_path: Path) -> None:
    path = tmp_path / "imagenet.pth"
    state = _save_seeded(_tiny(num_classes=1000), path)
    model = scnet.load_checkpoint(_tiny(num_classes=10), path)
    assert torch.equal(model.layer4[0].scconv.k4[0].weight, state["layer4.0.scconv.k4.0.weight"])
    assert model.fc.weight.shape == (10, 2048)


def test_mismatched_checkpoint_names_the_differences(tmp_path: Path) -> None:
    path = tmp_path / "plain.pth"
    torch.save(scnet.create_model("scnet50_plain").state_dict(), path)
    with pytest.raises(ValueError, match=r"missing \(e\.g\. layer1\.0\.conv1_a\.weight.*unexpected"):
        scnet.load_checkpoint(scnet.create_model("scnet50"), path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scnet.load_checkpoint(_tiny(), tmp_path / "nope.pth")


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Payload(str(marker))}, f, protocol=2)
    with pytest.raises(ValueError, match="refusing to load .*needs the Python global 'getattr'"):
        scnet.load_checkpoint(_tiny(), path)
    assert not marker.exists()
    with open(path, "rb") as f:  # control: an unsafe load really would run the payload
        pickle.load(f)
    assert marker.exists()


def test_pretrained_model_predicts_like_the_loaded_weights(tmp_path: Path) -> None:
    # Loading must give the same function as the weights in the file (not only equal tensors).
    path = tmp_path / "w.pth"
    state = _save_seeded(_tiny(), path)
    ref = _tiny()
    ref.load_state_dict(state)
    x = seeded_input((1, 3, 64, 64))
    with torch.no_grad():
        torch.testing.assert_close(scnet.load_checkpoint(_tiny(), path)(x), ref(x))


def test_create_model_pretrained_adapts_input_channels_and_head(tmp_path: Path, hub_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Published RGB weights into a grayscale, 10-class model through ``create_model``, as ``scnet train
    --pretrained`` does: the first convolution summed over its input channels (timm's rule for one channel), the
    head left at its initialisation, everything else loaded as it is ('wrong shape' for conv1 before)."""
    src = tmp_path / "scnet_demo-rgb.pth"
    state = _save_seeded(scnet.create_model("scnet_demo", in_chans=3, num_classes=1000), src)
    monkeypatch.setitem(weights.PRETRAINED, "scnet_demo", _spec_for(src, src.as_uri()))
    model = scnet.create_model("scnet_demo", pretrained=True, in_chans=1, num_classes=10)
    own = model.state_dict()
    torch.testing.assert_close(own["conv1.weight"], state["conv1.weight"].sum(dim=1, keepdim=True))
    assert own["fc.weight"].shape == (10, state["fc.weight"].shape[1])
    for k, v in own.items():
        if k not in ("conv1.weight", "fc.weight", "fc.bias"):
            assert torch.equal(v, state[k]), k
    with pytest.raises(ValueError, match="wrong shape"):  # a resumed run keeps no allowance
        weights.load_weights(model, state, str(src), classifier=None)
