"""The training data pipeline: sources of every kind, token-level mixing, packing, exact resume."""

import concurrent.futures
import gzip
import json
import re

import numpy as np
import pytest

from conftest import DIALOGUE, read_dir, record, write_parts
from mind_jax.data import (DataSection, DeviceBatches, DocumentStream, Framing, SourceSection,
                           host_dataset, resolve_mixture, source_size, training_dataset)
from mind_jax.text import byte_tokenizer

TOKENIZER = byte_tokenizer()
BOS, EOS = TOKENIZER.bos_id, TOKENIZER.eos_ids[0]


def write_jsonl(path, texts, field="text", opener=open):
  with opener(path, "wt") as f:
    for i, text in enumerate(texts):
      f.write(json.dumps({"id": f"{path.name}-{i}", field: text}) + "\n")
  return path


def notes(prefix, n, rs, low=20, high=120):
  """Documents with unique, recognisable content of random lengths."""
  return [f"<{prefix}{i}>" + "".join(rs.choice(list("abcdefgh +=")) for _ in range(rs.randint(low, high)))
          for i in range(n)]


def build(sources, *, batch_size=4, seed=0, shard=(0, 1), **data):
  cfg = DataSection(sources=sources, **{"seq_len": 64, "pack_bins": 8, **data})
  mixture = resolve_mixture(cfg)
  return training_dataset(cfg, mixture, Framing(TOKENIZER), batch_size=batch_size, seed=seed,
                          shard=shard), mixture


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def same(a, b):
  return len(a) == len(b) and all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
  """Two raw JSONL corpora (one gzipped, one of two files) and a generate output."""
  root = tmp_path_factory.mktemp("corpora")
  rs = np.random.RandomState(0)
  (root / "web").mkdir()
  write_jsonl(root / "web" / "a.jsonl", notes("wa", 40, rs))
  write_jsonl(root / "web" / "b.jsonl", notes("wb", 40, rs, 100, 300))  # some above seq_len
  write_jsonl(root / "math.jsonl.gz", notes("m", 60, rs), opener=gzip.open)
  conversations = [record(f"d{i}#{c}#{style}", DIALOGUE[:60 + 7 * i + len(style)], style, f"d{i}", c,
                          source=f"chunk {i}.{c}")
                   for i in range(6) for c in range(2) for style in ("two_students", "debate")]
  write_parts(root / "gen", conversations, files=2)
  return root


# --- resume -------------------------------------------------------------------------------------

@pytest.mark.parametrize("packing", ["first_fit", "concat"])
@pytest.mark.parametrize("shard", [(0, 1), (1, 2)])
def test_restored_iterator_continues_exactly(corpora, packing, shard):
  sources = [SourceSection(path=str(corpora / "web"), weight=2),
             SourceSection(path=str(corpora / "math.jsonl.gz"))]
  dataset, _ = build(sources, packing=packing, shard=shard, shuffle_window=16)
  uninterrupted = take(iter(dataset), 30)
  first = iter(dataset)
  take(first, 12)
  state = json.loads(json.dumps(first.get_state()))  # as Grain's Orbax handler stores it
  restored = iter(build(sources, packing=packing, shard=shard, shuffle_window=16)[0])
  restored.set_state(state)
  assert same(take(restored, 18), uninterrupted[12:])


def test_concat_resumes_when_sequences_end_where_documents_end(tmp_path):
  """Documents of exactly half a sequence leave concat-then-split with no remainder at a
  checkpoint: the state Grain marks with (-1, -1), which JSON turns into a list."""
  write_jsonl(tmp_path / "even.jsonl", [f"{i:04d}" + "z" * 26 for i in range(40)])  # 32 tokens
  sources = [SourceSection(path=str(tmp_path / "even.jsonl"))]
  dataset, _ = build(sources, packing="concat", shuffle_window=1, batch_size=1)
  uninterrupted = take(iter(dataset), 10)
  first = iter(dataset)
  take(first, 4)
  restored = iter(dataset)
  restored.set_state(json.loads(json.dumps(first.get_state())))
  assert same(take(restored, 6), uninterrupted[4:])


