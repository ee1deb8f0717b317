"""The machine's matmul peak, for model-FLOPs utilisation (MFU = achieved / peak FLOP/s).

On a GPU we use the vendor's dense bf16 peak for known parts; anywhere else (a CPU, an unknown
GPU) we measure a large matmul, which is the honest ceiling for this process's thread count.
"""

from __future__ import annotations

import time

import torch

# dense (no sparsity) tensor-core peaks, FLOP/s, by a substring of torch.cuda.get_device_name()
GPU_BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "4090": 165e12}
_measured: dict[tuple[str, torch.dtype], float] = {}


def measure_matmul_peak(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        n: int = 2048, seconds: float = 0.5) -> float:
    """FLOP/s of repeated n x n @ n x n matmuls on this device (best of the timed repetitions)."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up: first call pays for kernel selection / thread-pool start
    sync()
    best, spent = 0.0, 0.0
    while spent < seconds:
        t0 = time.perf_counter()
        a @ b
        sync()
        dt = time.perf_counter() - t0
        spent += dt
        best = max(best, 2 * n**3 / dt)
    return best


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The peak MFU is measured against (cached per device type and dtype)."""
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_BF16_PEAK.items():
            if key in name:
                return value
    key = (str(device), dtype)
    if key not in _measured:
        _measured[key] = measure_matmul_peak(device, dtype, n=1024 if device.type == "cpu" else 8192, seconds=0.3)
    return _measured[key]
