"""Datasets for the training tools: Fashion-MNIST, CIFAR-10/100, any ImageFolder tree, a synthetic set, and the
generated tasks (Pathfinder, cluttered Fashion-MNIST).

Every loader fails with a ``DataError`` whose one-line message names the missing or corrupt file and how to
get it; the CLI prints it without a traceback.
"""
from __future__ import annotations

import functools
import gzip
import io
import pickle
import re
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from ..errors import DataError
from ..models.spec import IMAGENET_CROP_PCT, DataInfo, eval_transform

__all__ = ["BatchAugment", "DataError", "DataInfo", "DATASETS", "IMAGENET_CROP_PCT", "eval_transform", "TensorImages", "build_datasets", "FASHION_MNIST_SYSTEM_DIR",
           "PATHFINDER_TRAIN", "PATHFINDER_VAL"]

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
# Shifts of up to 2 px (and flips) for 28 px images: the augmentation the 5-epoch demo recipe was tuned with.
FASHION_MNIST_PAD = 2
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass(frozen=True)
class BatchAugment:
    """Random crop from a zero-padded image and random horizontal flip, drawn for a whole batch at once.

    Why per batch: drawing the offsets and flips of 256 images from one generator costs microseconds, where
    seeding the global RNG for every sample (``fork_rng``) took a tenth of a small model's training step. The
    parameters are drawn for the *global* batch from a generator the caller seeds (seed, epoch, batch index),
    and each process applies its own slice, so neither resuming nor the process count changes what is seen.
    """

    pad: int = 0
    flip: bool = True
    policy: Optional[str] = None  # a per-image policy after the shift and flip (``data.policies``: RandAugment, ...)
    fill: tuple[float, ...] = (0.5,)  # the policy's fill colour: the dataset's mean, on the [0, 1] scale

    def draw(self, count: int, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """Offsets in [0, 2 * pad] (rows, columns) and flip flags for ``count`` images; with a policy, a seed each."""
        span = 2 * self.pad + 1
        params = dict(dy=torch.randint(0, span, (count,), generator=generator), dx=torch.randint(0, span, (count,), generator=generator),
                      flip=torch.rand(count, generator=generator) < 0.5 if self.flip else torch.zeros(count, dtype=torch.bool))
        if self.policy is not None:  # drawn last: the shifts and flips of a run without a policy stay as they were
            params["seed"] = torch.randint(0, 2**31 - 1, (count,), generator=generator)
        return params

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """``images`` (N, C, H, W) shifted and flipped as ``params`` say (the same dtype and shape)."""
        n, c, h, w = images.shape
        if self.pad:
            padded = F.pad(images, (self.pad,) * 4)  # (N, C, H + 2p, W + 2p)
            rows = (params["dy"][:, None] + torch.arange(h))[:, None, :, None]  # (N, 1, H, 1)
            cols = (params["dx"][:, None] + torch.arange(w))[:, None, None, :]  # (N, 1, 1, W)
            images = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]  # (N, C, H, W)
        images = torch.where(params["flip"][:, None, None, None], images.flip(-1), images)
        if self.policy is not None and "seed" in params:
            images = self._apply_policy(images, params["seed"])
        return images

    def _apply_policy(self, images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Each uint8 image (C, H, W) through the policy as a PIL image, with its own seed (``policies.seeded``)."""
        from PIL import Image

        from .policies import policy_transform, seeded

        policy = policy_transform(self.policy, images.shape[-1], self.fill)
        out = torch.empty_like(images)
        for i, (image, seed) in enumerate(zip(images, seeds.tolist())):
            pixels = image.permute(1, 2, 0).numpy()  # (H, W, C)
            with seeded(seed):
                done = policy(Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels))
            out[i] = torch.from_numpy(np.asarray(done).copy()).reshape(pixels.shape).permute(2, 0, 1)  # (C, H, W)
        return out


class TensorImages(Dataset):
    """uint8 images (N, C, H, W) and int labels held in memory; whole batches are gathered and prepared at once.

    ``batch(indices, params)`` is the fast path of the training tools; ``dataset[i]`` (one normalised image and
    its label, augmented from the global RNG when ``augment`` is set) serves the tools that read single images.
    ``boxes`` (N, 4: y0, x0, y1, x1, end exclusive), when the dataset knows where each image's object is, serves the
    tools that measure localization.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...],
                 augment: Optional[BatchAugment] = None, boxes: Optional[torch.Tensor] = None) -> None:
        self.images, self.labels, self.augment, self.stats, self.boxes = images, labels, augment, (mean, std), boxes
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)  # (1, C, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, count: int) -> "TensorImages":
        """The first ``count`` samples (a view, no copy), with the same preparation."""
        boxes = None if self.boxes is None else self.boxes[:count]
        return TensorImages(self.images[:count], self.labels[:count], *self.stats, self.augment, boxes)

    def take(self, indices: torch.Tensor) -> "TensorImages":
        """The samples at ``indices`` (a copy), with the same preparation."""
        boxes = None if self.boxes is None else self.boxes[indices]
        return TensorImages(self.images[indices], self.labels[indices], *self.stats, self.augment, boxes)

    def batch(self, indices: torch.Tensor, params: Optional[dict[str, torch.Tensor]] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images (N, C, H, W), normalised, augmented with ``params`` when given, and their labels."""
        images = self.images[indices]  # (N, C, H, W) uint8
        if params is not None and self.augment is not None:
            images = self.augment.apply(images, params)
        return (images.float().div_(255.0) - self.mean) / self.std, self.labels[indices]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        params = self.augment.draw(1) if self.augment is not None else None
        images, labels = self.batch(torch.tensor([index]), params)
        return images[0], int(labels[0])


# ---- Fashion-MNIST ------------------------------------------------------------------------------------
def _read_idx(path: Path, expected_dims: int, count: int) -> np.ndarray:
    """Read an IDX file (optionally .gz), checking magic number, dimensions and length."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != expected_dims:
        raise DataError(f"{path} is not an IDX file of unsigned bytes with {expected_dims} dimension(s)")
    header = 4 + 4 * expected_dims
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(expected_dims))
    if shape[0] != count or len(raw) != header + int(np.prod(shape)):
        raise DataError(f"{path} is truncated or not Fashion-MNIST: header says {shape}, {len(raw) - header} bytes of data, expected {count} items")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_fashion_dir(data_dir: Optional[Path]) -> Optional[Path]:
    candidates = [data_dir, data_dir / "FashionMNIST" / "raw", data_dir / "fashion-mnist"] if data_dir else [FASHION_MNIST_SYSTEM_DIR]
    for folder in candidates:
        if folder and any((folder / f"{_FASHION_FILES['train'][0]}{ext}").is_file() for ext in ("", ".gz")):
            return folder
    return None