def test_hosts_read_disjoint_shares_that_cover_the_source(corpora):
  sources = [SourceSection(path=str(corpora / "math.jsonl.gz"))]  # one file: items are strided
  seen = []
  for host in range(2):
    dataset, _ = build(sources, shard=(host, 2), shuffle_window=1, batch_size=1, seq_len=256)
    docs = set()
    for batch in take(iter(dataset), 40):
      segments = batch["segment_ids"][0]
      for s in np.unique(segments[segments > 0]):
        docs.add(TOKENIZER.decode(batch["tokens"][0][segments == s].tolist()).split(">")[0])
    seen.append(docs)
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == {f"<m{i}" for i in range(60)}


def test_worker_processes_resume_exactly(corpora):
  sources = [SourceSection(path=str(corpora / "web"))]
  dataset, _ = build(sources, workers=2, shuffle_window=8)
  iterator = iter(dataset)
  uninterrupted = take(iterator, 10)
  iterator.close()
  first = iter(dataset)
  take(first, 4)
  state = json.loads(json.dumps(first.get_state()))
  first.close()
  restored = iter(dataset)
  restored.set_state(state)
  resumed = take(restored, 6)
  restored.close()
  assert same(resumed, uninterrupted[4:])


# --- shards, worker slices, epochs --------------------------------------------------------------
# The math corpus is one file of 60 documents, "<m0>..." to "<m59>...": a shard k of n of it
# holds the items k, k + n, k + 2n, ... (one file cannot be split by files).

def _name(tokens):
  """The "<m12" label a document of `notes` starts with."""
  return TOKENIZER.decode(np.asarray(tokens).tolist()).split(">")[0]


def _math_source(corpora):
  cfg = DataSection(sources=[SourceSection(path=str(corpora / "math.jsonl.gz"))], seq_len=64)
  return resolve_mixture(cfg).sources[0]


def test_four_data_shards_on_two_hosts_give_each_host_half_the_batch_from_its_two_shards(
    corpora):
  """data.shards=4 on 2 hosts: host h reads shards 2h and 2h+1, each filling a quarter of the
  global batch of 8, so a host's batch is 4 rows (2 of its first shard, then 2 of its second),
  and the two hosts' batches end to end are the batch one host reading all 4 shards makes."""
  cfg = DataSection(sources=[SourceSection(path=str(corpora / "math.jsonl.gz"))], seq_len=256,
                    shards=4, shuffle_window=1, pack_bins=8)
  mixture = resolve_mixture(cfg)

  def first_batch(host, hosts):
    return next(iter(host_dataset(cfg, mixture, Framing(TOKENIZER), batch_size=8, seed=0,
                                  host=host, hosts=hosts)))

  halves = [first_batch(host, 2) for host in range(2)]
  for host, batch in enumerate(halves):
    assert batch["tokens"].shape == (4, 256)
    for row in range(4):
      shard = 2 * host + row // 2
      segments = batch["segment_ids"][row]
      docs = [_name(batch["tokens"][row][segments == s]) for s in np.unique(segments[segments > 0])]
      assert docs and all(int(d[2:]) % 4 == shard for d in docs), (host, row, docs)
  whole = first_batch(0, 1)
  assert all(np.array_equal(whole[k], np.concatenate([h[k] for h in halves])) for k in whole)


def test_a_shard_smaller_than_the_shuffle_window_is_shuffled_one_pass_at_a_time(corpora):
  """Shard 1 of 4 holds 15 of the 60 documents, fewer than shuffle_window=32: the window
  shrinks to the shard's 15, so the first 15 documents out are the shard's 15, each once. (A
  window of 32 would hold two passes and a bit, and put copies of a document near each other.)"""
  sources = [SourceSection(path=str(corpora / "math.jsonl.gz"))]
  dataset, _ = build(sources, shard=(1, 4), shuffle_window=32, packing="concat", batch_size=1,
                     seq_len=256)
  # Concat packing keeps the order: the rows end to end are the documents, each from its BOS.
  stream = np.concatenate([batch["tokens"][0] for batch in take(iter(dataset), 20)])
  starts = np.flatnonzero(stream == BOS)
  first_pass = [_name(stream[a:b]) for a, b in zip(starts[:15], starts[1:16])]
  assert sorted(first_pass) == sorted(f"<m{i}" for i in range(1, 60, 4))


