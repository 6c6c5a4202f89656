"""Pathfinder (Linsley et al., NeurIPS 2018; "Pathfinder" in the Long Range Arena): do the two markers sit at
the two ends of one dashed curve?

Each image holds two target curves of ``contour_length`` dashes whose first dashes start ``seed_distance`` px
apart, a few short distractor curves, and two markers: one at the start of a target curve, the other at the far
end of the same curve (label 1) or of the other one (label 0). Both targets have the same number of dashes, so
neither length nor ink says anything about the label; only following a curve from end to end does. The longer
the curves, the farther a network has to look, which is what this task measures.

A curve grows one dash at a time. The next dash pivots one margin beyond the last one's head; its end is drawn
from the points on a circle of radius ``paddle_length + margin`` around the pivot, weighted by
cos²(min(continuity · Δθ, π/2)) (Δθ: the turn) times the free space at that point, and it must keep
``clearance`` from every dash already drawn except its own predecessor (three tries, then the curve fails and
is redrawn). Written here from the published description and parameters (see ``SIZES``), vectorised over a
batch of images; statistically faithful, not bit-identical. Departures, each on purpose:

- the overlap test is exact geometry (segment distances), not a threshold on anti-aliased masks, and it also
  covers the other target's newest dash, which the original let through;
- every dash has the same contrast (``curve_contrast × dash_contrast``, capped at white). The original gave
  distractor dashes the curve contrast alone, so at 32 px they were brighter than the targets', a cue a network
  could use instead of following the curves;
- coordinates are continuous (the original rounds each pivot up to a whole pixel).

Images are generated in chunks of ``CHUNK``, each from its own seed sequence (size, length, seed, chunk index),
so image ``i`` never depends on how many are asked for, and chunks are cached on disk as uint8 arrays in a folder
named by the parameters and ``GENERATOR_VERSION`` (bump it whenever the output changes).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from ..errors import Stopped

__all__ = ["CHUNK", "GENERATOR_VERSION", "LENGTHS", "SIZES", "PathfinderSpec", "Scenes", "ink_statistics", "linear_probe",
           "pathfinder", "pathfinder_scenes", "pathfinder_spec", "render", "segment_distance"]

GENERATOR_VERSION = 1
CHUNK = 1000  # images per cached file and per seed sequence; part of the output, so changing it changes the data
LENGTHS = (6, 9, 14)  # the published difficulty levels (dashes per target curve)
TARGETS = 2

# Per image size, as the Long Range Arena documents its Pathfinder sets. ``distractor_budget`` is the numerator of
# the distractor count (budget // distractor_length, integer division as in the Python 2 original).
SIZES: dict[int, dict[str, float]] = {
    32: dict(padding=1, margin=1, paddle_length=2, thickness=0.5, seed_distance=7, marker_radius=1.5, continuity=1.0,
             distractor_budget=20, curve_contrast=2.0, dash_contrast=0.75),
    64: dict(padding=1, margin=1, paddle_length=5, thickness=1.0, seed_distance=12, marker_radius=2.5, continuity=1.8,
             distractor_budget=22, curve_contrast=0.8, dash_contrast=1.0),
}


@dataclass(frozen=True)
class PathfinderSpec:
    """Every parameter of one Pathfinder set (lengths in pixels of the final image)."""

    size: int
    contour_length: int
    distractors: int
    distractor_length: int
    padding: float
    margin: float
    paddle_length: float
    thickness: float
    seed_distance: float
    marker_radius: float
    continuity: float
    contrast: float  # of every dash: curve contrast x dash contrast, capped at white when drawn
    antialias: int = 2  # dashes and markers are drawn at this multiple of the size, then shrunk (Lanczos)
    dash_tries: int = 3  # draws of one dash before its curve fails (the original's max_paddle_retrial + 1)
    seed_tries: int = 10  # places tried for a curve's first dash
    distractor_tries: int = 5  # attempts at one distractor curve before it is left out
    backtracks: int = 0  # dashes a target curve may back up in all when it cannot continue (``_grow``)

    @property
    def clearance(self) -> float:
        """Least distance between the centre lines of two dashes that are not neighbours on one curve.

        Wider than the largest gap between neighbours (2 x margin), so no curve seems to continue into another.
        """
        return 2 * self.margin + self.thickness

    @property
    def step(self) -> float:
        """Distance from a pivot to the end of the dash drawn from it."""
        return self.paddle_length + self.margin

    def key(self) -> str:
        """A short name of the parameters and generator version: the cache folder's."""
        text = json.dumps(dict(asdict(self), version=GENERATOR_VERSION, chunk=CHUNK), sort_keys=True)
        return f"{self.size}px-len{self.contour_length}-v{GENERATOR_VERSION}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def pathfinder_spec(size: int = 32, contour_length: int = 14) -> PathfinderSpec:
    """The parameters of the ``size`` px set with curves of ``contour_length`` dashes."""
    if isinstance(size, bool) or size not in SIZES:
        raise ValueError(f"Pathfinder size must be one of {', '.join(map(str, SIZES))} px, got {size!r}")
    if isinstance(contour_length, bool) or not isinstance(contour_length, int) or not 3 <= contour_length <= 20:
        raise ValueError(f"contour_length must be an integer from 3 to 20 dashes (the published levels: "
                         f"{', '.join(map(str, LENGTHS))}), got {contour_length!r}")
    p = SIZES[size]
    distractor_length = contour_length // 3
    spec = PathfinderSpec(size, contour_length, int(p["distractor_budget"]) // distractor_length, distractor_length,
                          p["padding"], p["margin"], p["paddle_length"], p["thickness"], p["seed_distance"], p["marker_radius"],
                          p["continuity"], p["curve_contrast"] * p["dash_contrast"], backtracks=2 * contour_length)
    # The overlap test checks dash end points only; that is exact while crossing dashes cannot keep clearance.
    assert spec.clearance > spec.paddle_length / 2
    return spec


