"""Per-image augmentation policies: RandAugment, AugMix and AutoAugment as timm spells and implements them
(``rand-m7-mstd0.5-inc1``, ``augmix-m5-w3``, ``original``, ``3a``), and torchvision's TrivialAugment
(``trivialaugment``). One policy serves the ImageFolder transform and the in-memory sets' batch path alike.

timm draws from Python's and NumPy's global generators and torchvision from torch's: ``seeded`` runs a policy with
all three seeded for one image and restored afterwards, so an image's augmentation depends on its seed alone (a
resumed run, or one split over processes, augments each image as an uninterrupted run does).
"""
from __future__ import annotations

import contextlib
import functools
import random
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

__all__ = ["TRIVIAL", "augment_seed", "check_policy", "policy_transform", "seeded"]

TRIVIAL = "trivialaugment"
# timm's v0 policy asks Pillow for 0-bit posterization, which Pillow 10 and later refuse (a ValueError mid-epoch,
# about 3 images in 100): refused up front, with the policies that do the same without it.
_REFUSED = {"v0": "timm's v0 policy posterizes to 0 bits, which this Pillow refuses; use v0r, original or rand-..."}


def check_policy(policy: str) -> None:
    """A ``ValueError`` naming ``policy`` when timm (or torchvision) has no such policy or it cannot run here."""
    if policy in _REFUSED:
        raise ValueError(f"auto_augment {policy!r}: {_REFUSED[policy]}")
    try:
        policy_transform(policy, 32, (0.5, 0.5, 0.5))
    except (ValueError, KeyError, AssertionError, IndexError) as e:
        raise ValueError(f"auto_augment {policy!r} is not a policy timm knows ({type(e).__name__}: {e}); e.g. "
                         f"rand-m9-mstd0.5-inc1, augmix-m5-w3, original, 3a or {TRIVIAL}") from None


@functools.lru_cache(maxsize=16)
def policy_transform(policy: str, image_size: int, mean: Sequence[float]) -> Callable:
    """The policy as a callable on one PIL image (of 1 or 3 channels) of side about ``image_size``.

    timm's hyper-parameters are those its ``create_transform`` derives: translations up to 45 % of the side, the
    dataset's mean colour as the fill. For RandAugment the magnitude is capped just below timm's 10, where its
    increasing posterize would ask Pillow for 0 bits (refused since Pillow 10); a policy string's own ``mmax`` wins.
    """
    if policy == TRIVIAL:
        from torchvision.transforms import v2 as T

        return T.TrivialAugmentWide()
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    fill = tuple(round(255 * m) for m in mean)
    hparams = dict(translate_const=int(image_size * 0.45), img_mean=fill[0] if len(fill) == 1 else fill)
    if policy.startswith("rand"):
        return rand_augment_transform(policy, dict(hparams, magnitude_max=9.999))
    if policy.startswith("augmix"):
        return augment_and_mix_transform(policy, hparams)
    return auto_augment_transform(policy, hparams)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Python's, NumPy's and torch's global generators seeded with ``seed`` inside, restored on exit."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def augment_seed(seed: int, epoch: int, item: int) -> int:
    """The RNG seed of one item's augmentation (a sample, or a whole batch): distinct for every (seed, epoch, item)."""
    return (seed * 1_000_003 + epoch) * 10_000_019 + item
