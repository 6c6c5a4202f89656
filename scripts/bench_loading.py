"""Loading throughput of the same images as an image folder, as WebDataset shards and as a Hugging Face dataset.

The images: Fashion-MNIST training images (real photographs of clothes), 2,000 of them (200 a class), upscaled to
256x256 RGB and saved as JPEG (quality 90), so each costs about what a small ImageNet JPEG costs to decode. The
same files are then written as shards (``scnet shard``, 250 images each) and as a saved Hugging Face DatasetDict.
Each source is read through the loader ``scnet train`` builds for it (``runner._loaders``: the training transforms
at 224 px, RandomResizedCrop, flip, normalisation; batches of 64) with 0, 1 and 2 worker processes. A pass is one
epoch; the first pass of each case warms up (and starts its workers), the median of the next ``--passes`` is kept.
Cases run round-robin, so a slower stretch of the machine hits every case alike. Writes results.json, README.md
and loading.png in --out.

    python scripts/bench_loading.py --out docs/results/loading
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from scnet.data import FASHION_CLASSES, build_datasets
from scnet.data.sharding import shard_image_folder
from scnet.profile import describe_machine
from scnet.train import TrainConfig
from scnet.train.runner import RunData, _loaders

SOURCES = ("image folder", "shards", "Hugging Face")
WORKERS = (0, 1, 2)
BATCH = 64


def make_images(root: Path, per_class: int, val_per_class: int) -> None:
    """``root/folder/{train,val}/<class>/*.jpg``: Fashion-MNIST images at 256x256 RGB."""
    from PIL import Image

    train, val, _ = build_datasets("fashion_mnist")
    for split, data, count in (("train", train, per_class), ("val", val, val_per_class)):
        taken = {c: 0 for c in range(10)}
        for image, label in zip(data.images[:, 0].numpy(), data.labels.tolist()):
            if taken[label] == count:
                continue
            folder = root / "folder" / split / FASHION_CLASSES[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).convert("RGB").resize((256, 256), Image.BICUBIC).save(folder / f"{taken[label]:04d}.jpg", quality=90)
            taken[label] += 1


def make_hf(root: Path) -> None:
    from datasets import ClassLabel, Dataset, DatasetDict, Features
    from datasets import Image as HFImage

    classes = sorted(p.name for p in (root / "folder" / "train").iterdir())

    def split(name: str) -> Dataset:
        files = sorted((root / "folder" / name).glob("*/*.jpg"))
        return Dataset.from_dict({"image": [str(f) for f in files], "label": [classes.index(f.parent.name) for f in files]},
                                 features=Features({"image": HFImage(), "label": ClassLabel(names=classes)}))

    DatasetDict(train=split("train"), validation=split("val")).save_to_disk(str(root / "hf"))


def _source(root: Path, source: str) -> dict:
    return {"image folder": dict(data="imagefolder", data_dir=str(root / "folder")), "shards": dict(data=f"wds:{root / 'shards'}"),
            "Hugging Face": dict(data=f"hf:{root / 'hf'}")}[source]


def one_pass(loader, sampler, epoch: int) -> tuple[int, float]:
    sampler.set_epoch(epoch)
    if hasattr(loader, "dataset") and hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    start, images = time.perf_counter(), 0
    for batch, _ in loader:
        images += len(batch)
    return images, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/results/loading")
    p.add_argument("--work", default="/tmp/scnet-loading", help="where the images, shards and dataset are made")
    p.add_argument("--per-class", type=int, default=200)
    p.add_argument("--passes", type=int, default=3)
    args = p.parse_args()
    root, out = Path(args.work), Path(args.out)
    if not (root / "folder").is_dir():
        make_images(root, args.per_class, 20)
    if not (root / "shards" / "info.json").is_file():
        shard_image_folder(root / "folder", root / "shards", 250)
    if not (root / "hf").is_dir():
        make_hf(root)
    cases = {}
    for source in SOURCES:
        for workers in WORKERS:
            cfg = TrainConfig(**_source(root, source), workers=workers, batch_size=BATCH, image_size=224).validate()
            train, val, info = build_datasets(cfg.data, cfg.data_dir, image_size=224, val_data=cfg.val_data)
            loader, _, sampler = _loaders(cfg, RunData(train, val, info), 0, 1)
            one_pass(loader, sampler, 0)  # warm-up: starts the workers, fills the file cache
            cases[(source, workers)] = dict(loader=loader, sampler=sampler, rates=[])
    for epoch in range(1, args.passes + 1):
        for key, case in cases.items():
            images, seconds = one_pass(case["loader"], case["sampler"], epoch)
            case["rates"].append(images / seconds)
            print(f"{key[0]:>13}, {key[1]} workers: {images / seconds:7.0f} img/s", flush=True)
    write(out, root, args, {f"{s} / {w}": dict(source=s, workers=w, img_per_s=statistics.median(c["rates"]), passes=c["rates"])
                            for (s, w), c in cases.items()})


def write(out: Path, root: Path, args: argparse.Namespace, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    machine = describe_machine()
    sizes = {"image folder": sum(f.stat().st_size for f in (root / "folder" / "train").glob("*/*.jpg")),
             "shards": sum(f.stat().st_size for f in (root / "shards").glob("train-*.tar"))}
    (out / "results.json").write_text(json.dumps(dict(machine=machine, batch=BATCH, passes=args.passes, per_class=args.per_class,
                                                      bytes=sizes, results=results), indent=1) + "\n")
    rows = [f"| {s} | " + " | ".join(f"{results[f'{s} / {w}']['img_per_s']:,.0f}" for w in WORKERS) + " |" for s in SOURCES]
    text = f"""# Loading throughput: image folder, WebDataset shards, Hugging Face dataset

Command: `python scripts/bench_loading.py --out {out}` (images made from Fashion-MNIST: {10 * args.per_class:,} training
images at 256x256, JPEG quality 90; {sizes['image folder'] / 1e6:.1f} MB as files, {sizes['shards'] / 1e6:.1f} MB as
shards of 250).

Machine: {machine}. Each source is read through the loader `scnet train` builds for it (training transforms at 224 px,
batches of {BATCH}); images per second, the median of {args.passes} passes after a warm-up pass:

| source | 0 workers | 1 worker | 2 workers |
|---|---|---|---|
{chr(10).join(rows)}

0 workers reads in the training process; with workers, the training process only receives batches, so the rate is
what the workers can decode and transform. On a local disk with a warm file cache the three sources cost about the
same (decoding and cropping dominate); shards earn their keep where opening files is slow (a network file system,
object storage), which this machine cannot show.

![loading throughput](loading.png)
"""
    (out / "README.md").write_text(text)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.27
    for i, workers in enumerate(WORKERS):
        ax.bar(np.arange(len(SOURCES)) + (i - 1) * width, [results[f"{s} / {workers}"]["img_per_s"] for s in SOURCES], width,
               label=f"{workers} worker{'s' if workers != 1 else ''}")
    ax.set_xticks(range(len(SOURCES)), SOURCES)
    ax.set_ylabel("images / s")
    ax.set_title("loading the same 2,000 JPEGs (224 px training transforms)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loading.png", dpi=120)


if __name__ == "__main__":
    main()
