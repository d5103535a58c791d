"""Every Python example in README.md runs: those that take their store from
``LOCKS_URL`` on Redis, on PostgreSQL and in memory; the others on Redis."""

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


def run_example(source: str, redis_url: str, locks_url: str | None = None) -> str:
    """Run a README example in its own process; return its output."""
    result = subprocess.run(
        [sys.executable, "-c", source],
        env={**os.environ, "REDIS_URL": redis_url, "LOCKS_URL": locks_url or redis_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("source", EXAMPLES, ids=[f"example-{n}" for n in range(len(EXAMPLES))])
def test_readme_example_runs(source: str, redis_url: str, client: object) -> None:
    assert run_example(source, redis_url).strip()


ON_ANY_STORE = [n for n, source in enumerate(EXAMPLES) if "LOCKS_URL" in source]


def test_most_examples_run_on_any_store() -> None:
    assert len(ON_ANY_STORE) >= 10


@pytest.mark.parametrize("store", ["memory", "postgres"])
@pytest.mark.parametrize("number", ON_ANY_STORE, ids=[f"example-{n}" for n in ON_ANY_STORE])
def test_readme_example_runs_on_other_stores(
    number: int, store: str, redis_url: str, request: pytest.FixtureRequest
) -> None:
    locks_url = "memory://" if store == "memory" else request.getfixturevalue("postgres_url")
    assert run_example(EXAMPLES[number], redis_url, locks_url).strip()
