"""On an 8-device CPU mesh, sharded models compute what one device computes."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import mind_jax
from mind_jax import sharding
from mind_jax.nn import CACHE_AXES, KVCache


@pytest.fixture(scope="module")
def checkpoint(hf_checkpoints):
  return hf_checkpoints["llama3.1-gqa"][0]


@pytest.fixture(scope="module")
def reference(checkpoint):
  model, _ = mind_jax.load_pretrained(checkpoint, progress=False)
  ids = np.random.RandomState(0).randint(0, 300, (8, 24)).astype(np.int32)
  return ids, np.asarray(model(ids))


LAYOUTS = {
    "data4xtensor2-generate": ({"data": 4, "fsdp": 1, "tensor": 2}, "generate"),
    "fsdp8-train": ({"data": 1, "fsdp": 8, "tensor": 1}, "train"),
    "data2xfsdp2xtensor2-train": ({"data": 2, "fsdp": 2, "tensor": 2}, "train"),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sharded_forward_equals_one_device(checkpoint, reference, layout):
  axes, rules = LAYOUTS[layout]
  mesh = mind_jax.make_mesh(axes)
  model, _ = mind_jax.load_pretrained(checkpoint, mesh=mesh, rules=rules, progress=False)
  ids, expected = reference
  ids = jax.device_put(ids, sharding.data_sharding(mesh, rules, ("batch", None)))
  logits = jax.jit(lambda m, x: m(x))(model, ids)
  # Only real multi-device layouts count: check the weights really are split.
  gate = model.model.layers[0].mlp.gate_proj.weight[...]
  assert len({str(s.index) for s in gate.addressable_shards}) > 1
  np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-5)


def test_sharded_cached_decoding_equals_one_device(checkpoint, reference):
  mesh = mind_jax.make_mesh({"data": 4, "fsdp": 1, "tensor": 2})
  model, _ = mind_jax.load_pretrained(checkpoint, mesh=mesh, progress=False)
  ids, expected = reference
  cache_sharding = sharding.data_sharding(mesh, "generate", CACHE_AXES)
  assert cache_sharding.spec == P("data", "tensor", None, None)
  cache = KVCache.create(model.config, slots=8, max_len=32, sharding=cache_sharding)
  step = jax.jit(lambda m, x, pos, c: m(x, positions=pos, cache=c))
  prefill = np.broadcast_to(np.arange(20), (8, 20))
  logits, cache = step(model, ids[:, :20], prefill, cache)
  pieces = [np.asarray(logits)]
  for t in range(20, 24):
    logits, cache = step(model, ids[:, t:t + 1], np.full((8, 1), t), cache)
    jax.block_until_ready(logits)
    pieces.append(np.asarray(logits))
  assert all(k.sharding.is_equivalent_to(cache_sharding, k.ndim) for k in cache.k)
  np.testing.assert_allclose(np.concatenate(pieces, axis=1), expected, atol=1e-5)


def test_rules_are_data_and_logical_names_map_to_mesh_axes():
  mesh = mind_jax.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert sharding.logical_to_spec(("vocab", "embed"), sharding.TRAIN_RULES, mesh) == P("tensor", "fsdp")
  assert sharding.logical_to_spec(("vocab", "embed"), sharding.GENERATE_RULES, mesh) == P("tensor", None)
  assert sharding.logical_to_spec(("batch", None), sharding.TRAIN_RULES, mesh) == P(("data", "fsdp"), None)
  # A mesh axis of size 1 is dropped: one-device specs stay fully replicated.
  flat = mind_jax.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
  assert sharding.logical_to_spec(("q_heads", "embed"), sharding.TRAIN_RULES, flat) == P(None, None)


def test_fill_axis_takes_remaining_devices_and_bad_meshes_fail():
  assert dict(mind_jax.make_mesh({"data": -1, "tensor": 2}).shape) == {"data": 4, "tensor": 2}
  with pytest.raises(mind_jax.MindJaxError, match="only one axis may be -1"):
    mind_jax.make_mesh({"data": -1, "tensor": -1})
  with pytest.raises(mind_jax.MindJaxError, match="does not fit 8 devices"):
    mind_jax.make_mesh({"data": -1, "tensor": 3})


def test_divisibility_errors_name_the_config_field():
  cfg = mind_jax.preset("tiny", intermediate_size=100)
  mesh = mind_jax.make_mesh({"data": 1, "fsdp": 1, "tensor": 8})
  with pytest.raises(mind_jax.MindJaxError, match="num_attention_heads=4 is not divisible"):
    sharding.check_model_fits_mesh(cfg, mesh)
  mesh = mind_jax.make_mesh({"data": 2, "fsdp": 1, "tensor": 4})
  with pytest.raises(mind_jax.MindJaxError, match="num_key_value_heads=2 is not divisible by mesh axis tensor=4"):
    sharding.check_model_fits_mesh(cfg, mesh)
