"""Which host of a slice this process is, starting jax.distributed where a slice has several."""

from __future__ import annotations

import os

_DISTRIBUTED_STARTED: list[bool] = []


def init_hosts(distributed: str = "auto") -> tuple[int, int]:
  """(this host's index, host count). `distributed`: "on" starts jax.distributed, "auto" does
  when the TPU runtime lists several hosts (or a coordinator address is set), "off" never.

  Generation then runs an engine per host on its own share of the documents; training runs
  one program over every host's chips, each host loading its own share of the data.
  """
  import jax
  several = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or bool(
      os.environ.get("JAX_COORDINATOR_ADDRESS"))
  wanted = distributed == "on" or (distributed == "auto" and several)
  if wanted and jax.process_count() == 1 and not _DISTRIBUTED_STARTED:
    jax.distributed.initialize()
    _DISTRIBUTED_STARTED.append(True)
  return jax.process_index(), jax.process_count()
