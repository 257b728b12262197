"""This process's memory, as the benchmarks measure it (Linux ``/proc/self``)."""

from __future__ import annotations


def _status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``), in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_now() -> int:
    """Current resident set size of this process, in bytes."""
    return _status_bytes("VmRSS")


def rss_peak() -> int:
    """Peak resident set size of this process, in bytes.

    VmHWM, not ``ru_maxrss``: Linux keeps ``ru_maxrss`` across ``execve``, so a
    child would report its parent's peak at fork time whenever that is larger.
    """
    return _status_bytes("VmHWM")


def reset_peak() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS, if the kernel lets us."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False