def test_worker_slices_of_two_hosts_are_disjoint_quarters_of_the_source(corpora):
  """2 hosts x 2 worker processes: Grain hands worker w of 2 the slice (w, None, 2) of its
  host's stream (`set_slice`). The four readers' first passes must be disjoint quarters of
  the source: an item read by two of them is trained on twice, and some other is never read."""
  source, seen = _math_source(corpora), []
  for host in range(2):
    for worker in range(2):
      stream = DocumentStream(source, 0, Framing(TOKENIZER), seed=0, max_piece=None,
                              shard=(host, 2))
      stream.set_slice(slice(worker, None, 2))
      seen.append({_name(e["tokens"]) for e in take(iter(stream), 15)})
  assert [len(s) for s in seen] == [15] * 4  # 60 documents / 4 readers: each once per pass
  assert set().union(*seen) == {f"<m{i}" for i in range(60)}  # so no two readers overlap


def test_each_epoch_reads_the_files_in_a_new_order(tmp_path):
  """6 files of 2 documents, read through three times: each epoch reads every file once, in
  its own order (one order for every epoch would put the same files side by side each time)."""
  for f in range(6):
    write_jsonl(tmp_path / f"f{f}.jsonl", [f"<f{f}d{d}> some text" for d in range(2)])
  cfg = DataSection(sources=[SourceSection(path=str(tmp_path))], seq_len=64)
  stream = DocumentStream(resolve_mixture(cfg).sources[0], 0, Framing(TOKENIZER), seed=0,
                          max_piece=None)
  names = [_name(e["tokens"]) for e in take(iter(stream), 36)]
  orders = []
  for epoch in range(3):
    files = [n.split("d")[0] for n in names[12 * epoch:12 * epoch + 12:2]]
    # A file's documents come together, in the file's order.
    assert names[12 * epoch:12 * epoch + 12] == [f"{f}d{d}" for f in files for d in range(2)]
    assert sorted(files) == [f"<f{f}" for f in range(6)]
    orders.append(tuple(files))
  assert len(set(orders)) == 3, orders


# --- mixing, packing, conservation --------------------------------------------------------------

def test_token_shares_follow_the_weights_over_10000_sequences(corpora):
  sources = [SourceSection(path=str(corpora / "web"), weight=0.5),
             SourceSection(path=str(corpora / "math.jsonl.gz"), weight=0.3),
             SourceSection(path="champ", weight=0.2)]
  dataset, _ = build(sources, batch_size=100, seq_len=32, pack_bins=64)
  counts = np.zeros(4, np.int64)
  for batch in take(iter(dataset), 100):
    counts += np.bincount(batch["source"].ravel(), minlength=4)
  shares = counts[1:] / counts[1:].sum()
  assert np.abs(shares - [0.5, 0.3, 0.2]).max() < 0.01, shares