def _fashion_split(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    images_name, labels_name, count = _FASHION_FILES[split]
    paths = []
    for name in (images_name, labels_name):
        found = [folder / f"{name}{ext}" for ext in ("", ".gz") if (folder / f"{name}{ext}").is_file()]
        if not found:
            raise DataError(f"{folder / name}[.gz] is missing; the Fashion-MNIST folder needs all four IDX files")
        paths.append(found[0])
    images = _read_idx(paths[0], 3, count)
    labels = _read_idx(paths[1], 1, count)
    if labels.max() > 9:
        raise DataError(f"{paths[1]} holds labels above 9: not Fashion-MNIST")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))  # (N, 1, 28, 28)


def _fashion_mnist(data_dir: Optional[Path], download: bool) -> tuple[Dataset, Dataset, DataInfo]:
    folder = _find_fashion_dir(data_dir)
    if folder is None and download:
        from torchvision.datasets import FashionMNIST

        root = data_dir or Path.home() / ".cache" / "scnet" / "data"
        try:
            FashionMNIST(str(root), train=True, download=True)
            FashionMNIST(str(root), train=False, download=True)
        except Exception as e:  # noqa: BLE001 - any download failure ends in the same advice
            raise DataError(f"Fashion-MNIST download into {root} failed ({e}); install the Debian package dataset-fashion-mnist instead") from e
        folder = root / "FashionMNIST" / "raw"
    if folder is None:
        where = str(data_dir) if data_dir else str(FASHION_MNIST_SYSTEM_DIR)
        raise DataError(
            f"Fashion-MNIST not found in {where} (expected train-images-idx3-ubyte[.gz] and the three other IDX files); "
            f"install it with `apt-get install dataset-fashion-mnist`, pass {{data_dir}}, or add {{download}} on a machine with "
            f"internet", "data_dir", "download")
    info = DataInfo("fashion_mnist", 10, 1, 28, (0.2860,), (0.3530,), FASHION_CLASSES)
    train, val = (_fashion_split(folder, s) for s in ("train", "val"))
    return (
        TensorImages(*train, info.mean, info.std, BatchAugment(pad=FASHION_MNIST_PAD)),
        TensorImages(*val, info.mean, info.std),
        info,
    )