# ---- geometry ----------------------------------------------------------------------------------------------------
def _point_segment_sq(py: np.ndarray, px: np.ndarray, ay: np.ndarray, ax: np.ndarray, by: np.ndarray, bx: np.ndarray) -> np.ndarray:
    """Squared distance from points (py, px) to segments (ay, ax)-(by, bx), broadcast (coordinates as separate
    arrays and no square root: this is the generator's innermost loop)."""
    dy, dx, qy, qx = by - ay, bx - ax, py - ay, px - ax
    t = np.clip((qy * dy + qx * dx) / np.maximum(dy * dy + dx * dx, 1e-12), 0.0, 1.0)
    ey, ex = qy - t * dy, qx - t * dx
    return ey * ey + ex * ex


def segment_distance(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Least distance between segments ``s`` and ``t`` (..., 4: y0, x0, y1, x1) that do not cross.

    For crossing segments it returns the least end-point distance instead of 0, at most half the shorter length:
    callers compare it with a clearance above that, so the answer to "too close?" is exact either way.
    """
    s0y, s0x, s1y, s1x = (s[..., i] for i in range(4))
    t0y, t0x, t1y, t1x = (t[..., i] for i in range(4))
    sq = np.minimum(np.minimum(_point_segment_sq(s0y, s0x, t0y, t0x, t1y, t1x), _point_segment_sq(s1y, s1x, t0y, t0x, t1y, t1x)),
                    np.minimum(_point_segment_sq(t0y, t0x, s0y, s0x, s1y, s1x), _point_segment_sq(t1y, t1x, s0y, s0x, s1y, s1x)))
    return np.sqrt(sq)


def _unit(theta: np.ndarray) -> np.ndarray:
    return np.stack([np.sin(theta), np.cos(theta)], axis=-1)  # (..., 2): (y, x)


@dataclass
class Scenes:
    """A batch of images as geometry: the curves' dashes, the markers, the labels.

    ``dashes`` (N, C, L, 4) holds dash j of curve c of image n as (y0, x0, y1, x1), in pixels of the final image
    (pixel (i, j) spans [i, i+1) x [j, j+1)); curves 0 and 1 are the targets, 2 and up the distractors; a curve's
    dashes run in drawing order, each from its pivot side to its far end, and the first ``length[n, c]`` are drawn.
    ``markers`` (N, 2, 2): the start of one target, then the far end of the same or the other target.
    """

    spec: PathfinderSpec
    dashes: np.ndarray
    length: np.ndarray
    occupied: np.ndarray  # (N, S, S) uint8: how many dashes lie within clearance of each pixel centre
    markers: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None

    @classmethod
    def empty(cls, spec: PathfinderSpec, n: int) -> "Scenes":
        curves = TARGETS + spec.distractors
        return cls(spec, np.zeros((n, curves, spec.contour_length, 4)), np.zeros((n, curves), np.int64),
                   np.zeros((n, spec.size, spec.size), np.uint8))

    @classmethod
    def joined(cls, parts: list["Scenes"], n: int) -> "Scenes":
        """The first ``n`` scenes of ``parts`` in order."""
        take = lambda name: None if getattr(parts[0], name) is None else np.concatenate([getattr(p, name) for p in parts])[:n]  # noqa: E731
        return cls(parts[0].spec, *(take(f) for f in ("dashes", "length", "occupied", "markers", "labels")))

    def subset(self, keep: np.ndarray) -> "Scenes":
        pick = lambda a: None if a is None else a[keep]  # noqa: E731
        return Scenes(self.spec, self.dashes[keep], self.length[keep], self.occupied[keep], pick(self.markers), pick(self.labels))

    # -- tests a new dash must pass --------------------------------------------------------------------------
    def inside(self, dash: np.ndarray) -> np.ndarray:
        """Both ends of each dash (..., 4) at least ``padding`` from the border."""
        lo, hi = self.spec.padding, self.spec.size - self.spec.padding
        return ((dash >= lo) & (dash <= hi)).all(-1)

    def clear(self, rows: np.ndarray, curve: int, dash: np.ndarray) -> np.ndarray:
        """Whether ``dash`` (M, 4), the next of ``curve`` in images ``rows`` (M,), keeps clearance from every drawn
        dash of those images except its own curve's last one (its neighbour)."""
        length = self.length[rows]  # (M, C)
        longest = int(length.max(initial=0))
        if longest == 0:
            return np.ones(len(rows), bool)
        curves = int(np.flatnonzero(length.any(axis=0)).max()) + 1  # the curves any of these images has begun
        near = segment_distance(dash[:, None, None, :], self.dashes[rows, :curves, :longest]) < self.spec.clearance  # (M, c, l)
        counted = np.arange(longest)[None, None, :] < length[:, :curves, None]  # (M, c, l)
        if curve < curves:
            counted[np.arange(len(rows)), curve, np.maximum(length[:, curve] - 1, 0)] = False
        return ~(near & counted).any(axis=(1, 2))

    # -- drawing ----------------------------------------------------------------------------------------------
    def push(self, rows: np.ndarray, curve: int, dash: np.ndarray) -> None:
        """Append ``dash`` (M, 4) to ``curve`` of images ``rows`` (distinct)."""
        self.dashes[rows, curve, self.length[rows, curve]] = dash
        self.length[rows, curve] += 1
        self._stamp(rows, dash, 1)

    def pop(self, rows: np.ndarray, curve: int) -> None:
        """Remove the last dash of ``curve`` in images ``rows`` (each has one)."""
        self.length[rows, curve] -= 1
        self._stamp(rows, self.dashes[rows, curve, self.length[rows, curve]], -1)

    def tips(self, rows: np.ndarray, curve: int) -> tuple[np.ndarray, np.ndarray]:
        """Where ``curve`` continues in images ``rows``: the pivot one margin beyond its last dash (M, 2) and that
        dash's direction (M,)."""
        last = self.dashes[rows, curve, self.length[rows, curve] - 1]  # (M, 4)
        theta = np.arctan2(last[:, 2] - last[:, 0], last[:, 3] - last[:, 1])
        return last[:, 2:4] + self.spec.margin * _unit(theta), theta

    def _stamp(self, rows: np.ndarray, dash: np.ndarray, delta: int) -> None:
        """Count (or uncount) each dash at the pixel centres within clearance of it: the free-space map."""
        # Pixel centres within clearance of the dash lie within L/2 + clearance of its midpoint: with the midpoint's
        # pixel f, pixels f - reach .. f + reach.
        reach = int(math.ceil(self.spec.paddle_length / 2 + self.spec.clearance))
        offsets = np.arange(-reach, reach + 1)
        mid = np.floor((dash[:, 0:2] + dash[:, 2:4]) / 2).astype(np.int64)  # (M, 2)
        ys = mid[:, 0, None, None] + offsets[None, :, None]  # (M, W, 1)
        xs = mid[:, 1, None, None] + offsets[None, None, :]  # (M, 1, W)
        ys, xs = np.broadcast_arrays(ys, xs)  # (M, W, W) each
        d2 = _point_segment_sq(ys + 0.5, xs + 0.5, *(dash[:, i, None, None] for i in range(4)))  # (M, W, W)
        size = self.spec.size
        hit = (d2 < self.spec.clearance ** 2) & (ys >= 0) & (ys < size) & (xs >= 0) & (xs < size)
        which = np.broadcast_to(rows[:, None, None], hit.shape)[hit]
        self.occupied[which, ys[hit], xs[hit]] += np.uint8(1) if delta > 0 else np.uint8(255)  # one per image: no repeats


# ---- growing curves ---------------------------------------------------------------------------------------------
def _first_dash(scenes: Scenes, rng: np.random.Generator, rows: np.ndarray, curve: int, low: float = 0.0, high: float = 0.0,
                anchor: Optional[np.ndarray] = None) -> np.ndarray:
    """Place ``curve``'s first dash in images ``rows``: its tail uniform in [low, high]², or ``seed_distance`` from
    ``anchor`` (M, 2) at a uniform angle; its direction uniform. Returns which images got one (M,)."""
    spec = scenes.spec
    pending = np.ones(len(rows), bool)
    for _ in range(spec.seed_tries):
        idx = np.flatnonzero(pending)
        if not len(idx):
            break
        if anchor is None:
            tail = rng.uniform(low, high, (len(idx), 2))
        else:
            tail = anchor[idx] + spec.seed_distance * _unit(rng.uniform(0, 2 * np.pi, len(idx)))
        angle = rng.uniform(0, 2 * np.pi, len(idx))
        trial = np.concatenate([tail, tail + spec.paddle_length * _unit(angle)], axis=1)  # (m, 4)
        ok = scenes.inside(trial) & scenes.clear(rows[idx], curve, trial)
        scenes.push(rows[idx[ok]], curve, trial[ok])
        pending[idx[ok]] = False
    return ~pending


def _candidates(spec: PathfinderSpec) -> np.ndarray:
    """Directions of the candidate ends: points on the circle of radius ``step`` about one pixel apart."""
    k = int(math.ceil(2 * np.pi * spec.step))
    return np.arange(k) * (2 * np.pi / k)


def _extend(scenes: Scenes, rng: np.random.Generator, rows: np.ndarray, curve: int) -> np.ndarray:
    """Add one dash to ``curve`` in images ``rows``; returns which grew (M,)."""
    spec = scenes.spec
    pivot, theta = scenes.tips(rows, curve)
    phi = _candidates(spec)  # (K,)
    ends = pivot[:, None, :] + spec.step * _unit(phi)[None]  # (M, K, 2)
    starts = pivot[:, None, :] + spec.margin * _unit(phi)[None]  # (M, K, 2)
    trial = np.concatenate([starts, ends], axis=-1)  # (M, K, 4)
    turn = np.abs((phi[None, :] - theta[:, None] + np.pi) % (2 * np.pi) - np.pi)  # (M, K) in [0, pi]
    weight = np.cos(np.minimum(spec.continuity * turn, np.pi / 2)) ** 2
    cell = np.clip(np.floor(ends).astype(np.int64), 0, spec.size - 1)  # (M, K, 2)
    free = scenes.occupied[rows[:, None], cell[..., 0], cell[..., 1]] == 0
    weight = np.where(scenes.inside(trial) & free, weight, 0.0)
    grown = np.zeros(len(rows), bool)
    for _ in range(spec.dash_tries):
        total = weight.sum(axis=1)
        idx = np.flatnonzero(~grown & (total > 1e-9))
        if not len(idx):
            break
        cum = np.cumsum(weight[idx], axis=1)  # (m, K)
        k = np.minimum((cum < rng.random(len(idx))[:, None] * cum[:, -1:]).sum(axis=1), len(phi) - 1)
        ok = scenes.clear(rows[idx], curve, trial[idx, k])
        scenes.push(rows[idx[ok]], curve, trial[idx[ok], k[ok]])
        grown[idx[ok]] = True
        weight[idx[~ok], k[~ok]] = 0.0  # a draw that failed is not drawn again
    return grown


def _grow(scenes: Scenes, rng: np.random.Generator, rows: np.ndarray, curve: int, until: int, backtracks: np.ndarray) -> np.ndarray:
    """Extend ``curve`` in images ``rows`` to ``until`` dashes; returns which got there (M,).

    A curve that cannot continue backs up and tries again while ``backtracks`` (M,; spent in place) lasts: one dash
    the first time it is stuck in this call, two the second, and so on, since a curve heading into a wall or a
    pocket needs more than its last dash changed.
    """
    alive = np.ones(len(rows), bool)
    stuck_count = np.zeros(len(rows), np.int64)
    while True:
        idx = np.flatnonzero(alive & (scenes.length[rows, curve] < until))
        if not len(idx):
            return alive
        grown = _extend(scenes, rng, rows[idx], curve)
        stuck = idx[~grown]
        stuck_count[stuck] += 1
        steps = np.minimum(stuck_count[stuck], scenes.length[rows[stuck], curve] - 1)
        can = (steps > 0) & (backtracks[stuck] >= steps)
        alive[stuck[~can]] = False
        back, steps = stuck[can], steps[can]
        backtracks[back] -= steps
        for k in range(int(steps.max(initial=0))):
            scenes.pop(rows[back[steps > k]], curve)


def _targets(scenes: Scenes, rng: np.random.Generator) -> np.ndarray:
    """The two target curves of every image, grown a dash at a time in turn; returns the images where both reached
    full length (the others are redrawn)."""
    spec, n = scenes.spec, len(scenes.length)
    rows = np.arange(n)
    alive = _first_dash(scenes, rng, rows, 0, 2 * spec.seed_distance, spec.size - 2 * spec.seed_distance)
    alive[alive] = _first_dash(scenes, rng, rows[alive], 1, anchor=scenes.dashes[rows[alive], 0, 0, 0:2])
    backtracks = np.full((n, TARGETS), spec.backtracks)
    for until in range(2, spec.contour_length + 1):
        for curve in range(TARGETS):
            live = rows[alive]
            budget = backtracks[live, curve]
            alive[live] = _grow(scenes, rng, live, curve, until, budget)
            backtracks[live, curve] = budget
    return alive


def _distractors(scenes: Scenes, rng: np.random.Generator) -> None:
    """Up to ``distractors`` short curves per image; one that cannot be drawn after ``distractor_tries`` is left out."""
    spec, n = scenes.spec, len(scenes.length)
    for curve in range(TARGETS, TARGETS + spec.distractors):
        pending = np.arange(n)
        for _ in range(spec.distractor_tries):
            if not len(pending):
                break
            placed = pending[_first_dash(scenes, rng, pending, curve, spec.padding, spec.size - spec.padding)]
            whole = placed[_grow(scenes, rng, placed, curve, spec.distractor_length, np.zeros(len(placed), np.int64))]
            failed = np.setdiff1d(placed, whole)
            while len(failed):
                scenes.pop(failed, curve)
                failed = failed[scenes.length[failed, curve] > 0]
            pending = np.setdiff1d(pending, whole)


def _markers(scenes: Scenes, rng: np.random.Generator) -> None:
    """Labels drawn uniformly; one marker at the start of a random target, the other at the far end of the same
    target (label 1) or of the other one (label 0)."""
    n, last = len(scenes.length), scenes.spec.contour_length - 1
    labels = rng.integers(0, 2, n)
    origin = rng.integers(0, 2, n)
    terminal = np.where(labels == 1, origin, 1 - origin)
    rows = np.arange(n)
    scenes.markers = np.stack([scenes.dashes[rows, origin, 0, 0:2], scenes.dashes[rows, terminal, last, 2:4]], axis=1)  # (N, 2, 2)
    scenes.labels = labels


# ---- drawing ------------------------------------------------------------------------------------------------------
def render(scenes: Scenes) -> np.ndarray:
    """uint8 images (N, S, S): dashes and markers drawn at ``antialias`` x the size and shrunk with Lanczos."""
    from PIL import Image, ImageDraw

    spec = scenes.spec
    a = spec.antialias
    big = spec.size * a
    width = max(1, int(round(spec.thickness * a)))
    radius = spec.marker_radius * a
    out = np.empty((len(scenes.length), spec.size, spec.size), np.uint8)
    for i in range(len(scenes.length)):
        lines, dots = Image.new("F", (big, big), 0.0), Image.new("F", (big, big), 0.0)
        draw = ImageDraw.Draw(lines)
        drawn = np.arange(spec.contour_length)[None, :] < scenes.length[i][:, None]  # (C, L)
        for y0, x0, y1, x1 in scenes.dashes[i][drawn] * a - 0.5:  # PIL puts pixel centres on integers
            draw.line([(x0, y0), (x1, y1)], fill=1.0, width=width)
        draw = ImageDraw.Draw(dots)
        for y, x in scenes.markers[i] * a - 0.5:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=1.0)
        small = [np.asarray(img.resize((spec.size, spec.size), Image.LANCZOS)) for img in (lines, dots)]
        value = np.maximum(np.clip(small[0] * spec.contrast, 0, 1), np.clip(small[1], 0, 1))
        out[i] = np.round(value * 255).astype(np.uint8)
    return out