@pytest.mark.parametrize("packing", ["first_fit", "concat"])
def test_no_token_lost_or_duplicated_and_segments_are_documents(corpora, packing):
  """Every piece of every document appears as often as every other (so nothing is lost or
  repeated within an epoch), each segment is one document's piece, positions restart at 0."""
  sources = [SourceSection(path=str(corpora / "web"))]
  dataset, _ = build(sources, packing=packing, shuffle_window=10, batch_size=8)
  framing = Framing(TOKENIZER)
  docs = [framing([json.loads(line)["text"]])[0] for name in ("a", "b")
          for line in (corpora / "web" / f"{name}.jsonl").read_text().splitlines()]
  stream = np.concatenate(docs)
  total = len(stream)
  tokens_out, counts = 0, {}
  for batch in take(iter(dataset), 3 * total // (8 * 64)):
    for row in range(8):
      segments, positions = batch["segment_ids"][row], batch["positions"][row]
      for s in np.unique(segments[segments > 0]):
        mask = segments == s
        piece = batch["tokens"][row][mask]
        assert np.array_equal(positions[mask], np.arange(mask.sum()))
        assert np.all(np.diff(np.flatnonzero(mask)) == 1)  # one contiguous run per segment
        key = piece.tobytes()
        counts[key] = counts.get(key, 0) + 1
        tokens_out += len(piece)
  if packing == "first_fit":  # whole documents, or seq_len pieces of the longer ones
    pieces = {d[i:i + 64].tobytes() for d in docs for i in range(0, len(d), 64)}
    assert set(counts) <= pieces and len(set(counts)) == len(pieces)
    assert max(counts.values()) - min(counts.values()) <= 1
  else:  # one stream cut every seq_len tokens: each segment lies inside one document
    for key in counts:
      piece = np.frombuffer(key, np.int32)
      assert any(_contains(d, piece) for d in docs)
  assert tokens_out > 2.5 * total


def _contains(doc, piece):
  n = len(piece)
  return any(np.array_equal(doc[i:i + n], piece) for i in range(len(doc) - n + 1))


def test_loss_weights_cover_next_tokens_within_segments_only(corpora):
  dataset, _ = build([SourceSection(path=str(corpora / "web"))])
  batch = next(iter(dataset))
  tokens, segments, weights = batch["tokens"], batch["segment_ids"], batch["loss_weights"]
  assert np.array_equal(batch["targets"][:, :-1], tokens[:, 1:])
  same_segment = (segments[:, :-1] == segments[:, 1:]) & (segments[:, :-1] > 0)
  assert np.array_equal(weights[:, :-1] == 1, same_segment) and not weights[:, -1].any()
  # Each document starts with BOS; whole documents end with EOS.
  for row in range(len(tokens)):
    for s in np.unique(segments[row][segments[row] > 0]):
      assert tokens[row][segments[row] == s][0] == BOS or len(tokens[row][segments[row] == s]) <= 64


# --- source kinds -------------------------------------------------------------------------------

def _texts(dataset, n=6, row_limit=None):
  out = []
  for batch in take(iter(dataset), n):
    for row in range(len(batch["tokens"]) if row_limit is None else row_limit):
      segments = batch["segment_ids"][row]
      for s in np.unique(segments[segments > 0]):
        out.append(TOKENIZER.decode(batch["tokens"][row][segments == s].tolist()))
  return out


def test_parquet_glob_and_datasets_directory_sources(tmp_path):
  import datasets
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"body": [f"parquet note {i}" for i in range(20)]}), tmp_path / "n.parquet",
                 row_group_size=6)
  datasets.Dataset.from_dict({"text": [f"arrow note {i}" for i in range(20)]}).save_to_disk(
      str(tmp_path / "arrow"))
  write_jsonl(tmp_path / "g1.jsonl", ["glob note one"])
  write_jsonl(tmp_path / "g2.jsonl", ["glob note two"])
  dataset, mixture = build([SourceSection(path=str(tmp_path / "n.parquet"), text_field="body"),
                            SourceSection(path=str(tmp_path / "arrow")),
                            SourceSection(path=str(tmp_path / "g*.jsonl"))], shuffle_window=1)
  texts = " ".join(_texts(dataset, 4))
  assert "parquet note 19" in texts and "arrow note 19" in texts and "glob note two" in texts
  assert [s.name for s in mixture.sources] == ["n.parquet", "arrow", "g*.jsonl"]


def test_a_parquet_source_resumes_inside_a_row_group(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.table({"text": [f"row {i} " + "x" * (i % 7) for i in range(50)]}),
                 tmp_path / "n.parquet", row_group_size=8)
  sources = [SourceSection(path=str(tmp_path / "n.parquet"))]
  dataset, _ = build(sources, shuffle_window=1, batch_size=2)
  whole = take(iter(dataset), 12)
  part = iter(dataset)
  take(part, 5)
  state = json.loads(json.dumps(part.get_state()))
  again = iter(dataset)
  again.set_state(state)
  assert same(take(again, 7), whole[5:])


