"""sharding.abstract_state: what a build would make, with its shardings, allocating nothing."""

import jax
import pytest
from flax import nnx

import mind_jax
from mind_jax import MindJaxError, sharding


def test_an_8b_model_is_described_on_a_mesh_without_allocating_it():
  config = mind_jax.preset("llama3.1-8b", dtype="bfloat16")
  mesh = sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
  graphdef, flat, shardings = sharding.abstract_state(
      lambda: mind_jax.Llama(config, rngs=nnx.Rngs(0)), mesh, "train")
  params = dict(flat)
  # 8B parameters described, none allocated: every leaf is abstract.
  assert sum(v.size for v in params.values()) == config.num_params()
  assert all(isinstance(v.get_raw_value(), jax.ShapeDtypeStruct) for v in params.values())
  q = ("model", "layers", 0, "self_attn", "q_proj", "weight")
  # [out = q_heads x head_dim, in = embed]: heads over tensor, embed over fsdp (train rules).
  assert shardings[q].spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  assert shardings[q].shard_shape(params[q].shape) == (4096 // 4, 4096 // 2)


def test_a_mesh_the_heads_do_not_divide_is_named_before_anything_is_built():
  config = mind_jax.preset("tiny")  # 4 heads, 2 kv heads
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 8})
  with pytest.raises(MindJaxError, match="num_attention_heads=4 is not divisible by mesh axis "
                     "tensor=8"):
    sharding.abstract_state(lambda: mind_jax.Llama(config, rngs=nnx.Rngs(0)), mesh)
