"""The soak's picture: throughput, p50/p99 latency and errors per 10 s, RSS per worker, faults shaded."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from bench.soak.verdict import Bin, FaultWindow, MemorySample

COLOURS = {
    "keycloak-restart": "tab:orange",
    "rolling-restart": "tab:green",
    "replica-kill": "tab:red",
    "redis-failover": "tab:purple",
    "tiktok-5xx-slow": "tab:brown",
}


def draw(
    path: Path, slices: list[Bin], memory: list[MemorySample], windows: list[FaultWindow], title: str
) -> None:
    import matplotlib as mpl  # noqa: PLC0415 - the bench extra; only the picture needs it

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, (rate, latency, errors, rss) = plt.subplots(4, 1, figsize=(11, 11), sharex=True)
    minutes = [b.start / 60 for b in slices]
    rate.plot(minutes, [b.per_second for b in slices], drawstyle="steps-post", color="tab:blue")
    rate.set_ylabel("requests/s")
    latency.plot(minutes, [b.p50_ms for b in slices], drawstyle="steps-post", label="p50")
    latency.plot(minutes, [b.p99_ms for b in slices], drawstyle="steps-post", label="p99")
    latency.set_yscale("log")
    latency.set_ylabel("latency (ms)")
    latency.legend(loc="upper left")
    errors.bar(
        minutes, [b.server_errors for b in slices], width=1 / 6, align="edge", label="5xx", color="tab:red"
    )
    errors.bar(
        minutes,
        [b.no_answer for b in slices],
        width=1 / 6,
        align="edge",
        bottom=[b.server_errors for b in slices],
        label="no answer",
        color="black",
    )
    errors.set_ylabel("errors per 10 s")
    errors.legend(loc="upper left")
    for replica in sorted({s.replica for s in memory}):
        own = [s for s in memory if s.replica == replica]
        rss.plot([s.at / 60 for s in own], [s.rss_mb for s in own], label=replica)
    rss.set_ylabel("RSS per worker (MB)")
    rss.set_xlabel("minutes")
    rss.legend(loc="upper left")
    for axis in (rate, latency, errors, rss):
        for window in windows:
            axis.axvspan(
                window.start / 60, window.end / 60, color=COLOURS.get(window.name, "grey"), alpha=0.15
            )
        axis.grid(alpha=0.3)
    for window in windows:
        rate.annotate(
            window.name,
            xy=(window.start / 60, 1),
            xycoords=("data", "axes fraction"),
            fontsize=7,
            rotation=90,
            va="top",
            ha="right",
        )
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