def test_tfds_source(tmp_path):
  import tensorflow_datasets as tfds

  class TinyNotes(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i in range(5):
        yield i, {"text": f"tfds note {i}"}

  TinyNotes(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  dataset, _ = build([SourceSection(path="tfds:tiny_notes", data_dir=str(tmp_path))],
                     shuffle_window=1)
  assert {f"tfds note {i}" for i in range(5)} <= set(_texts(dataset, 2))


def test_filter_output_as_conversations_styles_and_longest_per_chunk(corpora, tmp_path):
  from mind_jax.config import load_config
  from mind_jax.curation import FilterConfig, run_filter
  run_filter(load_config(FilterConfig, None, [f"input={corpora / 'gen'}", f"out={tmp_path / 'f'}",
                                              "workers=1", "min_tokens=1", "dedup.exact=false"]))
  kept = read_dir(tmp_path / "f" / "kept").values()  # conversations as the filter cleaned them
  everything, mixture = build([SourceSection(path=str(tmp_path / "f"))], shuffle_window=1, seq_len=256)
  assert mixture.sources[0].use == "conversation" and mixture.sources[0].name == "f"
  assert set(_texts(everything, 8)) == {r["conversation"] for r in kept}
  one_style, _ = build([SourceSection(path=str(tmp_path / "f" / "kept"), styles=["debate"])],
                       shuffle_window=1, seq_len=256)
  assert set(_texts(one_style, 8)) == {r["conversation"] for r in kept if r["style"] == "debate"}
  longest, _ = build([SourceSection(path=str(tmp_path / "f"), select="longest_per_chunk")],
                     shuffle_window=1, seq_len=256)
  best = {}
  for r in kept:  # the fixture makes every chunk's two_students conversation the longer one
    key = (r["doc_id"], r["chunk_index"])
    if key not in best or len(r["conversation"]) > len(best[key]):
      best[key] = r["conversation"]
  assert set(_texts(longest, 8)) == set(best.values()) and len(best) == 12
  both, _ = build([SourceSection(path=str(tmp_path / "f"), use="raw+conversation",
                                 styles=["debate"])], shuffle_window=1, seq_len=256)
  assert set(_texts(both, 8)) == {f"{r['source']}\n\n{r['conversation']}" for r in kept
                                  if r["style"] == "debate"}


# --- sizes and devices --------------------------------------------------------------------------

def test_sizes_exact_for_small_sources_and_estimated_for_large(corpora, tmp_path):
  framing = Framing(TOKENIZER)
  web = resolve_mixture(DataSection(sources=[SourceSection(path=str(corpora / "web"))])).sources[0]
  size = source_size(web, framing)
  texts = [json.loads(line)["text"] for n in "ab" for line in
           (corpora / "web" / f"{n}.jsonl").read_text().splitlines()]
  assert size.exact and size.documents == 80
  assert size.tokens == sum(len(t.encode()) + 2 for t in texts)
  big = write_jsonl(tmp_path / "big.jsonl", ["y" * 50] * 3000)
  source = resolve_mixture(DataSection(sources=[SourceSection(path=str(big))])).sources[0]
  estimate = source_size(source, framing, sample=100)
  # Scaled by bytes: the sample's ids are shorter than the later ones, hence a few % off.
  assert not estimate.exact and abs(estimate.documents - 3000) / 3000 < 0.05
  assert abs(estimate.tokens - 3000 * 52) / (3000 * 52) < 0.05


def test_device_batches_are_laid_out_on_the_batch_axes_and_resume(corpora):
  import jax
  from mind_jax.sharding import make_mesh
  mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  dataset, _ = build([SourceSection(path=str(corpora / "web"))], batch_size=8)
  batches = DeviceBatches(dataset, mesh, "train", prefetch=3)
  next(batches)
  concurrent.futures.wait(batches.pending)  # batches 2 to 4 read ahead by now
  device, host = next(batches)
  assert device["tokens"].shape == (8, 64) and isinstance(device["tokens"], jax.Array)
  assert device["tokens"].sharding.spec[0] == ("data", "fsdp")
  assert np.array_equal(np.asarray(device["tokens"]), host["tokens"])
  state = json.loads(json.dumps(batches.get_state()))  # after batch 2, whatever was read ahead
  expected = [host["tokens"] for _, host in (next(batches) for _ in range(3))]
  batches.set_state(state)
  assert all(np.array_equal(np.asarray(d["tokens"]), e)
             for (d, _), e in zip((next(batches) for _ in range(3)), expected))
  batches.close()


# --- python -m mind_jax.mix ---------------------------------------------------------------------

def test_mix_reports_shares_epochs_and_packing_as_json(corpora, capsys):
  from mind_jax.mix import main
  sources = (f"data.sources=[{{path: {corpora / 'web'}, weight: 2}}, "
             f"{{path: {corpora / 'gen'}, name: talk}}]")
  assert main([sources, "data.seq_len=128", "steps=50", "--batches", "8", "--show", "2",
               "--json"]) == 0
  report = json.loads(capsys.readouterr().out)
  assert report["budget_tokens"] == 50 * 8 * 128 and report["sequences"] == 64
  web, talk = report["sources"]
  assert (web["use"], talk["use"], talk["name"]) == ("raw", "conversation", "talk")
  assert abs(web["share"] - 2 / 3) < 0.1 and web["tokens_seen"] + talk["tokens_seen"] == report["tokens"]
  assert web["size_exact"] and web["documents"] == 80
  assert web["epochs"] == pytest.approx(web["planned_tokens"] / web["source_tokens"], rel=1e-4)
  assert 0.8 < report["packing_efficiency"] <= 1 and len(report["examples"]) == 2
  assert report["tokens"] == pytest.approx(report["packing_efficiency"] * 64 * 128)
  assert main([sources, "data.seq_len=128", "--batches", "2"]) == 0
  table = capsys.readouterr().out
  assert "packing_efficiency:" in table and "talk" in table and "epochs" in table


def test_a_gcs_source_resumes(fake_gcs):
  rs = np.random.RandomState(3)
  (fake_gcs / "bucket" / "web").mkdir(parents=True)
  for name in ("a", "b"):
    write_jsonl(fake_gcs / "bucket" / "web" / f"{name}.jsonl", notes(name, 20, rs))
  sources = [SourceSection(path="gs://bucket/web")]
  dataset, mixture = build(sources, shuffle_window=8, batch_size=2)
  assert mixture.sources[0].files == ("gs://bucket/web/a.jsonl", "gs://bucket/web/b.jsonl")
  whole = take(iter(dataset), 10)
  part = iter(dataset)
  take(part, 3)
  again = iter(dataset)
  again.set_state(json.loads(json.dumps(part.get_state())))
  assert same(take(again, 7), whole[3:])
  seen = " ".join(_texts(dataset, 40))
  assert "<a" in seen and "<b" in seen  # both files of the bucket are read


@pytest.mark.parametrize("add_bos,add_eos", [(True, True), (False, True), (True, False),
                                             (False, False)])
def test_data_add_bos_and_add_eos_frame_each_document_as_configured(tmp_path, add_bos, add_eos):
  """The training config's keys reach the pipeline: a one-document source's sequence is the
  tokenizer's own ids for the text, with BOS before and EOS after only where asked."""
  from mind_jax.config import load_config
  from mind_jax.training import TrainConfig
  from mind_jax.training import data_pipeline
  source = write_jsonl(tmp_path / "one.jsonl", ["x + y = 10"])
  cfg = load_config(TrainConfig, None, [
      f"data.sources=[{{path: {source}}}]", "data.seq_len=64", "batch_size=1",
      f"data.add_bos={str(add_bos).lower()}", f"data.add_eos={str(add_eos).lower()}"])
  _, _, dataset = data_pipeline(cfg, tokenizer=TOKENIZER)
  row = next(iter(dataset))["tokens"][0]
  expected = [BOS] * add_bos + TOKENIZER.encode("x + y = 10") + [EOS] * add_eos
  # The bin fills with the next epoch's copy of the one document, framed the same way.
  assert row[:2 * len(expected)].tolist() == expected * 2


def test_a_source_of_one_huge_document_is_read_once_per_fill_and_split_whole(tmp_path):
  """One 400 KB document: a read of the stream takes at most READ_CHARS of text besides it
  (READ_BATCH copies of it, over its epochs, took 24 GB for a 5 MB line), and its pieces are
  its framed ids cut every seq_len tokens, nothing dropped."""
  from mind_jax.data._sources import READ_CHARS
  text = "".join(f"line {i}: x + {i} = {2 * i}\n" for i in range(20_000))
  source = write_jsonl(tmp_path / "huge.jsonl", [text])
  encoded = []

  class Counting(Framing):
    def __call__(self, texts):
      encoded.append(sum(len(t) for t in texts))
      return super().__call__(texts)

    def chunks(self, text):
      encoded.append(len(text))
      return super().chunks(text)

  cfg = DataSection(sources=[SourceSection(path=str(source))], seq_len=64, pack_bins=8)
  from mind_jax.data import DocumentStream
  mixture = resolve_mixture(cfg)
  stream = iter(DocumentStream(mixture.sources[0], 0, Counting(TOKENIZER), seed=0, max_piece=64))
  framed = [BOS] + TOKENIZER.encode(text) + [EOS]
  pieces = [next(stream)["tokens"].tolist() for _ in range(-(-len(framed) // 64))]
  import itertools
  assert list(itertools.chain(*pieces)) == framed and all(len(p) == 64 for p in pieces[:-1])
  assert encoded and max(encoded) <= READ_CHARS + len(text)


def _long_text(chars, seed):
  """ASCII and 2-3 byte characters (a byte tokenizer's ids are the UTF-8 bytes, so token and
  character positions drift apart across windows)."""
  rs = np.random.RandomState(seed)
  words = ["the", "sum", "x²", "∫", "n(n+1)/2", "odd", "\n\n", "  ", "3,", "4", "é"]
  text = ""
  while len(text) < chars:
    text += " ".join(rs.choice(words, 5000)) + " "
  return text[:chars]


def test_a_long_document_comes_as_the_pieces_of_its_whole_text_ids_and_resumes_inside_it(
    tmp_path):
  """Documents over LONG_TEXT characters are cut into pieces as their windows are encoded:
  the pieces are still the whole text's framed ids (here its UTF-8 bytes, computed without
  the tokenizer) cut every max_piece tokens, in file order with the short documents around
  them, and a stream restored anywhere, inside a long document too, continues exactly. The
  second long document's framed ids are an exact multiple of max_piece (its last piece is
  full, and only the next document's first piece can follow it)."""
  from mind_jax.text import LONG_TEXT
  size = 999
  second = _long_text(2 * LONG_TEXT, 1)
  second += "z" * (-(len(second.encode()) + 2) % size)
  texts = ["a short one", _long_text(3 * LONG_TEXT + 12_345, 0), "between", second, "the end"]
  framed = [[BOS, *text.encode("utf-8"), EOS] for text in texts]
  assert len(framed[3]) % size == 0
  expected = [ids[i:i + size] for ids in framed for i in range(0, len(ids), size)]
  expected += expected[:3]  # the next epoch begins the same way
  cfg = DataSection(sources=[SourceSection(path=str(write_jsonl(tmp_path / "long.jsonl", texts)))])
  stream = DocumentStream(resolve_mixture(cfg).sources[0], 0, Framing(TOKENIZER), seed=0,
                          max_piece=size)
  iterator, states, pieces = iter(stream), [], []
  for _ in expected:
    states.append(json.loads(json.dumps(iterator.get_state())))
    pieces.append(next(iterator)["tokens"].tolist())
  assert pieces == expected
  ends = np.cumsum([-(-len(ids) // size) for ids in framed])  # pieces up to each document's end
  # Past the first windows of the first long document, at its last piece, just after it,
  # inside the second one, and at its full last piece.
  for k in (ends[0] + 150, ends[1] - 1, ends[1], ends[3] - 100, ends[3] - 1):
    restored = iter(stream)
    restored.set_state(states[k])
    assert [next(restored)["tokens"].tolist() for _ in expected[k:]] == expected[k:], k


_PEAK_RSS = """
import re, sys
from mind_jax.data import DataSection, DocumentStream, Framing, SourceSection, resolve_mixture
from mind_jax.text import byte_tokenizer
source = resolve_mixture(DataSection(sources=[SourceSection(path=sys.argv[1])])).sources[0]
stream = iter(DocumentStream(source, 0, Framing(byte_tokenizer()), seed=0, max_piece=4096))
assert sum(len(next(stream)["tokens"]) for _ in range(100)) == 409_600  # 4 windows and more
# The peak of this program's memory: unlike ru_maxrss, not the test process's it forked from.
print(int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read())[1]) * 1024)
"""


def test_reading_a_huge_document_takes_memory_for_its_record_not_its_tokens(tmp_path):
  """The first 100 pieces of a one-line document of 4 MB and of 16 MB, each read in its own
  process: the peak resident memory grows by under 3 bytes per character of the line (about
  1 here). Parsing must hold the JSON line and its text, 2 bytes per ASCII character; the ids
  and pieces follow the window, not the document (whole-document ids took 24 bytes per
  character, all of the windows' ids held at once 5.8)."""
  import subprocess
  import sys
  peaks = {}
  for mb in (4, 16):
    text = "the sum of the first n odd numbers is n squared; "
    text = text * (mb * 1_000_000 // len(text))
    path = write_jsonl(tmp_path / f"huge{mb}.jsonl", [text])
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(path)], capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    peaks[mb] = (int(done.stdout.split()[-1]), len(text))
  (small, small_chars), (large, large_chars) = peaks[4], peaks[16]
  per_char = (large - small) / (large_chars - small_chars)
  assert per_char < 3, f"{per_char:.1f} bytes per character ({small >> 20} -> {large >> 20} MiB)"


def test_mix_counts_what_a_concat_stream_of_equal_documents_cuts_by_arithmetic(tmp_path, capsys):
  """12 documents of 50 bytes, 52 tokens with BOS and EOS, in one stream cut every 32 tokens,
  2 sequences a batch: 5 batches are 320 tokens without padding. The documents begun in them
  (52 k < 320: 7) all run past a sequence end, so 7 are split; the first sequence is the
  first 32 tokens of a document, the second its last 20 and the next one's first 12. Without
  EOS (51 tokens a document) the split ones cannot be told, and none are counted."""
  from mind_jax.mix import main
  source = write_jsonl(tmp_path / "docs.jsonl", [f"<d{i:02d}>" + "x" * 45 for i in range(12)])
  keys = [f"data.sources=[{{path: {source}}}]", "data.seq_len=32", "data.packing=concat",
          "batch_size=2", "steps=10", "--batches", "5", "--show", "2", "--json"]
  assert main(keys) == 0
  report = json.loads(capsys.readouterr().out)
  assert (report["sequences"], report["tokens"], report["packing_efficiency"]) == (10, 320, 1.0)
  assert report["documents_split"] == -(-320 // 52) == 7
  (docs,) = report["sources"]
  assert (docs["documents"], docs["source_tokens"], docs["tokens_seen"]) == (12, 12 * 52, 320)
  assert report["budget_tokens"] == docs["planned_tokens"] == 10 * 2 * 32
  assert docs["epochs"] == pytest.approx(640 / 624)
  first, second = report["examples"]
  assert [(s["source"], s["tokens"]) for s in first] == [(0, 32)]
  assert [(s["source"], s["tokens"]) for s in second] == [(0, 20), (0, 12)]
  # Special tokens are not shown: BOS + 31 bytes, 19 bytes + EOS, BOS + 11 bytes.
  assert re.fullmatch(r"<d\d\d>x{26}", first[0]["text"]) and second[0]["text"] == "x" * 19
  assert re.fullmatch(r"<d\d\d>x{6}", second[1]["text"])
  assert second[1]["text"] != first[0]["text"][:11]  # the next document, not the same again
  assert main([*keys, "data.add_eos=false"]) == 0
  report = json.loads(capsys.readouterr().out)
  assert report["documents_split"] == 0 and report["sources"][0]["source_tokens"] == 12 * 51
