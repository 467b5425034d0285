"""Moving digits: clips of a handwritten digit (scikit-learn's bundled 8x8 `load_digits`, no download) sliding over a
small wrapping canvas, cut into patches, for space-time attention ablations.

Each clip: one digit image, a random start position, one of four directions and a speed of 1..max_speed pixels per
frame; the canvas is a torus, so the digit never leaves it (pixels pushed past an edge re-enter at the other).
Labels: `direction` (4-way: right, left, down, up) needs motion, i.e. comparing frames; `digit` (10-way class) needs
only appearance, i.e. any one frame. A frame-order-blind model (space-only attention without time embeddings, as
TimeSformer's "space" model) can read the axis of motion from where the digit has been, but not its sign, so it is
capped at 50% on `direction`. Train and test clips use disjoint digit images (every 5th image is held out).
"""

import dataclasses
import functools

import numpy as np

from r1jax.config import require
from r1jax.data.core import TEST, Batch, HeldOutData, held_out_sizes
from r1jax.registry import register_dataset

DIRECTIONS = ("right", "left", "down", "up")
VELOCITY = np.array([(0, 1), (0, -1), (1, 0), (-1, 0)])  # (dy, dx) per direction
DIGIT_SIZE = 8
LABELS = ("direction", "digit")


@functools.lru_cache(maxsize=1)
def digit_images() -> tuple[np.ndarray, np.ndarray]:
  """All 1797 digit images as float32 [N, 8, 8] in [0, 1], and their classes [N]."""
  from sklearn.datasets import load_digits  # imported here: a 1-2 s import only video runs pay

  digits = load_digits()
  return (digits.images / 16.0).astype(np.float32), digits.target.astype(np.int32)


def split_indices(test: bool) -> np.ndarray:
  """Image indices of a split: every 5th image is held out for test."""
  idx = np.arange(len(digit_images()[0]))
  return idx[idx % 5 == 0] if test else idx[idx % 5 != 0]


def render(
  image_8x8: np.ndarray, start_yx: np.ndarray, velocity_yx: np.ndarray, frames: int, canvas: int
) -> np.ndarray:
  """The clip [frames, canvas, canvas]: the image's top-left corner at start + t * velocity (mod canvas)."""
  base = np.zeros((canvas, canvas), np.float32)
  base[:DIGIT_SIZE, :DIGIT_SIZE] = image_8x8
  shift_Tx2 = start_yx[None, :] + np.arange(frames)[:, None] * velocity_yx[None, :]
  rows_TxC = (np.arange(canvas)[None, :] - shift_Tx2[:, :1]) % canvas  # pixel (r, c) of frame t shows base[r-y, c-x]
  cols_TxC = (np.arange(canvas)[None, :] - shift_Tx2[:, 1:]) % canvas
  return base[rows_TxC[:, :, None], cols_TxC[:, None, :]]


def to_patches(clip_TxHxW: np.ndarray, patch: int) -> np.ndarray:
  """[T, H, W] -> [T, S, P]: S = (H/patch)*(W/patch) patches in row-major order, P = patch*patch pixels."""
  T, H, W = clip_TxHxW.shape
  x = clip_TxHxW.reshape(T, H // patch, patch, W // patch, patch).transpose(0, 1, 3, 2, 4)
  return x.reshape(T, (H // patch) * (W // patch), patch * patch)


def from_patches(patches_TxSxP: np.ndarray, canvas: int) -> np.ndarray:
  """Inverse of `to_patches`: [T, S, P] -> [T, canvas, canvas]."""
  T, S, P = patches_TxSxP.shape
  n, p = canvas // int(round(P**0.5)), int(round(P**0.5))
  return patches_TxSxP.reshape(T, n, n, p, p).transpose(0, 1, 3, 2, 4).reshape(T, canvas, canvas)


def clip_example(
  rng: np.random.Generator, test: bool, frames: int, canvas: int, patch: int, max_speed: int
) -> dict[str, np.ndarray | int]:
  """One clip and both labels: {"patches" [T, S, P], "direction", "digit", "image" (index), "speed", "start"}."""
  images, classes = digit_images()
  pool = split_indices(test)
  image = int(pool[rng.integers(len(pool))])
  direction = int(rng.integers(len(DIRECTIONS)))
  speed = int(rng.integers(1, max_speed + 1))
  start = rng.integers(0, canvas, size=2)
  clip = render(images[image], start, speed * VELOCITY[direction], frames, canvas)
  return {
    "patches": to_patches(clip, patch),
    "direction": direction,
    "digit": int(classes[image]),
    "image": image,
    "speed": speed,
    "start": start,
  }


@dataclasses.dataclass(frozen=True)
class MovingDigitsOptions:
  frames: int = 8  # frames T per clip, >= 2
  canvas: int = 16  # canvas side in pixels, >= 8 (the digit) and a multiple of patch
  patch: int = 4  # patch side; S = (canvas/patch)^2 patches of P = patch^2 pixels
  max_speed: int = 2  # speed drawn from 1..max_speed pixels per frame, < canvas
  label: str = "direction"  # direction (4-way, needs motion) | digit (10-way, appearance)
  num_train_examples: int = 0  # 0: a fresh clip every training row; else a fixed set, reshuffled every epoch
  num_test_examples: int = 3000  # held-out test clips (on held-out digit images)

  def __post_init__(self):
    held_out_sizes(self)
    require(self.frames >= 2, "frames", f"{self.frames} frames show no motion", "use >= 2 (e.g. 8)")
    require(
      self.patch >= 1 and self.canvas >= DIGIT_SIZE and self.canvas % self.patch == 0,
      "canvas",
      f"canvas {self.canvas} must be >= {DIGIT_SIZE} (the digit) and a multiple of patch={self.patch}",
      "use e.g. canvas=16, patch=4",
    )
    require(1 <= self.max_speed < self.canvas, "max_speed", f"{self.max_speed} must be in [1, canvas)", "use 1 or 2")
    require(self.label in LABELS, "label", f"unknown {self.label!r}", f"use one of {LABELS}")


@register_dataset("moving_digits", MovingDigitsOptions)
@dataclasses.dataclass(frozen=True)
class MovingDigits(HeldOutData):
  """Clip classification: inputs float32 [B, T, S, P], targets [B, 1] (the `label` class), weights [B, 1]; fresh
  clips per training row (or a fixed set of num_train_examples) and a held-out test set of num_test_examples on
  held-out digit images, pure functions of (seed, split, index)."""

  arch = "video"

  @property
  def vocab_size(self) -> int:
    return len(DIRECTIONS) if self.cfg.opts.label == "direction" else 10

  @property
  def tokens_per_example(self) -> int:
    return self.cfg.opts.frames * (self.cfg.opts.canvas // self.cfg.opts.patch) ** 2

  def clip(self, split: int, index: int) -> dict:
    """One clip with both labels (see clip_example)."""
    o = self.cfg.opts
    return clip_example(
      np.random.default_rng([self.seed, split, index]), split == TEST, o.frames, o.canvas, o.patch, o.max_speed
    )

  def _examples(self, split: int, indices) -> Batch:
    clips = [self.clip(split, int(i)) for i in indices]
    targets = np.array([[c[self.cfg.opts.label]] for c in clips], np.int32)
    return {
      "inputs": np.stack([c["patches"] for c in clips]),
      "targets": targets,
      "weights": np.ones(targets.shape, np.float32),
    }
