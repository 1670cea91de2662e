"""One log line at configure naming the device SAFNet runs on (the GPU's name and memory, or the CPU):
how a user sees that a CUDA build of torch (docs/gpu.md) works."""
from __future__ import annotations

import os
import platform

import torch


def describe(device: str) -> str:
    """Words naming ``device`` ('cpu', 'cuda', 'cuda:N'): model and memory for a GPU, cores for the CPU."""
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return (f"inference device: cuda:{index} = {props.name}, {props.total_memory / 2**30:.1f} GiB "
                f"(torch {torch.__version__}, CUDA {torch.version.cuda})")
    cpu = platform.processor() or platform.machine()
    return (f"inference device: cpu ({cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} using "
            f"{torch.get_num_threads()} threads; no CUDA)" if not torch.cuda.is_available() else
            f"inference device: cpu ({cpu}, torch {torch.__version__}; CUDA present but not chosen)")


__all__ = ["describe"]
