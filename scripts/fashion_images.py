"""Write Fashion-MNIST test images as PNG files (the first N of each class), for ``scnet cam`` and ``scnet predict``.

    python scripts/fashion_images.py OUT_DIR [--per-class N] [--data-dir DIR]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from scnet.data import FASHION_CLASSES, build_datasets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--per-class", type=int, default=1)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    _, val, _ = build_datasets("fashion_mnist", args.data_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {c: 0 for c in range(10)}
    for index in range(len(val)):
        label = int(val.labels[index])
        if counts[label] >= args.per_class:
            continue
        counts[label] += 1
        name = FASHION_CLASSES[label].lower().replace("/", "-").replace(" ", "-")
        Image.fromarray(val.images[index, 0].numpy(), mode="L").save(out / f"test{index:05d}-{name}.png")
        if all(n >= args.per_class for n in counts.values()):
            break
    print(f"wrote {sum(counts.values())} images to {out}")


if __name__ == "__main__":
    main()