# ---- CIFAR (python format) ------------------------------------------------------------------------------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The CIFAR python files are pickles; allow only what they contain (numpy arrays, builtins)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("copyreg", "_reconstructor")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing global {module}.{name}")


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path} is missing; extract the python version of CIFAR (cifar-*-python.tar.gz) into {{data_dir}}", "data_dir")
    try:
        batch = _NumpyOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch.get("labels", batch.get("fine_labels")), dtype=np.int64)
    except Exception as e:  # noqa: BLE001 - a corrupt or foreign file, whatever the exception
        raise DataError(f"{path} is not a CIFAR python batch ({e})") from e
    if len(data) != len(labels):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def _cifar(name: str, data_dir: Optional[Path]) -> tuple[Dataset, Dataset, DataInfo]:
    if data_dir is None:
        raise DataError(f"{name} needs {{data_dir}} pointing at the extracted python version of the dataset", "data_dir")
    ten = name == "cifar10"
    folder = data_dir / ("cifar-10-batches-py" if ten else "cifar-100-python")
    folder = folder if folder.is_dir() else data_dir
    train_files = [folder / f"data_batch_{i}" for i in range(1, 6)] if ten else [folder / "train"]
    parts = [_load_cifar_batch(p) for p in train_files]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    val = _load_cifar_batch(folder / ("test_batch" if ten else "test"))
    classes = 10 if ten else 100
    mean, std = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)) if ten else ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    info = DataInfo(name, classes, 3, 32, mean, std, tuple(str(i) for i in range(classes)))
    make = lambda arr, augment: TensorImages(torch.from_numpy(arr[0].copy()), torch.from_numpy(arr[1]), mean, std, augment)  # noqa: E731
    return make(train, BatchAugment(pad=4)), make(val, None), info  # the usual CIFAR recipe: 4 px shifts and flips


# ---- ImageFolder ------------------------------------------------------------------------------------------
BAD_IMAGE_POLICIES = ("error", "skip")


def _screen_images(dataset, policy: str, short_side: int) -> int:
    """Find the image files PIL cannot decode before training starts: raise on the first, or leave them all out.

    Why before: an unreadable file met in the middle of an epoch (in a worker process) would end a long run.
    Returns how many were left out.
    """
    from tqdm.auto import tqdm

    from .images import unreadable

    bad = []
    for path, target in tqdm(dataset.samples, desc=f"checking {Path(dataset.root).name} images", leave=False, disable=None):
        reason = unreadable(path, short_side)
        if reason is not None:
            if policy == "error":
                raise DataError(f"{path} cannot be read ({reason}); remove it or pass {{bad_images}} skip to leave such files out", "bad_images")
            bad.append(path)
    if bad:
        dropped = set(bad)
        keep = [(p, t) for p, t in dataset.samples if p not in dropped]
        dataset.samples = dataset.imgs = keep
        dataset.targets = [t for _, t in keep]
    return len(bad)


