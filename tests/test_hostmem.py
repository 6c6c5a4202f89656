"""glibc malloc policies (``scnet.hostmem``): each is checked by its effect on page faults, in a fresh process."""
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

# Allocates and frees float tensors of 1-30 MB in a fixed order, touching every page, and prints the minor page
# faults of the second pass (the first one grows the heap under any policy).
FAULTS = """
import resource, sys, torch
from scnet.hostmem import keep_freed_memory, map_large_blocks_directly
ok = {"keep": keep_freed_memory, "direct": map_large_blocks_directly}[sys.argv[1]]()
sizes = [(7 * i) % 29 + 1 for i in range(40)]  # MB
def churn():
    for mb in sizes:
        t = torch.empty(mb * 2**18)
        t.fill_(1.0)
        del t
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(ok, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(policy: str, **env: str) -> tuple[bool, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", FAULTS, policy], env={**clean, **env}, capture_output=True, text=True, check=True)
    ok, faults = out.stdout.split()
    return ok == "True", int(faults)


def test_kept_memory_is_reused_without_page_faults() -> None:
    kept_ok, kept = _run("keep")
    direct_ok, direct = _run("direct")
    assert kept_ok and direct_ok
    pages = sum((7 * i) % 29 + 1 for i in range(40)) * 2**20 // 4096  # every 4 KiB page of the second pass
    assert direct > 0.9 * pages / 512  # each block its own mapping: every page faults again (a 2 MiB one under THP)
    assert kept < 0.05 * direct


def test_the_users_own_glibc_settings_win() -> None:
    ok, _ = _run("keep", MALLOC_TRIM_THRESHOLD_="1000000")
    assert not ok
