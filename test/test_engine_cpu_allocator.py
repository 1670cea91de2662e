"""The malloc tuning keeps a forward's freed temporaries in the process (no page-fault churn)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from safnet_ros.engine import cpu_allocator

_CHURN = r"""
import json, resource
from safnet_ros.engine.cpu_allocator import tune_cpu_allocator
applied = tune_cpu_allocator()
import torch
from safnet_ros.model.config import SafnetConfig
from safnet_ros.model.safnet import build_model
from safnet_ros.tools.bench_model import synthetic_bench_batch
torch.set_num_threads(1)
batch = synthetic_bench_batch(4000, 1, 120, 160, torch.device("cpu"))
model = build_model(SafnetConfig.preset("lite")).eval()
with torch.inference_mode():
    model(batch)  # warm-up: the heap grows once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model(batch)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _run_churn(env_switch: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_",
                                                           "MALLOC_TRIM_THRESHOLD_")}
    env[cpu_allocator.ENV_SWITCH] = env_switch
    out = subprocess.run([sys.executable, "-c", _CHURN], env=env, capture_output=True, text=True, timeout=120,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_tuned_malloc_reuses_freed_tensors_instead_of_faulting_them_in_again():
    plain = _run_churn("0")
    tuned = _run_churn("1")
    assert plain["applied"] is False
    assert tuned["applied"] is True
    # Untuned, every forward faults its large temporaries in again (measured ~7,100
    # page faults per forward of this chunk); tuned, they are reused (~750).
    assert plain["faults"] > 3000
    assert tuned["faults"] < plain["faults"] / 4


def test_user_malloc_settings_and_the_switch_win(monkeypatch):
    monkeypatch.setenv(cpu_allocator.ENV_SWITCH, "off")
    assert cpu_allocator._apply() is False
    monkeypatch.setenv(cpu_allocator.ENV_SWITCH, "1")
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000")
    assert cpu_allocator._apply() is False



_WORKER_CHURN = _CHURN.replace("synthetic_bench_batch(4000, 1, 120, 160", "synthetic_bench_batch(25000, 3, 120, 160")
_WORKER_CHURN = _WORKER_CHURN.replace("""with torch.inference_mode():
    model(batch)  # warm-up: the heap grows once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        model(batch)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
""", """import threading
result = {}
def work():  # as the node runs the model: in a worker thread
    with torch.inference_mode():
        model(batch)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(3):
            model(batch)
    result["faults"] = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3
worker = threading.Thread(target=work)
worker.start()
worker.join()
faults = result["faults"]
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc tuning is Linux-only")
def test_tuned_malloc_reuses_freed_tensors_in_a_worker_thread_too():
    """The node runs the model in a worker thread. Unless glibc is held to one arena, that thread mallocs
    from an arena of its own whose 64 MiB heaps do not keep a 25k-point forward's temporaries: measured
    ~29k page faults per forward with the thresholds alone, ~1.4k with one arena."""
    assert "threading.Thread" in _WORKER_CHURN and "25000, 3" in _WORKER_CHURN
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_",
                                                           "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX")}
    env[cpu_allocator.ENV_SWITCH] = "1"
    runs = {}
    for name, prefix in (("arenas", "import safnet_ros.engine.cpu_allocator as c; c.ARENA_MAX = 8\n"), ("one", "")):
        out = subprocess.run([sys.executable, "-c", prefix + _WORKER_CHURN], env=env, capture_output=True,
                             text=True, timeout=300, check=True)
        runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
    assert runs["one"]["applied"] is True and runs["arenas"]["applied"] is True
    assert runs["arenas"]["faults"] > 8000
    assert runs["one"]["faults"] < runs["arenas"]["faults"] / 4