def _check_links(dataset, root: Path) -> None:
    """Refuse files reached through a symbolic link back into the dataset, outside their class folder (a link loop
    such as ``train/cat/loop -> ..`` would add every image again, under the wrong class), and files counted twice.
    Links to places outside the dataset (a class folder kept on another disk) are fine."""
    import os

    top = os.path.realpath(root)
    seen: dict[str, str] = {}
    for path, target in dataset.samples:
        real = os.path.realpath(path)
        folder = os.path.realpath(os.path.join(dataset.root, dataset.classes[target]))
        inside = real.startswith(top + os.sep)
        if (inside and not real.startswith(folder + os.sep)) or real in seen:
            again = f"{seen[real]} and {path} are one file" if real in seen else f"{path} is {real}, outside its class folder"
            raise DataError(f"{again}: a symbolic link leads back into {root} (a link loop?); remove it, or each image "
                            f"would count again, under another class")
        seen[real] = path


def folder_transforms(name: str, image_size: int, auto_augment: Optional[str] = None) -> tuple[Any, Any, DataInfo]:
    """(train, val) transforms of PIL images and the description (classes still to be filled in) of every dataset of
    photographs: an image folder, shards, a Hugging Face dataset. ImageNet's statistics, the norm for pretrained
    backbones; training crops at random scale and flips, then ``auto_augment``; validation resizes and centre-crops."""
    from .policies import policy_transform

    mean, std = IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    described = DataInfo(name, 0, 3, image_size, mean, std, (), crop_pct=IMAGENET_CROP_PCT)
    policy = [policy_transform(auto_augment, image_size, tuple(mean))] if auto_augment else []  # on the PIL image, as timm's
    train_tf = T.Compose([T.RGB(), T.RandomResizedCrop(image_size, antialias=True), T.RandomHorizontalFlip(), *policy,
                          T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])
    return train_tf, eval_transform(described), described


def _imagefolder(data_dir: Optional[Path], image_size: int, bad_images: str = "error",
                 auto_augment: Optional[str] = None) -> tuple[Dataset, Dataset, DataInfo]:
    from torchvision.datasets import ImageFolder

    from .images import open_image

    if data_dir is None or not (data_dir / "train").is_dir() or not (data_dir / "val").is_dir():
        raise DataError(f"imagefolder needs {{data_dir}} with train/<class>/* and val/<class>/* subfolders (got {data_dir})", "data_dir")
    train_tf, val_tf, described = folder_transforms("imagefolder", image_size, auto_augment)
    loader = functools.partial(open_image, channels=3, short_side=described.resize_side)  # as predict reads; picklable
    try:
        train, val = (ImageFolder(str(data_dir / split), tf, loader=loader) for split, tf in (("train", train_tf), ("val", val_tf)))
    except (FileNotFoundError, RuntimeError, OSError) as e:
        said = str(e) if len(str(e)) <= 300 else str(e)[:300] + " ..."  # torchvision lists every empty class folder
        raise DataError(f"cannot read the image folders under {data_dir}: {said}") from e
    if train.classes != val.classes:
        raise DataError(f"train and val class folders differ under {data_dir}")
    if len(train.classes) < 2:  # every answer would be right: a run would report 100 % and learn nothing
        raise DataError(f"{data_dir / 'train'} has one class folder ({train.classes[0]}); a classifier needs two or more")
    for ds in (train, val):
        _check_links(ds, data_dir)
    skipped = sum(_screen_images(ds, bad_images, described.resize_side) for ds in (train, val))
    for ds, split in ((train, "train"), (val, "val")):
        if not ds.samples:
            raise DataError(f"no readable images left in {data_dir / split}")
    return train, val, dataclasses.replace(described, num_classes=len(train.classes), classes=tuple(train.classes), skipped_images=skipped)


