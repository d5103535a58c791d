"""Every Python example in README.md runs against the test server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parent.parent / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_examples() -> None:
    assert len(EXAMPLES) >= 5


def run_example(source: str, redis_url: str) -> str:
    """Run a README example in its own process against ``redis_url``; return its output."""
    result = subprocess.run(
        [sys.executable, "-c", source],
        env={**os.environ, "REDIS_URL": redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("source", EXAMPLES, ids=[f"example-{n}" for n in range(len(EXAMPLES))])
def test_readme_example_runs(source: str, redis_url: str, client: object) -> None:
    assert run_example(source, redis_url).strip()
