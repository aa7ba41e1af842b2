"""Which host of a slice this process is, starting jax.distributed where a slice has several."""

from __future__ import annotations

import os

_DISTRIBUTED_STARTED: list[bool] = []


def wants_distributed(distributed: str) -> bool:
  """Whether init_hosts(distributed) starts jax.distributed here (it tells without JAX)."""
  several = "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or bool(
      os.environ.get("JAX_COORDINATOR_ADDRESS"))
  return distributed == "on" or (distributed == "auto" and several)


def init_hosts(distributed: str = "auto") -> tuple[int, int]:
  """(this host's index, host count). `distributed`: "on" starts jax.distributed, "auto" does
  when the TPU runtime lists several hosts (or a coordinator address is set), "off" never.
  Elsewhere than on a TPU slice, set JAX_COORDINATOR_ADDRESS (host:port of process 0),
  JAX_NUM_PROCESSES and JAX_PROCESS_ID in each process.

  Generation then runs an engine per host on its own share of the documents; training runs
  one program over every host's chips, each host loading its own share of the data.
  """
  import jax
  if wants_distributed(distributed) and not _DISTRIBUTED_STARTED:
    # Off a TPU slice (several processes on CPU or GPU machines) the process count and index
    # come from the environment, beside JAX's own JAX_COORDINATOR_ADDRESS.
    given = {key: int(os.environ[name]) for key, name in
             (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID"))
             if name in os.environ}
    # CPU devices talk across processes through gloo (ignored by TPU and GPU backends).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**given)
    _DISTRIBUTED_STARTED.append(True)
  return jax.process_index(), jax.process_count()


def sync_hosts(hosts: int, why: str) -> None:
  """Waits until every host of the job reaches this point (`why` names it); nothing on one."""
  if hosts > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"mind_jax: {why}")
