"""Accelerator chips: peak dense bf16 FLOP/s, HBM and its bandwidth, by the device_kind JAX
reports. MFU in training metrics, every prediction of `python -m mind_jax.plan` and the GPU
benchmarks read this one table."""

from __future__ import annotations

import dataclasses
import glob
import os

GiB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
  kind: str             # a substring of jax's device_kind
  peak_flops: float     # dense bf16 FLOP/s per chip (no sparsity)
  hbm_bytes: int        # per chip
  hbm_bandwidth: float  # bytes/s per chip


# Vendor figures per chip (Cloud TPU system architecture pages, NVIDIA data sheets). Longer
# names first: "TPU v5 lite" before "TPU v5", "H100 PCIe" before "H100".
CHIPS: tuple[Chip, ...] = (
    Chip("TPU v6 lite", 918e12, 32 * GiB, 1640e9),
    Chip("TPU v6e", 918e12, 32 * GiB, 1640e9),
    Chip("TPU v5 lite", 197e12, 16 * GiB, 819e9),
    Chip("TPU v5e", 197e12, 16 * GiB, 819e9),
    Chip("TPU v5p", 459e12, 95 * GiB, 2765e9),
    Chip("TPU v5", 459e12, 95 * GiB, 2765e9),
    Chip("TPU v4", 275e12, 32 * GiB, 1228e9),
    Chip("H100 PCIe", 756e12, 80 * GiB, 2000e9),
    Chip("H100 NVL", 835e12, 94 * GiB, 3900e9),
    Chip("H100", 989e12, 80 * GiB, 3350e9),
    Chip("H200", 989e12, 141 * GiB, 4800e9),
    Chip("A100-PCIE-40GB", 312e12, 40 * GiB, 1555e9),
    Chip("A100", 312e12, 80 * GiB, 2039e9),
    Chip("L4", 121e12, 24 * GiB, 300e9),
)


def chip(device_kind: str) -> Chip | None:
  """The table's entry for a device, or None (a CPU, an unlisted card)."""
  for entry in CHIPS:
    if entry.kind.lower() in device_kind.lower():
      return entry
  return None


def peak_flops(device_kind: str) -> float | None:
  """The chip's peak, or None where it is not in the table (a CPU: give it yourself)."""
  entry = chip(device_kind)
  return entry.peak_flops if entry else None


def peak_bandwidth(device_kind: str) -> float | None:
  """The chip's HBM bandwidth in bytes/s, or None where it is not in the table."""
  entry = chip(device_kind)
  return entry.hbm_bandwidth if entry else None


# Device files of accelerators: TPU VMs (/dev/accel* up to v5p, /dev/vfio on v5e and v6e),
# NVIDIA and AMD GPUs.
ACCELERATOR_FILES = ("/dev/accel*", "/dev/vfio/*", "/dev/nvidia[0-9]*", "/dev/kfd")


def cpu_only_unless_accelerated() -> None:
  """On a machine without accelerators, JAX runs on its CPU backend only: libtpu (which the
  test extra installs) otherwise starts, finds no TPU, and prints lines about missing TPU
  hosts on every job. A platform the user chose (JAX_PLATFORMS) stands; compiling for a TPU
  topology (`plan`) does not need the TPU backend."""
  if os.environ.get("JAX_PLATFORMS") or any(glob.glob(p) for p in ACCELERATOR_FILES):
    return
  import jax
  # jax read JAX_PLATFORMS when imported; its backends start at the first device query.
  jax.config.update("jax_platforms", "cpu")
