"""One log line at configure naming the device SAFNet runs on: the GPU's name and memory, or the CPU.

docs/gpu.md tells how to get a CUDA build of torch (x86 and Jetson); this line is how a user sees that it
worked, e.g. ``inference device: cuda:0 = NVIDIA H100 80GB HBM3, 79.1 GiB (torch 2.x+cu12y, CUDA 12.y)``.
"""
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
