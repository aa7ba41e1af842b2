"""TPU slices by the names users rent them under, and their devices for ahead-of-time compiles.

Cloud TPU names v4 and v5p slices by TensorCores (v5p-8 is 4 chips: two cores per chip, run
as one "megacore" device) and v5e / v6e slices by chips (v6e-8 is 8 chips). With the libtpu
wheel installed, `devices()` describes any of them on a machine without a TPU, and
`jax.jit(...).lower(...).compile()` for those devices runs the real TPU compiler.
"""

from __future__ import annotations

import dataclasses
import math

from mind_jax._devices import Chip, chip
from mind_jax._errors import MindJaxError

# Chip grids per slice size. v5e and v6e: 2-D (chips); v4 and v5p: 3-D (chips = cores / 2).
_GRID_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
            128: (8, 16), 256: (16, 16)}
_GRID_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
            128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8)}


@dataclasses.dataclass(frozen=True)
class Generation:
  prefix: str           # as users type it: "v5p"
  compiler_name: str    # libtpu's topology prefix: "v5"
  device_kind: str      # what jax reports
  named_by_cores: bool  # v4 / v5p: the number in the name counts TensorCores
  grids: dict


GENERATIONS = {
    "v4": Generation("v4", "v4", "TPU v4", True, _GRID_3D),
    "v5p": Generation("v5p", "v5", "TPU v5", True, _GRID_3D),
    "v5e": Generation("v5e", "v5e", "TPU v5 lite", False, _GRID_2D),
    "v6e": Generation("v6e", "v6e", "TPU v6 lite", False, _GRID_2D),
}
_ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class Slice:
  """One TPU slice: its name, chip grid and hosts, and the chip's figures."""

  name: str
  generation: Generation
  grid: tuple[int, ...]
  host_chips: int | None = None  # chips per host where it is not the slice size's usual

  @property
  def chips(self) -> int:
    return math.prod(self.grid)

  @property
  def chips_per_host(self) -> int:
    if self.host_chips:
      return self.host_chips
    # Single-host v5e/v6e machines hold up to 8 chips; every multi-host slice has 4 per host.
    if not self.generation.named_by_cores and self.chips <= 8:
      return self.chips
    return min(4, self.chips)

  @property
  def hosts(self) -> int:
    return self.chips // self.chips_per_host

  @property
  def chip(self) -> Chip:
    return chip(self.generation.device_kind)

  @property
  def topology_name(self) -> str:
    return f"{self.generation.compiler_name}:{'x'.join(map(str, self.grid))}"

  def compiler_options(self) -> dict:
    """Arguments of `get_topology_desc` besides the topology name."""
    options = {}
    if self.generation.named_by_cores:
      options["chip_config_name"] = "megacore"
      # Wrap-around links exist on full cubes (every dimension a multiple of 4).
      options["wrap"] = tuple(d % 4 == 0 for d in self.grid)
    if self.chips_per_host == self.chips:
      options["chips_per_host_bounds"] = self.grid + (1,) * (3 - len(self.grid))
    elif self.generation.prefix == "v5p" or self.host_chips:
      options["chips_per_host_bounds"] = (2, 2, 1)
    return options

  def engine_slice(self, hosts: int = 1) -> Slice:
    """The chips of `hosts` hosts (-1: all) as a slice of their own: what one engine of a
    generate job compiles for (the compiler wants a whole topology, not some of a larger
    one's devices)."""
    hosts = self.hosts if hosts == -1 else hosts
    if hosts >= self.hosts:
      return self
    chips = self.chips_per_host * hosts
    if chips not in self.generation.grids:
      raise MindJaxError(f"engine.hosts={hosts}: {chips} chips of {self.name} are not a slice "
                         "shape the TPU compiler knows")
    sub = Slice(f"{self.generation.prefix}-{chips * (2 if self.generation.named_by_cores else 1)}",
                self.generation, self.generation.grids[chips])
    # A sub-slice of a multi-host slice keeps its 4-chip hosts (a v5e-8 alone is one host).
    return sub if sub.chips_per_host == self.chips_per_host else dataclasses.replace(
        sub, host_chips=self.chips_per_host)

  def host_slice(self) -> Slice:
    """One host of this slice as a slice of its own."""
    return self.engine_slice(1)

  def row(self) -> dict:
    c = self.chip
    return {"topology": self.name, "chips": self.chips, "layout": "x".join(map(str, self.grid)),
            "hosts": self.hosts, "chips_per_host": self.chips_per_host,
            "hbm_gib_per_chip": c.hbm_bytes / 2 ** 30, "peak_bf16_tflops": c.peak_flops / 1e12,
            "hbm_gbps": c.hbm_bandwidth / 1e9}


def known_topologies() -> list[str]:
  names = []
  for gen in GENERATIONS.values():
    scale = 2 if gen.named_by_cores else 1
    names += [f"{gen.prefix}-{chips * scale}" for chips in gen.grids]
  return names


def parse_topology(name: str) -> Slice:
  """A slice from a name such as v5p-128, v6e-8, v5e-256 or v4-32."""
  prefix, _, size = name.strip().lower().partition("-")
  prefix = _ALIASES.get(prefix, prefix)
  gen = GENERATIONS.get(prefix)
  if gen is not None and size.isdigit():
    count = int(size)
    chips = count // 2 if gen.named_by_cores and count % 2 == 0 else (None if gen.named_by_cores else count)
    if chips in gen.grids:
      return Slice(f"{gen.prefix}-{count}", gen, gen.grids[chips])
  raise MindJaxError(f"--topology {name}: unknown TPU slice; known: {', '.join(known_topologies())}")


def devices(tpu_slice: Slice, num_slices: int = 1) -> list:
  """The slice's devices (every slice's, ordered by slice), for an ahead-of-time compile."""
  try:
    import libtpu  # noqa: F401
  except ImportError as e:
    raise MindJaxError("planning for a TPU needs the TPU compiler (libtpu), which is not "
                       "installed: pip install 'mind_jax[tpu]' (or pip install 'jax[tpu]')") from e
  from jax.experimental import topologies
  options = tpu_slice.compiler_options()
  if num_slices > 1:
    options["num_slices"] = num_slices
  topology = topologies.get_topology_desc(platform="tpu", topology_name=tpu_slice.topology_name,
                                          **options)
  return sorted(topology.devices, key=lambda d: (getattr(d, "slice_index", 0), d.id))