# ---- shortcut checks ------------------------------------------------------------------------------------------
def linear_probe(features, labels, train: int, l2: float = 1e-2) -> float:
    """Held-out accuracy of an L2-regularised logistic regression from ``features`` (N, F) to 0/1 ``labels`` (N,),
    fitted on the first ``train`` rows (features standardised on them), scored on the rest.

    The generator's no-shortcut check: if a linear model on pixels, or on a few image statistics, beat chance, the
    label would be readable without following a curve.
    """
    import torch
    import torch.nn.functional as F

    x = torch.as_tensor(features).double()
    y = torch.as_tensor(labels).double()
    if not 0 < train < len(x):
        raise ValueError(f"train must leave rows on both sides, got {train} of {len(x)}")
    x = (x - x[:train].mean(0)) / (x[:train].std(0) + 1e-6)
    w = torch.zeros(x.shape[1], dtype=torch.double, requires_grad=True)
    b = torch.zeros(1, dtype=torch.double, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x[:train] @ w + b, y[:train]) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((((x[train:] @ w + b) > 0).double() == y[train:]).double().mean())


def ink_statistics(images) -> "torch.Tensor":
    """Per image: bright-pixel count (> 127), inked-pixel count (> 30) and intensity sum: what ink alone could tell."""
    import torch

    x = torch.as_tensor(images).flatten(1).double()
    return torch.stack([(x > 127).sum(1), (x > 30).sum(1), x.sum(1)], dim=1)


