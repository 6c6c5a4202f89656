"""A model trained by scnet's tools, exported to timm's Hub layout, reloaded by timm and by scnet: are the outputs
identical on every Fashion-MNIST test image?

    python scripts/hub_roundtrip.py runs/study/scnet_demo-seed0/weights-best.safetensors --out docs/results/hub-export
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import timm
import torch

import scnet
from scnet.data import build_datasets
from scnet.export import export_hf


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a training checkpoint or release of a Fashion-MNIST model")
    p.add_argument("--out", type=Path, required=True, help="report folder; the Hub folder goes in OUT/hub (not committed)")
    args = p.parse_args()
    loaded = scnet.load_model(file=args.checkpoint)
    hub = export_hf(loaded, args.out / "hub")
    by_timm = timm.create_model(f"local-dir:{hub}", pretrained=True).eval()
    by_scnet = scnet.create_model(f"local-dir:{hub}").eval()
    _, test, info = build_datasets(loaded.info.name)
    x, y = test.batch(torch.arange(len(test)))  # (N, C, H, W) normalised as in training, all test images
    with torch.inference_mode():
        want, got_timm, got_scnet = loaded.model(x), by_timm(x), by_scnet(x)
    data_cfg = timm.data.resolve_data_config(model=by_timm)
    result = dict(
        command="python scripts/hub_roundtrip.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        checkpoint=args.checkpoint, arch=loaded.arch, images=len(test),
        max_abs_diff_timm=(got_timm - want).abs().max().item(), max_abs_diff_scnet=(got_scnet - want).abs().max().item(),
        accuracy=100.0 * (want.argmax(1) == y).float().mean().item(), accuracy_timm=100.0 * (got_timm.argmax(1) == y).float().mean().item(),
        timm_data_config={k: list(v) if isinstance(v, tuple) else v for k, v in data_cfg.items()},
        label_names=by_timm.pretrained_cfg.get("label_names"), files=sorted(f.name for f in hub.iterdir()),
    )
    (args.out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
