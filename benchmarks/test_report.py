"""``python -m benchmarks`` end to end, briefly: the report, its targets and its plot."""

from __future__ import annotations

from pathlib import Path

from benchmarks.__main__ import main


def test_the_report_is_printed_and_written_with_its_plot(tmp_path: Path, capsys: object) -> None:
    arguments = ["--iterations", "20", "--rounds", "1", "--seconds", "0.3"]
    assert main([*arguments, "--scenarios", "2", "--out", str(tmp_path)]) == 0
    (markdown,) = tmp_path.glob("*-report.md")
    (plot,) = tmp_path.glob("*-report.png")
    text = markdown.read_text()
    assert "| Mutex acquire+release |" in text  # the uncontended part, with its floor
    assert "| EVALSHA 'return 1' |" in text
    assert "| 2 empty scripts (the floor) |" in text
    assert "two empty scripts: " in text  # beside the pair's target
    assert "| 2 coroutines, 1 name | asynclock Mutex |" in text
    assert "| 2 coroutines, 1 name | python-redis-lock (threads) |" in text
    assert "Server commands per section without contention" in text
    assert "2 coroutines, 1 name: longest wait <= the best peer's" in text  # a target
    assert "## Replica acknowledgement" in text
    assert "## Election hand-over" in text
    assert "## Not measured" not in text  # every peer ran, the plot was drawn
    assert f"]({plot.name})" in text
    assert plot.read_bytes().startswith(b"\x89PNG")
