"""Peak dense bf16 FLOP/s of one accelerator chip, by the device_kind JAX reports (for MFU)."""

from __future__ import annotations

# Vendor figures, dense (no sparsity), bf16, per chip. Longer names first: "TPU v5 lite"
# before "TPU v5", "H100 PCIe" before "H100".
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("TPU v6 lite", 918e12), ("TPU v6e", 918e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
    ("TPU v5p", 459e12), ("TPU v5", 459e12), ("TPU v4", 275e12),
    ("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("A100", 312e12),
)


def peak_flops(device_kind: str) -> float | None:
  """The chip's peak, or None where it is not in the table (a CPU: give it yourself)."""
  for name, flops in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return flops
  return None