# ---- chunks, cache, API ------------------------------------------------------------------------------------------
def _rng(spec: PathfinderSpec, seed: int, chunk: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([GENERATOR_VERSION, spec.size, spec.contour_length, seed, chunk]))


def _chunk_scenes(spec: PathfinderSpec, seed: int, chunk: int) -> Scenes:
    """The ``CHUNK`` scenes of one chunk: batches are drawn until enough images have both targets at full length."""
    rng = _rng(spec, seed, chunk)
    parts: list[Scenes] = []
    have, tried = 0, 0
    while have < CHUNK:
        # Many attempts fail for long curves (at 64 px, length 14, about 7 in 8 even with backtracking); the next
        # batch is sized by the success rate so far, so a chunk takes a few rounds.
        rate = max(have / tried, 0.002) if tried else 0.5
        if tried > 100 * CHUNK and have < 0.002 * tried:
            raise RuntimeError(f"Pathfinder {spec.size} px, length {spec.contour_length}: {have} of {tried} attempts kept "
                               f"both curves whole; the curves are too long for this size")
        batch = min(int((CHUNK - have) / rate * 1.1) + 16, 20_000)
        scenes = Scenes.empty(spec, batch)
        scenes = scenes.subset(_targets(scenes, rng))
        parts.append(scenes)
        have, tried = have + len(scenes.length), tried + batch
    scenes = Scenes.joined(parts, CHUNK)
    _distractors(scenes, rng)
    _markers(scenes, rng)
    return scenes


