"""Facts about the running machine that the solver and the benchmark both need."""

from __future__ import annotations


def available_memory() -> int:
    """Bytes the system can still give (MemAvailable in /proc/meminfo).

    Fails closed: 0 when the figure is unknown (no /proc/meminfo, as off Linux,
    or no MemAvailable line in it), so that a caller never allocates a large
    buffer on the assumption that there is room.
    """
    return _proc_kilobytes("/proc/meminfo", "MemAvailable:", default=0)


def rss_anon() -> int:
    """Current anonymous resident memory of this process in bytes (0 if unknown)."""
    return _proc_kilobytes("/proc/self/status", "RssAnon:", default=0)


def _proc_kilobytes(path: str, field: str, default: int) -> int:
    """A ``field: <n> kB`` line of a /proc file, in bytes; ``default`` if the file
    or the line is missing or unreadable."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return default
