"""retain_heap_memory: freed large blocks are reused instead of faulted in again."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from src.data.io import REPO_ROOT

# page faults of ten rounds of a product (4 MB) and a 64 MB block made from it, after ten such
# rounds have run: a loop's steady state
STEADY_STATE_FAULTS = """
import resource, sys, torch
from src.runtime import retain_heap_memory
torch.set_num_threads(1)
if sys.argv[1] == "on":
    assert retain_heap_memory()
x = torch.randn(1024, 1024)
def faults(rounds: int) -> int:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        y = (x @ x).exp_()
        block = torch.cat([y] * 16)  # 64 MB, every page written
        del y, block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults(10)
print(faults(10))
"""


def steady_state_faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", STEADY_STATE_FAULTS, mode],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_retained_heap_reuses_freed_blocks_without_faulting_their_pages_again():
    pages = (64 << 20) // 4096
    # glibc's default: a block this large is a fresh mmap, every page faults in again
    assert steady_state_faults("off") > 10 * pages // 2
    assert steady_state_faults("on") < pages // 4