# ---- shards and Hugging Face datasets -------------------------------------------------------------------------
def _shards(spec: str, val_spec: Optional[str], image_size: int, bad_images: str, auto_augment: Optional[str],
            seed: int) -> tuple[Dataset, Dataset, DataInfo]:
    """``wds:FOLDER`` (made by ``scnet shard``: both splits) or ``wds:PATTERN`` with ``val_data`` ``wds:PATTERN``."""
    from .shards import ShardedImages, find_shards

    if val_spec is None and not Path(spec).expanduser().is_dir():
        raise DataError(f"wds:{spec} names training shards; give the validation shards with {{val_data}} wds:PATTERN", "val_data")
    if val_spec is not None and not val_spec.startswith("wds:"):
        raise DataError(f"{{val_data}} must be wds:PATTERN (shards), got {val_spec!r}", "val_data")
    train_tf, val_tf, described = folder_transforms("wds", image_size, auto_augment)
    side = described.resize_side
    train = find_shards(spec, "train", bad_images, side)
    val = find_shards(spec if val_spec is None else val_spec[4:], "val", bad_images, side)
    classes = max(train.classes, val.classes, key=len)  # counted shards name classes by index: the larger count
    if train.classes[:len(val.classes)] != val.classes[:len(train.classes)]:
        raise DataError(f"the training and validation shards name other classes ({train.classes[:3]} ... and {val.classes[:3]} ...)")
    if len(classes) < 2:
        raise DataError(f"the shards wds:{spec} hold one class; a classifier needs two or more")
    skipped = len(train.skip) + len(val.skip)
    return (ShardedImages(train, train_tf, shuffle=True, seed=seed, short_side=side), ShardedImages(val, val_tf, shuffle=False, short_side=side),
            dataclasses.replace(described, num_classes=len(classes), classes=classes, skipped_images=skipped))


def _hf(spec: str, image_size: int, bad_images: str, auto_augment: Optional[str]) -> tuple[Dataset, Dataset, DataInfo]:
    """``hf:PATH``: a Hugging Face DatasetDict saved to disk, its images screened as an image folder's."""
    from .hf import load_hf, screen

    train_tf, val_tf, described = folder_transforms("hf", image_size, auto_augment)
    train, val, classes = load_hf(spec, train_tf, val_tf, described.resize_side)
    if len(classes) < 2:
        raise DataError(f"hf:{spec} has one class; a classifier needs two or more")
    (train, bad_train), (val, bad_val) = screen(train, bad_images), screen(val, bad_images)
    for ds in (train, val):
        if not len(ds):
            raise DataError(f"no readable images left in {ds.name}")
    return train, val, dataclasses.replace(described, num_classes=len(classes), classes=classes, skipped_images=bad_train + bad_val)


# ---- synthetic -------------------------------------------------------------------------------------------
def _synthetic(seed: int) -> tuple[Dataset, Dataset, DataInfo]:
    """Learnable noise: each class adds its own fixed pattern to the images. For tests and smoke runs."""
    gen = torch.Generator().manual_seed(seed)
    patterns = torch.rand(4, 1, 16, 16, generator=gen)

    def make(n: int) -> TensorImages:
        labels = torch.randint(0, 4, (n,), generator=gen)
        images = (0.5 * torch.rand(n, 1, 16, 16, generator=gen) + 0.5 * patterns[labels]) * 255
        return TensorImages(images.to(torch.uint8), labels, (0.5,), (0.25,))

    return make(256), make(128), DataInfo("synthetic", 4, 1, 16, (0.5,), (0.25,), ("a", "b", "c", "d"))


# ---- generated tasks -----------------------------------------------------------------------------------------
PATHFINDER_TRAIN, PATHFINDER_VAL = 160_000, 20_000  # the Long Range Arena's training and test set sizes
PATHFINDER_PATTERN = re.compile(r"pathfinder(\d+)-(\d+)")


def _stats(images: torch.Tensor) -> tuple[tuple[float], tuple[float]]:
    """Mean and std of uint8 images in [0, 1], to 4 decimals: the normalisation of a generated set, measured on
    images every size of that set begins with, so a limit never changes it."""
    x = images.float().div(255.0)
    return (round(float(x.mean()), 4),), (round(float(x.std()), 4),)


