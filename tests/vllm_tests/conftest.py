"""vLLM tests (`make test-vllm`, in .venv-vllm): every test here is marked `vllm` and skips with its reason where
vllm is not importable (`make test` excludes them). The engine runs in this process
(VLLM_ENABLE_V1_MULTIPROCESSING=0: no engine-core process to spawn or leave behind) with a 1 GiB CPU KV cache.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

_spec = importlib.util.find_spec("vllm")
VLLM_MISSING = _spec is None or _spec.origin is None  # a folder named vllm on sys.path is no vllm
SKIP_REASON = "vllm is not installed here (make test-vllm builds .venv-vllm and runs these tests)"
HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.vllm)
            if VLLM_MISSING:
                item.add_marker(pytest.mark.skip(reason=SKIP_REASON))
