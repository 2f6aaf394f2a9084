"""vantage_core.allocator: glibc reuses freed blocks once vantage_core is imported, and the user's
own malloc settings win."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")

# Allocate, touch and free a 64 MiB block five times; print the page faults of the last four.
FAULTS = """
import ctypes, resource
{setup}
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def cycle():
    p = libc.malloc(64 << 20)
    ctypes.memset(p, 1, 64 << 20)
    libc.free(p)
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def run(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "VANTAGE_MALLOC"}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_importing_vantage_core_stops_page_faults_on_reused_blocks():
    pages = 4 * (64 << 20) // 4096
    kept = int(run(FAULTS.format(setup="import vantage_core")))
    default = int(run(FAULTS.format(setup="import vantage_core"), VANTAGE_MALLOC="default"))
    assert default > pages // 2  # glibc maps and faults the block in again each time
    assert kept < pages // 100


def test_status_says_what_was_done():
    code = "import vantage_core.allocator as a; print(a.keep_freed_memory())"
    assert "keeps freed blocks up to 1 GiB" in run(code)
    assert run(code, VANTAGE_MALLOC="default").startswith("VANTAGE_MALLOC=default")
    assert run(code, MALLOC_ARENA_MAX="2") == "MALLOC_* is set: left to it"


def test_doctor_reports_the_allocator():
    out = run("from vantage_core.cli.doctor import report; print('\\n'.join(report(64)))")
    assert "allocator     glibc keeps freed blocks" in out
