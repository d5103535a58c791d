"""The whole benchmark report: tables, targets, and a plot, from one run's figures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .contention import OURS, SCENARIOS, Row
from .contention import table as contention_table
from .stores import table as stores_table
from .uncontended import Report
from .uncontended import format_markdown as uncontended_markdown

#: The peer every "x redis-py" figure is relative to: redis-py's Lock with its defaults.
REDIS_PY_DEFAULT = "redis-py Lock (sleep 0.1)"


@dataclass(frozen=True, slots=True)
class Target:
    """One goal, what this run measured for it, and whether it was met.

    :ivar met: ``None`` when a figure it needs is missing (a peer that failed)
    """

    goal: str
    measured: str
    met: bool | None


@dataclass(frozen=True, slots=True)
class Results:
    """Everything one run measured.

    :ivar uncontended: the floor and uncontended cost (``None`` if not run)
    :ivar rows: the contended scenarios, every implementation
    :ivar commands: commands the server ran per uncontended section, by implementation
    :ivar problems: peers that could not be measured, and why
    :ivar replicas: microseconds per uncontended pair with and without replica
        acknowledgement, on a primary with one replica (empty if not run)
    :ivar election: milliseconds from an ``Election`` leader's ``resign()`` to the
        next leader's term (empty if not run)
    :ivar flight: a ``SingleFlight`` of 64 callers: job runs per flight, milliseconds
        from the job's end to the callers' values (empty if not run)
    :ivar rwlock: sections per second of a ``ReadWriteLock`` and of a ``Mutex`` doing
        the same work, by mix (empty if not run)
    :ivar stores: a ``Mutex`` on each store: uncontended pairs/s, sections/s and p99
        wait (ms) of 64 coroutines on one name (empty if not run)
    """

    uncontended: Report | None
    rows: tuple[Row, ...]
    commands: dict[str, float]
    problems: tuple[str, ...]
    replicas: dict[str, float] = field(default_factory=dict)
    election: dict[str, float] = field(default_factory=dict)
    flight: dict[str, float] = field(default_factory=dict)
    rwlock: dict[str, float] = field(default_factory=dict)
    stores: dict[str, tuple[float, float, float]] = field(default_factory=dict)


def _rows_of(results: Results, scenario_key: str) -> tuple[Row | None, list[Row]]:
    """asynclock's row and the peers' rows of one scenario."""
    label = SCENARIOS[scenario_key].label
    rows = [row for row in results.rows if row.scenario == label]
    ours = next((row for row in rows if row.implementation == OURS), None)
    return ours, [row for row in rows if row.implementation != OURS]


def _throughput_target(ours: Row, peers: list[Row]) -> Target:
    """Sections per second at least the fastest peer's, in one scenario."""
    fastest = max(peers, key=lambda row: row.sections_per_second)
    return Target(
        f"{ours.scenario}: sections/s >= the best peer's",
        f"{ours.sections_per_second:.0f} against {fastest.sections_per_second:.0f}"
        f" ({fastest.implementation}): "
        f"{ours.sections_per_second / fastest.sections_per_second:.2f}x",
        ours.sections_per_second >= fastest.sections_per_second,
    )


def _longest_wait_target(ours: Row, peers: list[Row]) -> Target:
    """The longest wait at most the best peer's longest, in one scenario."""
    best = min(peers, key=lambda row: row.wait_max_ms)
    return Target(
        f"{ours.scenario}: longest wait <= the best peer's",
        f"{ours.wait_max_ms:.1f} ms against {best.wait_max_ms:.1f} ms ({best.implementation})",
        ours.wait_max_ms <= best.wait_max_ms,
    )


