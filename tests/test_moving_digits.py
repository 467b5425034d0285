"""Moving-digit clips: what is rendered is the digit at start + t * velocity on a torus, labels match the motion and
the image, splits use disjoint images, batches are deterministic, and bad settings name the field."""

import numpy as np
import pytest

from r1jax.data import moving_digits as md
from r1jax.data.core import make_dataset
from r1jax.data.moving_digits import MovingDigits
from r1jax.errors import ConfigError

from helpers import tiny_config

CLIP = "data__options__moving_digits__"
VIDEO = dict(
  model__arch="video",
  model__mixer="spacetime",
  data__kind="moving_digits",
  **{CLIP + k: v for k, v in dict(frames=4, canvas=12, patch=4, num_test_examples=20).items()},
)


def test_clips_show_the_labelled_digit_moving_in_the_labelled_direction():
  images, classes = md.digit_images()
  for i in range(20):
    rng = np.random.default_rng(i)
    c = md.clip_example(rng, test=bool(i % 2), frames=5, canvas=12, patch=4, max_speed=2)
    frames = md.from_patches(c["patches"], 12)
    velocity = np.array(c["speed"]) * md.VELOCITY[c["direction"]]
    for t in range(5):  # frame t, moved back by start + t * velocity, has the image in the corner and nothing else
      back = np.roll(frames[t], tuple(-(c["start"] + t * velocity)), axis=(0, 1))
      np.testing.assert_array_equal(back[:8, :8], images[c["image"]])
      assert back[8:].sum() == 0 and back[:, 8:].sum() == 0
    assert c["digit"] == classes[c["image"]] and (c["image"] % 5 == 0) == bool(i % 2)


def test_patches_round_trip_in_row_major_order():
  clip = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
  patches = md.to_patches(clip, 4)
  assert patches.shape == (2, 4, 16)
  np.testing.assert_array_equal(patches[1, 1].reshape(4, 4), clip[1, :4, 4:])  # patch 1: top row, right half
  np.testing.assert_array_equal(md.from_patches(patches, 8), clip)


def test_batches_are_deterministic_per_seed_and_splits_use_disjoint_images():
  cfg = tiny_config(**VIDEO, **{CLIP + "label": "digit"}, data__eval_max_batches=0).data
  a, b, other = MovingDigits(cfg, 0), MovingDigits(cfg, 0), MovingDigits(cfg, 1)
  batch = a.train_batch(3)
  assert batch["inputs"].shape == (8, 4, 9, 16) and batch["inputs"].dtype == np.float32
  assert batch["targets"].shape == (8, 1) and a.vocab_size == 10 and a.tokens_per_example == 36
  np.testing.assert_array_equal(batch["inputs"], b.train_batch(3)["inputs"])
  assert not np.array_equal(batch["inputs"], other.train_batch(3)["inputs"])
  train_images = {a.clip(0, i)["image"] for i in range(200)}
  test_images = {a.clip(1, i)["image"] for i in range(200)}
  assert not train_images & test_images
  (test,) = [b for b in a.eval_batches()][-1:]
  assert test["weights"].sum() == 20 - 8 * 2  # 20 test clips in batches of 8: the last one is padded
  direction = make_dataset(tiny_config(**VIDEO).data, 0)
  assert direction.vocab_size == 4 and set(direction.train_batch(0)["targets"].ravel()) <= {0, 1, 2, 3}


@pytest.mark.parametrize(
  "overrides, field",
  [
    ({CLIP + "canvas": 10}, "data.options.moving_digits: canvas"),  # not a multiple of the patch
    ({CLIP + "canvas": 4, CLIP + "patch": 2}, "data.options.moving_digits: canvas"),  # smaller than the digit
    ({CLIP + "frames": 1}, "data.options.moving_digits: frames"),
    ({CLIP + "label": "colour"}, "data.options.moving_digits: label"),
    ({"model__arch": "lm", "model__mixer": "attention"}, "model.arch"),  # an LM cannot read clips
    ({"model__mixer": "attention"}, "model.mixer"),  # a video model needs the space-time mixer
    ({"model__num_layers": 1, "model__mixer_options": {"spacetime": {"kind": "factorised"}}}, "model.num_layers"),
  ],
)
def test_bad_video_settings_name_the_field(overrides, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    tiny_config(**{**VIDEO, **overrides})


def test_token_models_refuse_the_space_time_mixer_and_video_models_refuse_text():
  with pytest.raises(ConfigError, match=r"model\.mixer.*clips"):
    tiny_config(text="x", model__mixer="spacetime")
  with pytest.raises(ConfigError, match=r"model\.arch"):
    tiny_config(text="x", model__arch="video", model__mixer="spacetime")
