"""The mutation check's planted bugs still apply: each snippet occurs exactly once in its file (the check itself,
`python tests/mutations.py`, runs outside CI; a snippet the code no longer has would make it fail loudly there)."""

import os

import pytest

from mutations import MUTATIONS, REPO


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_every_planted_bug_applies_to_the_current_code(mutation):
  text = open(os.path.join(REPO, mutation.path)).read()
  assert text.count(mutation.old) == 1, f"{mutation.name}: update its snippet to the current {mutation.path}"
  assert all(os.path.exists(os.path.join(REPO, t)) for t in mutation.tests.split())