def targets(results: Results) -> list[Target]:
    """Each goal of the benchmark suite, checked against this run's figures."""
    found: list[Target] = []
    report = results.uncontended
    if report is not None:
        mutex, peer = report.row("mutex"), report.row("redis-py")
        two_evalsha = 2 * report.row("evalsha").median_us
        ratio = mutex.per_second / peer.per_second
        # Two empty scripts are as near as any pair of script calls can come: said
        # beside the figure, since the goal is out of reach whenever they miss it too.
        floor = report.row("floor")
        found.append(
            Target(
                "uncontended Mutex acquire+release: pairs/s >= 1.0x redis-py's Lock",
                f"{ratio:.2f}x ({mutex.median_us:.0f} us against {peer.median_us:.0f} us;"
                f" two empty scripts: {floor.per_second / peer.per_second:.2f}x)",
                ratio >= 1.0,
            )
        )
        factor = mutex.median_us / two_evalsha
        found.append(
            Target(
                "uncontended Mutex acquire+release: <= 1.2x two EVALSHA round trips",
                f"{factor:.2f}x ({mutex.median_us:.0f} us against 2 x {two_evalsha / 2:.0f} us)",
                factor <= 1.2,
            )
        )
    ours, peers = _rows_of(results, "64")
    if ours is not None and peers:
        best = min(peers, key=lambda row: row.wait_p99_ms)
        found.append(
            Target(
                "64 coroutines, 1 name: wait p99 <= 1/4 of the best peer's",
                f"{ours.wait_p99_ms:.0f} ms against {best.wait_p99_ms:.0f} ms "
                f"({best.implementation}): {ours.wait_p99_ms / best.wait_p99_ms:.2f}x",
                ours.wait_p99_ms <= best.wait_p99_ms / 4,
            )
        )
        found.append(_throughput_target(ours, peers))
    own = results.commands.get(OURS)
    if ours is not None and own is not None:
        found.append(
            Target(
                "64 coroutines, 1 name: server commands/section <= 1.5x asynclock's "
                "uncontended figure",
                f"{ours.commands_per_section:.1f} against {own:.1f} uncontended: "
                f"{ours.commands_per_section / own:.2f}x",
                ours.commands_per_section <= 1.5 * own,
            )
        )
    ours, _ = _rows_of(results, "64x0")
    if ours is not None and report is not None:
        evalsha_rate = 1_000_000 / report.row("evalsha").median_us
        share = ours.sections_per_second / evalsha_rate
        found.append(
            Target(
                "64 coroutines, 1 name, empty sections: sections/s >= 0.5x the client's "
                "sequential EVALSHA rate",
                f"{ours.sections_per_second:.0f} against {evalsha_rate:.0f}/s: {share:.2f}x",
                share >= 0.5,
            )
        )
    ours, peers = _rows_of(results, "2")
    if ours is not None and peers:
        found.append(_longest_wait_target(ours, peers))
        default = next((row for row in peers if row.implementation == REDIS_PY_DEFAULT), None)
        if default is not None:
            ratio = ours.sections_per_second / default.sections_per_second
            found.append(
                Target(
                    "2 coroutines, 1 name: sections/s >= 0.8x redis-py's default Lock",
                    f"{ours.sections_per_second:.0f} against "
                    f"{default.sections_per_second:.0f}: {ratio:.2f}x",
                    ratio >= 0.8,
                )
            )
    ours, peers = _rows_of(results, "4x8")
    if ours is not None and peers:
        found.append(_throughput_target(ours, peers))
        found.append(_longest_wait_target(ours, peers))
    found += _cluster_targets(results)
    overlapping = sum(row.overlaps for row in results.rows)
    found.append(
        Target("no overlapping sections, any implementation", f"{overlapping}", overlapping == 0)
    )
    return found


#: Each Cluster scenario, and the single-server scenario it is held against.
CLUSTER_PAIRS = (("c64", "64"), ("c4x8", "4x8"), ("c1000names", "1000names"))
#: How far asynclock on a cluster may fall behind its own single-server figures.
CLUSTER_FACTOR = 1.5


