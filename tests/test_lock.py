"""The lock file pins what requirements.txt asks for: every requirement is locked at a version inside its range (a
lock that disagrees with requirements.txt fails here: rerun `bash .ci/lock`), and CI installs the lock."""

import os
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from conftest import REPO


def _lines(name: str) -> list[str]:
  with open(os.path.join(REPO, name)) as f:
    return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


def locked() -> dict[str, Version]:
  out = {}
  for line in _lines("requirements-lock.txt"):
    name, version = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line).groups()
    out[canonicalize_name(name.split("[")[0])] = Version(version)
  return out


def test_every_requirement_is_locked_inside_its_range():
  pins = locked()
  for line in _lines("requirements.txt"):
    req = Requirement(line)
    name = canonicalize_name(req.name)
    assert name in pins, f"requirements.txt asks for {req.name}, the lock has none. Fix: bash .ci/lock"
    assert req.specifier.contains(pins[name], prereleases=True), (
      f"{req.name}: locked {pins[name]} is outside {req.specifier}. Fix: bash .ci/lock"
    )


def test_ci_installs_the_locked_environment():
  ci = open(os.path.join(REPO, ".ci", "run")).read()
  assert "pip install -q -r requirements-lock.txt" in ci and "--no-deps -e ." in ci