def _chunk_arrays(spec: PathfinderSpec, seed: int, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    scenes = _chunk_scenes(spec, seed, chunk)
    return render(scenes), scenes.labels.astype(np.uint8)


def default_cache_dir() -> Path:
    """Where generated sets are kept: ``$SCNET_DATA_CACHE`` or ``~/.cache/scnet/data``."""
    return Path(os.environ.get("SCNET_DATA_CACHE") or Path.home() / ".cache" / "scnet" / "data")


def _digest(spec: PathfinderSpec, images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 of the generator's parameters and a chunk's arrays: a cached chunk proves it is what these parameters
    made, byte for byte (a flipped byte, a cut file or a relabelled one fails it), as a weight release's hash does."""
    h = hashlib.sha256(spec.key().encode())
    for array in (images, labels):
        h.update(f"{array.dtype.str}{array.shape}".encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _chunk_problem(path: Path, spec: PathfinderSpec) -> tuple[Optional[tuple[np.ndarray, np.ndarray]], Optional[str]]:
    """(images, labels) of a cached chunk and None, or None and what is wrong with it (None, None: no file)."""
    if not path.exists():
        return None, None
    limit = 2 * CHUNK * (spec.size * spec.size + 8) + 65536  # the arrays, with room for the npz wrapping
    if not path.is_file() or path.stat().st_size > limit:
        return None, f"not a regular file of at most {limit:,} bytes"
    try:
        with np.load(path, allow_pickle=False) as f:
            absent = [k for k in ("images", "labels", "digest") if k not in f.files]
            if absent:
                return None, f"no {absent[0]!r} in it (written before chunks carried a digest, or not a chunk)"
            images, labels, digest = f["images"], f["labels"], str(f["digest"])
    except Exception as e:  # noqa: BLE001 - a damaged zip raises BadZipFile, zlib.error, EOFError, ValueError, ...
        return None, f"cannot be read ({type(e).__name__}: {e})"
    if images.shape != (CHUNK, spec.size, spec.size) or images.dtype != np.uint8:
        return None, f"images of {images.dtype} {images.shape}, not uint8 {(CHUNK, spec.size, spec.size)}"
    if labels.shape != (CHUNK,) or labels.dtype != np.uint8 or not np.isin(labels, (0, 1)).all():
        return None, f"labels of {labels.dtype} {labels.shape}, not {CHUNK} uint8 values 0 or 1"
    if digest != _digest(spec, images, labels):
        return None, "its contents do not match its digest"
    return (images, labels), None


def _write_chunk(path: Path, spec: PathfinderSpec, images: np.ndarray, labels: np.ndarray) -> None:
    """Atomically: two processes making the same chunk (two runs of a study) each write whole files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, images=images, labels=labels, digest=np.array(_digest(spec, images, labels)))
        os.replace(tmp, path)
    except OSError as e:  # a full disk, say: the cache is an optimisation, the images are made
        tmp.unlink(missing_ok=True)
        print(f"note: cannot write the Pathfinder cache file {path} ({e.strerror or e}); the images are made but not kept",
              file=sys.stderr)


def _make_chunk(spec: PathfinderSpec, seed: int, chunk: int, path: Optional[str]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _chunk_arrays(spec, seed, chunk)
    if path is not None:
        _write_chunk(Path(path), spec, images, labels)
    return images, labels


def pathfinder(n: int, size: int = 32, contour_length: int = 14, seed: int = 0, cache_dir: Union[str, Path, None] = None,
               cache: bool = True, workers: Optional[int] = None, progress: bool = True):
    """``n`` Pathfinder images and labels: a uint8 tensor (n, 1, size, size) and an int64 tensor of 0/1.

    Deterministic in (size, contour_length, seed): the first ``n`` images are the same whatever ``n``. Chunks are
    read from ``cache_dir`` (default ``default_cache_dir()``) or made and written there (``cache=False`` neither
    reads nor writes); missing chunks are made by ``workers`` forked processes (default: one per CPU core when more
    than one chunk is missing; one process outside Linux).

    Raises ``ValueError`` for a size other than 32 or 64, a contour length outside 3-20, a non-positive ``n`` or a
    negative seed.
    """
    import torch

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of images, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    spec = pathfinder_spec(size, contour_length)
    folder = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "pathfinder" / spec.key() / f"seed{seed}"
    chunks = range(math.ceil(n / CHUNK))
    read = {c: _chunk_problem(folder / f"chunk{c:05d}.npz", spec) if cache else (None, None) for c in chunks}
    found = {c: arrays for c, (arrays, _) in read.items()}
    damaged = {c: problem for c, (_, problem) in read.items() if problem is not None}
    if damaged:
        first = min(damaged)
        print(f"note: {len(damaged)} cached Pathfinder chunk(s) are not what these parameters make and are made again "
              f"(first: {folder / f'chunk{first:05d}.npz'}: {damaged[first]})", file=sys.stderr)
    missing = [c for c in chunks if found[c] is None]
    if missing:
        made = _make_chunks(spec, seed, missing, folder if cache else None, workers, progress)
        found.update(zip(missing, made))
    images = np.concatenate([found[c][0] for c in chunks])[:n]
    labels = np.concatenate([found[c][1] for c in chunks])[:n]
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))  # (n, 1, S, S), (n,)


def _make_chunks(spec: PathfinderSpec, seed: int, chunks: list[int], folder: Optional[Path], workers: Optional[int],
                 progress: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Make ``chunks``, in a process pool when there are several (each chunk is independent of the others).

    SIGTERM and SIGINT stop the work with ``Stopped`` (the chunks made so far stay cached), and the pool's workers
    end with it; a worker also ends by itself when this process is gone, however it ended (SIGKILL included).
    """
    from tqdm.auto import tqdm

    paths = [None if folder is None else str(folder / f"chunk{c:05d}.npz") for c in chunks]
    workers = min(len(chunks), workers or os.cpu_count() or 1)
    if sys.platform != "linux":  # fork is Linux's safe default; spawn would re-run a user's script without a main guard
        workers = 1
    desc = f"generating Pathfinder {spec.size} px, length {spec.contour_length} ({len(chunks) * CHUNK:,} images)"
    jobs = [(spec, seed, c, p) for c, p in zip(chunks, paths)]
    with _stopped_by_signals(f"while {desc}"), tqdm(total=len(chunks) * CHUNK, desc=desc, unit="img",
                                                      disable=not progress or None, leave=False) as bar:
        if workers <= 1:
            return [_made(bar, _make_chunk(*job)) for job in jobs]
        import multiprocessing

        # multiprocessing's Pool, not concurrent.futures': leaving its block terminates the workers at once.
        with multiprocessing.get_context("fork").Pool(workers, initializer=_worker_start, initargs=(os.getpid(),)) as pool:
            return [_made(bar, result) for result in pool.imap(_make_chunk_of, jobs)]


def _made(bar, result: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    bar.update(CHUNK)
    return result


def _make_chunk_of(job: tuple) -> tuple[np.ndarray, np.ndarray]:
    return _make_chunk(*job)


def _worker_start(parent: int) -> None:
    """In each generator worker: the default signal actions (a forked worker inherits its parent's handlers, which
    only take note of a signal), and a watch that ends the worker once its parent is gone."""
    import signal
    import threading
    import time

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="scnet-follow-parent", daemon=True).start()


@contextlib.contextmanager
def _stopped_by_signals(what: str):
    """While generating in the main thread: SIGTERM or SIGINT raises ``Stopped`` (a second one is not caught)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) or signal.SIG_DFL for sig in (signal.SIGTERM, signal.SIGINT)}  # None: set in C

    def stop(signum: int, frame: Any) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise Stopped(signum, f"stopped by {signal.Signals(signum).name} {what}; the chunks made so far are cached: "
                              f"run the same command again to go on")

    for sig in previous:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def pathfinder_scenes(n: int, size: int = 32, contour_length: int = 14, seed: int = 0) -> tuple[Scenes, np.ndarray]:
    """The geometry of the first ``n`` images of ``pathfinder(n, size, contour_length, seed)`` and the images
    (n, S, S) uint8, made afresh (no cache): for tests and figures that need to know where the curves are."""
    spec = pathfinder_spec(size, contour_length)
    parts = [_chunk_scenes(spec, seed, c) for c in range(math.ceil(n / CHUNK))]
    scenes = Scenes.joined(parts, n)
    return scenes, render(scenes)