def _cluster_targets(results: Results) -> list[Target]:
    """On Cluster: within 1.5x of the single server, and ahead of redis-py there."""
    found = []
    for cluster_key, single_key in CLUSTER_PAIRS:
        ours, peers = _rows_of(results, cluster_key)
        single, _ = _rows_of(results, single_key)
        if ours is None:
            continue
        if single is not None:
            slower = single.sections_per_second / ours.sections_per_second
            found.append(
                Target(
                    f"{ours.scenario}: sections/s >= 1/{CLUSTER_FACTOR}x the single server's",
                    f"{ours.sections_per_second:.0f} against {single.sections_per_second:.0f}:"
                    f" {1 / slower:.2f}x",
                    slower <= CLUSTER_FACTOR,
                )
            )
            longer = ours.wait_p99_ms / single.wait_p99_ms
            found.append(
                Target(
                    f"{ours.scenario}: wait p99 <= {CLUSTER_FACTOR}x the single server's",
                    f"{ours.wait_p99_ms:.1f} ms against {single.wait_p99_ms:.1f} ms: {longer:.2f}x",
                    longer <= CLUSTER_FACTOR,
                )
            )
        if cluster_key == "c64" and peers:
            found.append(_throughput_target(ours, peers))
            best = min(peers, key=lambda row: row.wait_p99_ms)
            found.append(
                Target(
                    f"{ours.scenario}: wait p99 <= the best peer's",
                    f"{ours.wait_p99_ms:.1f} ms against {best.wait_p99_ms:.1f} ms"
                    f" ({best.implementation})",
                    ours.wait_p99_ms <= best.wait_p99_ms,
                )
            )
    return found


def _mark(met: bool | None) -> str:
    return {True: "met", False: "missed", None: "not measured"}[met]


def markdown(results: Results, command: str, plot: str | None) -> str:
    """The report as Markdown; ``plot`` is the PNG's file name, if one was drawn."""
    lines = ["# asynclock benchmark report", ""]
    if results.uncontended is not None:
        lines += [
            "## The floor and uncontended cost",
            "",
            uncontended_markdown(results.uncontended).rstrip(),
            "",
        ]
    lines += [
        "## Contended hand-off",
        "",
        f"`{command}`. Each section holds the lock 1 ms (none in *empty sections*). *wait*"
        " is from asking for the lock to holding it; *hand-offs* is the share of sections"
        " whose holder differs from the previous holder of that name (a polling lock "
        "mostly lets the releasing coroutine take it straight back); *server "
        "commands/section* comes from `INFO commandstats` deltas and counts the commands "
        "inside Lua scripts too; *overlaps* must be 0. python-redis-lock is synchronous: "
        "it runs in one thread per worker.",
        "",
        contention_table(results.rows),
        "",
    ]
    if results.commands:
        lines += [
            "Server commands per section without contention (one coroutine, a free lock):",
            "",
            "| implementation | server commands/section |",
            "|:---|---:|",
            *(f"| {label} | {value:.1f} |" for label, value in results.commands.items()),
            "",
        ]
    if plot is not None:
        lines += [f"![wait percentiles and throughput per scenario]({plot})", ""]
    if results.replicas:
        lines += ["## Replica acknowledgement", "", replicas_table(results.replicas), ""]
    if results.election:
        lines += [
            "## Election hand-over",
            "",
            "Two replicas take turns leading; the campaigner is woken by the step-down:",
            "",
            "| what | ms |",
            "|:---|---:|",
            *(f"| {label} | {value:.2f} |" for label, value in results.election.items()),
            "",
        ]
    if results.flight:
        lines += [
            "## Single flight",
            "",
            "64 callers over four clients ask one flight at once; the job takes 20 ms:",
            "",
            "| what | value |",
            "|:---|---:|",
            *(f"| {label} | {value:.2f} |" for label, value in results.flight.items()),
            "",
        ]
    if results.rwlock:
        lines += [
            "## Read-write lock",
            "",
            "2 clients x 8 coroutines, each section held 2 ms; reads share a",
            "`ReadWriteLock`, every section is alone under a `Mutex`:",
            "",
            "| mix, lock | sections/s |",
            "|:---|---:|",
            *(f"| {label} | {value:.0f} |" for label, value in results.rwlock.items()),
            "",
        ]
    if results.stores:
        lines += [
            "## Stores",
            "",
            "A `Mutex` on each store, the PostgreSQL server a private one on 127.0.0.1",
            "(`benchmarks.stores`). Memory does no I/O: its figures are the library's own",
            "overhead, the floor under every store.",
            "",
            stores_table(results.stores),
            "",
        ]
    lines += ["## Targets", "", "| target | measured | |", "|:---|:---|:---|"]
    lines += [
        f"| {target.goal} | {target.measured} | {_mark(target.met)} |"
        for target in targets(results)
    ]
    lines.append("")
    if results.problems:
        lines += ["## Not measured", ""]
        lines += [f"- {problem}" for problem in results.problems]
        lines.append("")
    return "\n".join(lines)


