"""Facts about the running machine that the solver and the benchmark both need."""

from __future__ import annotations


def available_memory() -> int:
    """Bytes the system can still give (MemAvailable); a large number if unknown."""
    return _proc_kilobytes("/proc/meminfo", "MemAvailable:", default=1 << 62)


def rss_anon() -> int:
    """Current anonymous resident memory of this process in bytes (0 if unknown)."""
    return _proc_kilobytes("/proc/self/status", "RssAnon:", default=0)


def _proc_kilobytes(path: str, field: str, default: int) -> int:
    """A ``field: <n> kB`` line of a /proc file, in bytes; ``default`` if absent."""
    try:
        with open(path) as lines:
            for line in lines:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return default
