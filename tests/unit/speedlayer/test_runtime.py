"""speedlayer.runtime.trim_memory: freed heap pages go back to the OS (glibc)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from speedlayer.runtime import trim_memory

# In a fresh interpreter: many 20 kB strings (the size of snapshot messages, which the C allocator
# serves; Python's own arenas take objects up to 512 bytes), freed but for a few survivors
# scattered among them, then the resident memory before and after the trim.
PROBE = """
import sys
from speedlayer.runtime import trim_memory

def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024

held = [("x" * 20_000) + str(i) for i in range(10_000)]
keep = held[::100]  # a few survivors scattered over the heap, as in a live service
del held
before = rss_mb()
trimmed = trim_memory()
print(before, rss_mb(), trimmed)
"""


def test_trim_gives_freed_memory_back_to_the_os() -> None:
    if not trim_memory():
        pytest.skip("no glibc malloc_trim here: nothing to give back")
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    before, after = float(out[0]), float(out[1])
    assert out[2] == "True"
    assert before - after > 100, (before, after)  # of the ~200 MB the strings took