def _pathfinder(name: str, data_dir: Optional[Path], limit_train: Optional[int],
                limit_val: Optional[int]) -> tuple[Dataset, Dataset, DataInfo]:
    """``pathfinder{size}-{length}``: only the images the limits ask for are made (or read from the cache in
    ``data_dir``); training images come from seed 0, test images from seed 1."""
    from .pathfinder_gen import CHUNK, pathfinder

    size, length = (int(g) for g in PATHFINDER_PATTERN.fullmatch(name).groups())
    try:
        make = lambda n, seed: pathfinder(n, size, length, seed, cache_dir=data_dir)  # noqa: E731
        train, val = make(limit_train or PATHFINDER_TRAIN, 0), make(limit_val or PATHFINDER_VAL, 1)
    except ValueError as e:
        raise DataError(f"{name}: {e}") from e
    mean, std = _stats(train[0][:CHUNK] if len(train[0]) >= CHUNK else make(CHUNK, 0)[0])
    info = DataInfo(name, 2, 1, size, mean, std, ("apart", "joined"))
    # Flips keep a curve a curve: the one augmentation that cannot change the answer (shifts could cut a curve off).
    return TensorImages(*train, mean, std, BatchAugment(pad=0)), TensorImages(*val, mean, std), info


def _cluttered_fashion_mnist(data_dir: Optional[Path], download: bool) -> tuple[Dataset, Dataset, DataInfo]:
    """Fashion-MNIST objects on 60x60 canvases among clutter from the same split (``cluttered.clutter``); the
    canvases are fixed (seed 0 for training, 1 for the test set), and the test set carries each object's box."""
    from .cluttered import CANVAS

    train, val, fashion = _fashion_mnist(data_dir, download)
    made = _canvases(train.images, val.images)
    info = DataInfo("cluttered_fashion_mnist", 10, 1, CANVAS, made["mean"], made["std"], fashion.classes)
    return (TensorImages(made["train"], train.labels, info.mean, info.std, BatchAugment(pad=0)),
            TensorImages(made["val"], val.labels, info.mean, info.std, boxes=made["boxes"]), info)


_CANVASES: dict[tuple[int, ...], dict[str, Any]] = {}  # the last canvases made, by their source images' content


def _canvases(train: torch.Tensor, val: torch.Tensor) -> dict[str, Any]:
    """Both splits' canvases, the test boxes and the normalisation (from the first 10,000 training canvases), made
    once per process for the same source images: a study reads the test set again for every run's localization
    scores, and 70,000 canvases take seconds."""
    from .cluttered import clutter

    key = (hash(train.numpy().tobytes()), hash(val.numpy().tobytes()))
    if key not in _CANVASES:
        (train_canvases, _), (val_canvases, boxes) = (clutter(split[:, 0].numpy(), seed) for split, seed in ((train, 0), (val, 1)))
        mean, std = _stats(train_canvases[:10_000])
        _CANVASES.clear()
        _CANVASES[key] = dict(train=train_canvases, val=val_canvases, boxes=boxes, mean=mean, std=std)
    return _CANVASES[key]


DATASETS = ("fashion_mnist", "cluttered_fashion_mnist", "cifar10", "cifar100", "imagefolder", "synthetic",
            "pathfinder32-14", "pathfinder64-14", "wds:FOLDER", "hf:PATH")


