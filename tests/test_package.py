"""Package-level settings applied at import."""

import os
import subprocess
import sys


def _thp_after_import(env: dict) -> str:
    code = "import os, dinov3_us; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_huge_page_allocation_is_on_by_default_and_the_user_can_turn_it_off():
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    assert _thp_after_import(env) == "1"
    assert _thp_after_import(env | {"THP_MEM_ALLOC_ENABLE": "0"}) == "0"
