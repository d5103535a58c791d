"""The planted bugs of ``make mutants`` (tests/mutants.py) still apply to the code.

Left out of the runs of ``make mutants`` itself: in a tree with a bug planted, the
bug's text is no longer there to find.
"""

from __future__ import annotations

import pytest

from . import mutants


@pytest.mark.parametrize("mutant", mutants.MUTANTS, ids=lambda mutant: mutant.id)
def test_every_planted_bug_still_applies_to_the_code(mutant: mutants.Mutant) -> None:
    # Each bug is planted by replacing its text, found exactly once: code that moved
    # must take its planted bugs along, or they would plant nothing.
    assert (mutants.ROOT / mutant.path).read_text().count(mutant.old) == 1
    assert mutant.new != mutant.old