def replicas_table(figures: dict[str, float]) -> str:
    """The cost of ``replicas=1`` as a Markdown table, against ``replicas=0``."""
    base = next(iter(figures.values()))
    lines = [
        "A primary and one replica on this machine (they share its cores with the client);"
        " uncontended pairs, interleaved rounds, median round:",
        "",
        "| what | us per pair | vs the first |",
        "|:---|---:|---:|",
    ]
    lines += [
        f"| {label} | {micros:.0f} | {micros / base:.2f}x |" for label, micros in figures.items()
    ]
    return "\n".join(lines)


def draw(rows: Sequence[Row], path: Path) -> None:
    """Draw wait percentiles and throughput per scenario, implementations side by side.

    :raises ImportError: matplotlib is not installed (``pip install '.[bench]'``)
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(row.scenario for row in rows))
    labels = list(dict.fromkeys(row.implementation for row in rows))
    by_key = {(row.scenario, row.implementation): row for row in rows}
    width = 0.8 / max(1, len(labels))
    figure, (waits, throughput) = plt.subplots(2, 1, figsize=(13, 9), sharex=True)
    colours = plt.get_cmap("tab10")
    for index, label in enumerate(labels):
        xs, p50, p99, longest, rates = [], [], [], [], []
        for position, scenario in enumerate(scenarios):
            row = by_key.get((scenario, label))
            if row is None:
                continue
            xs.append(position - 0.4 + width * (index + 0.5))
            p50.append(max(row.wait_p50_ms, 0.01))
            p99.append(max(row.wait_p99_ms, 0.01))
            longest.append(max(row.wait_max_ms, 0.01))
            rates.append(row.sections_per_second)
        colour = colours(index)
        waits.bar(xs, p99, width, color=colour, label=label)
        waits.scatter(xs, longest, marker="v", color="black", s=14, zorder=3)
        waits.scatter(xs, p50, marker="o", color="white", edgecolors="black", s=14, zorder=3)
        throughput.bar(xs, rates, width, color=colour)
    waits.set_yscale("log")
    waits.set_ylabel("wait, ms (bar: p99, o: p50, v: max)")

    waits.grid(axis="y", which="major", alpha=0.3)
    throughput.set_ylabel("sections per second")
    throughput.grid(axis="y", alpha=0.3)
    throughput.set_xticks(range(len(scenarios)), scenarios, fontsize="small")
    figure.suptitle("Contended hand-off: asynclock beside the other Python libraries")
    handles, names = waits.get_legend_handles_labels()
    figure.legend(
        handles,
        names,
        loc="upper center",
        ncols=len(names),
        fontsize="small",
        bbox_to_anchor=(0.5, 0.955),
        frameon=False,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.93))
    figure.savefig(path, dpi=100)
    plt.close(figure)