def build_datasets(
    name: str, data_dir: Optional[str] = None, limit_train: Optional[int] = None, limit_val: Optional[int] = None,
    image_size: int = 224, download: bool = False, seed: int = 0, bad_images: str = "error", auto_augment: Optional[str] = None,
    val_data: Optional[str] = None,
) -> tuple[Dataset, Dataset, DataInfo]:
    """(train, val, info) for a dataset name; ``limit_*`` keep N samples (deterministic: the first N of the
    in-memory sets, a stratified draw of an ImageFolder's, whose files are sorted by class).

    ``bad_images`` (ImageFolder): "error" stops at the first file PIL cannot decode, naming it; "skip" leaves
    every such file out and counts them in ``info.skipped_images``. ``auto_augment`` (``data.policies``: e.g.
    ``rand-m9-mstd0.5-inc1``) augments every training image after its crop and flip. ``pathfinder{size}-{length}`` (e.g.
    ``pathfinder32-14``) is generated, ``limit_*`` images of it (default 160,000 and 20,000), and cached in
    ``data_dir`` (default ``~/.cache/scnet/data``). ``wds:FOLDER`` reads the shards ``scnet shard`` wrote,
    ``wds:PATTERN`` WebDataset shards (files or ``pipe:`` commands) with ``val_data`` ``wds:PATTERN``
    (``data.shards``); ``hf:PATH`` a saved Hugging Face DatasetDict (``data.hf``).

    Raises ``DataError`` (a ``ValueError``) naming the file or setting when a dataset is unknown, missing, damaged
    or asked for with impossible limits.
    """
    if val_data is not None and not name.startswith("wds:"):
        raise DataError(f"{{val_data}} names validation shards; {name} has its own validation set", "val_data")
    if bad_images not in BAD_IMAGE_POLICIES:
        raise DataError(f"{{bad_images}} must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {bad_images!r}", "bad_images")
    folder = Path(data_dir).expanduser() if data_dir else None
    if folder is not None and not folder.is_dir() and not (PATHFINDER_PATTERN.fullmatch(name) and not folder.exists()):
        raise DataError(f"{{data_dir}} {folder} is not a directory", "data_dir")  # a cache folder for generated sets is made
    if name.startswith("wds:"):
        train, val, info = _shards(name[4:], val_data, image_size, bad_images, auto_augment, seed)
    elif name.startswith("hf:"):
        train, val, info = _hf(name[3:], image_size, bad_images, auto_augment)
    elif name == "fashion_mnist":
        train, val, info = _fashion_mnist(folder, download)
    elif name in ("cifar10", "cifar100"):
        train, val, info = _cifar(name, folder)
    elif name == "imagefolder":
        train, val, info = _imagefolder(folder, image_size, bad_images, auto_augment)
    elif name == "synthetic":
        train, val, info = _synthetic(seed)
    elif name == "cluttered_fashion_mnist":
        train, val, info = _cluttered_fashion_mnist(folder, download)
    elif PATHFINDER_PATTERN.fullmatch(name):
        _check_limits(limit_train, limit_val)
        train, val, info = _pathfinder(name, folder, limit_train, limit_val)
    else:
        import difflib

        close = difflib.get_close_matches(name, DATASETS, n=1)
        raise DataError(f"unknown dataset {name!r}" + (f"; did you mean {close[0]}?" if close else f"; choose one of {', '.join(DATASETS)}"))
    _check_limits(limit_train, limit_val)
    if auto_augment is not None and isinstance(train, TensorImages):
        base = train.augment if train.augment is not None else BatchAugment(flip=False)
        train.augment = dataclasses.replace(base, policy=auto_augment, fill=tuple(info.mean))
    return _head(train, limit_train), _head(val, limit_val), info


def _check_limits(limit_train: Optional[int], limit_val: Optional[int]) -> None:
    for name, limit in (("limit_train", limit_train), ("limit_val", limit_val)):
        if limit is not None and limit < 1:
            raise DataError(f"{{{name}}} must be at least 1, got {limit}", name)


def _head(dataset: Dataset, limit: Optional[int]) -> Dataset:
    """``limit`` samples: of the in-memory sets, whose order is already random (shuffled or generated), the first
    ones (a view: the fast batch path keeps working, and a generated set is made only that far); of a folder, whose
    files are sorted by class, a fixed stratified draw (``nested_subset`` with seed 0), since its first files would
    all be of one class."""
    from .subsets import nested_subset

    if limit is None or limit >= len(dataset):
        return dataset
    from .shards import ShardedImages

    if isinstance(dataset, (TensorImages, ShardedImages)):  # shards: the first images, in shard order
        return dataset.head(limit)
    return nested_subset(dataset, limit, seed=0)
