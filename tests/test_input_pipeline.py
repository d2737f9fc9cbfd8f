"""pipelines.input_pipeline on real shards written by the Beam job."""

import json
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from pipelines import input_pipeline as ip
from pipelines.beam import writer
from pipelines.shards import layout, records

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory, percepiano_job) -> pathlib.Path:
  return percepiano_job(tmp_path_factory.mktemp("input"), 5, "--variants=1",
                        "--target_shard_mb=1", "--nowrite_audio")


def _all_windows(root: pathlib.Path, splits=("train",)):
  metadata = json.loads((root / layout.METADATA).read_text())
  out = []
  for r in metadata["shards"]:
    if r["kind"] == "windows" and r["format"] == "array_record" and r["split"] in splits:
      out += [records.decode(x) for x in layout.read_array_record(str(root / r["file"]))]
  return out


def test_finetuning_batches(shard_dir):
  config = ip.InputConfig(batch_size=4, mixup_alpha=0.0)
  batch = next(iter(ip.finetuning(shard_dir, config)))
  assert batch["features"].shape == (4, 128, 1024) and batch["features"].dtype == np.float32
  assert batch["labels"].shape == (4, 19) and batch["label_mask"].dtype == bool
  assert set(batch) == {"features", "labels", "label_mask", "valid_frames"}
  pre = next(iter(ip.pretraining(shard_dir, config)))
  assert set(pre) == {"features", "valid_frames"}


def test_normalisation_uses_the_shard_statistics(shard_dir):
  config = ip.InputConfig(spec_augment=False, variants=(0,))
  ds = ip.training_examples(shard_dir, config)
  n = len(_all_windows(shard_dir)) // 2  # clean windows of the train split
  values = np.concatenate([ds[i]["features"][:, :ds[i]["valid_frames"]].ravel()
                           for i in range(n)])
  # The statistics were taken on the clean training windows: (x - mean) / (2 std).
  assert abs(values.mean()) < 0.01 and values.std() == pytest.approx(0.5, abs=0.01)


def test_same_seed_same_batches_and_worker_count_does_not_matter(shard_dir):
  def first(config, n=3):
    it = iter(ip.finetuning(shard_dir, config))
    return [next(it) for _ in range(n)]
  base = ip.InputConfig(batch_size=4, mixup_alpha=10.0, seed=3)
  a, b = first(base), first(base)
  with_worker = first(ip.InputConfig(batch_size=4, mixup_alpha=10.0, seed=3, worker_processes=1))
  for x, y, z in zip(a, b, with_worker):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
      np.testing.assert_array_equal(x[k], z[k])
  other = first(ip.InputConfig(batch_size=4, mixup_alpha=10.0, seed=4))
  assert not np.array_equal(a[0]["features"], other[0]["features"])


_RESUME = textwrap.dedent("""
    import json, sys
    import numpy as np
    from pipelines import input_pipeline as ip
    root, mode, state_path, out = sys.argv[1:5]
    it = iter(ip.finetuning(root, ip.InputConfig(batch_size=4, mixup_alpha=10.0, seed=9)))
    if mode == "save":
      for _ in range(3):
        next(it)
      json.dump(it.get_state(), open(state_path, "w"))
    else:
      it.set_state(json.load(open(state_path)))
    np.save(out, next(it)["features"])
""")


def test_iterator_state_restores_exactly_the_next_batch_in_a_fresh_process(shard_dir, tmp_path):
  script = tmp_path / "resume.py"
  script.write_text(_RESUME)
  state = tmp_path / "state.json"
  for mode, out in (("save", "saved_next.npy"), ("restore", "restored_next.npy")):
    proc = subprocess.run([sys.executable, str(script), str(shard_dir), mode, str(state),
                           str(tmp_path / out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
  uninterrupted = iter(ip.finetuning(shard_dir, ip.InputConfig(batch_size=4, mixup_alpha=10.0,
                                                                seed=9)))
  fourth = [next(uninterrupted) for _ in range(4)][-1]["features"]
  np.testing.assert_array_equal(np.load(tmp_path / "restored_next.npy"), fourth)
  np.testing.assert_array_equal(np.load(tmp_path / "saved_next.npy"), fourth)


@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_see_disjoint_examples_covering_every_window_per_epoch(shard_dir, hosts):
  total = len(_all_windows(shard_dir))
  batch = 2
  global_batches = total // (hosts * batch)  # whole global batches inside one epoch
  seen = []
  for h in range(hosts):
    ds = ip.training_examples(shard_dir, ip.InputConfig(batch_size=batch, process_index=h,
                                                        process_count=hosts))
    seen += [(ds[i]["key"], int(ds[i]["variant"]), int(ds[i]["window_index"]))
             for i in range(global_batches * batch)]
  assert len(seen) == len(set(seen)) == global_batches * hosts * batch
  everything = {(h["key"], h["variant"], h["window_index"]) for h, _ in _all_windows(shard_dir)}
  assert set(seen) <= everything and len(everything) - len(set(seen)) < hosts * batch


@pytest.mark.parametrize("hosts", [2, 3])
def test_host_batches_concatenate_to_the_single_host_batch(shard_dir, hosts):
  # Row r of the global batch is the same example, with the same SpecAugment
  # masks, whatever the number of hosts: results do not depend on the host count.
  host_batch = 2
  single = ip.pretraining(shard_dir, ip.InputConfig(batch_size=hosts * host_batch, seed=3))
  expected = [b["features"] for _, b in zip(range(3), single)]
  per_host = [ip.pretraining(shard_dir, ip.InputConfig(batch_size=host_batch, seed=3,
                                                       process_index=h, process_count=hosts))
              for h in range(hosts)]
  for step, iterators in zip(range(3), zip(*per_host)):
    np.testing.assert_array_equal(np.concatenate([b["features"] for b in iterators]),
                                  expected[step])


def test_evaluation_sees_every_window_once_in_a_stable_order(shard_dir):
  config = ip.InputConfig(batch_size=8, splits=("test",), variants=(0,))
  batches = list(ip.evaluation(shard_dir, config))
  again = list(ip.evaluation(shard_dir, config))
  ids = [(k, int(w)) for b in batches for k, w, weight in
         zip(b["key"], b["window_index"], b["weight"]) if weight > 0]
  expected = {(h["key"], h["window_index"]) for h, _ in _all_windows(shard_dir, ("test",))
              if h["variant"] == 0}
  assert len(ids) == len(set(ids)) and set(ids) == expected
  assert all(b["features"].shape[0] == 8 for b in batches)
  assert [list(b["key"]) for b in batches] == [list(b["key"]) for b in again]
  assert batches[-1]["weight"].sum() == len(expected) - 8 * (len(batches) - 1)


def test_spec_augment_masks_inside_the_valid_frames(shard_dir):
  config = ip.InputConfig(batch_size=16, freq_mask=20, time_mask=100, variants=(0,))
  plain = ip.InputConfig(batch_size=16, spec_augment=False, variants=(0,))
  masked = next(iter(ip.finetuning(shard_dir, config)))
  clean = next(iter(ip.finetuning(shard_dir, plain)))
  changed = masked["features"] != clean["features"]
  assert changed.any()
  assert np.all(masked["features"][changed] == 0.0)
  for i, valid in enumerate(masked["valid_frames"]):
    assert not changed[i, :, valid:].any()


def test_level_and_colour_shift_each_example_by_a_gain_and_a_tilt_in_db(shard_dir):
  """Each augmented window differs from the plain one by gain + tilt * (-1 .. 1 over the mel
  bins), in dB converted to normalised ln-power units, on its valid frames only; the same seed
  draws the same shifts, and the shuffled order is the plain stream's."""
  def batch(**kw):
    config = ip.InputConfig(batch_size=16, spec_augment=False, variants=(0,), seed=5, **kw)
    return next(iter(ip.pretraining(shard_dir, config)))
  plain, shifted = batch(), batch(gain_db=12.0, tilt_db=6.0)
  np.testing.assert_array_equal(batch(gain_db=12.0, tilt_db=6.0)["features"], shifted["features"])
  std = ip.ShardSet.open(shard_dir, ("train",)).std
  per_db = np.log(10.0) / 10.0 / (2.0 * std)
  ramp = np.linspace(-1.0, 1.0, 128)
  gains = []
  for i, valid in enumerate(plain["valid_frames"]):
    delta = (shifted["features"][i] - plain["features"][i]) / per_db  # [mel, frames] in dB
    assert not delta[:, valid:].any()  # padding untouched
    column = delta[:, 0]
    np.testing.assert_allclose(delta[:, :valid], np.repeat(column[:, None], valid, 1), atol=1e-3)
    tilt, gain = np.polyfit(ramp, column, 1)  # an exact line through the 128 bins
    np.testing.assert_allclose(column, gain + tilt * ramp, atol=1e-3)
    assert abs(gain) <= 12.0 + 1e-3 and abs(tilt) <= 6.0 + 1e-3
    gains.append(gain)
  assert np.std(gains) > 1.0  # drawn per example, not once per batch


def test_eq_adds_a_smooth_random_curve_after_the_gain_and_tilt_draws(shard_dir):
  """`eq_db` adds to each window a curve over the mel bins that lies in the span of the
  EQ_COMPONENTS cosines, peaks at most eq_db, differs between windows and is not a line; the
  gain and tilt drawn before it are those of the same seed without it."""
  def batch(**kw):
    config = ip.InputConfig(batch_size=16, spec_augment=False, variants=(0,), seed=5, **kw)
    return next(iter(ip.pretraining(shard_dir, config)))
  levelled, coloured = batch(gain_db=12.0, tilt_db=6.0), batch(gain_db=12.0, tilt_db=6.0,
                                                               eq_db=20.0)
  np.testing.assert_array_equal(batch(gain_db=12.0, tilt_db=6.0, eq_db=20.0)["features"],
                                coloured["features"])
  per_db = np.log(10.0) / 10.0 / (2.0 * ip.ShardSet.open(shard_dir, ("train",)).std)
  x = np.linspace(0.0, 1.0, 128)
  k = np.arange(1, ip.EQ_COMPONENTS + 1)[None]
  basis = np.concatenate([np.cos(np.pi * k * x[:, None]), np.sin(np.pi * k * x[:, None])], 1)
  peaks, bends = [], []
  for i, valid in enumerate(levelled["valid_frames"]):
    delta = (coloured["features"][i] - levelled["features"][i]) / per_db
    assert not delta[:, valid:].any()
    curve = delta[:, 0]
    np.testing.assert_allclose(delta[:, :valid], np.repeat(curve[:, None], valid, 1), atol=1e-3)
    fit = np.linalg.lstsq(basis, curve, rcond=None)[0]
    np.testing.assert_allclose(basis @ fit, curve, atol=1e-3)  # the cosines, nothing else
    peaks.append(np.abs(curve).max())
    bends.append(np.abs(curve - np.polyval(np.polyfit(x, curve, 1), x)).max())
  assert max(peaks) <= 20.0 + 1e-3 and np.std(peaks) > 1.0
  assert max(bends) > 3.0  # a curve, which the linear tilt cannot make


def test_eq_curve_peaks_at_the_drawn_level():
  rng = np.random.default_rng(0)
  peaks = [np.abs(ip.eq_curve(rng, 128, 20.0)).max() for _ in range(200)]
  assert max(peaks) <= 20.0 + 1e-9 and min(peaks) < 2.0 and max(peaks) > 18.0


def test_mixup_blends_features_and_labels(shard_dir):
  batch = next(iter(ip.finetuning(shard_dir, ip.InputConfig(batch_size=8, mixup_alpha=10.0,
                                                              spec_augment=False))))
  lam = batch["mixup_lambda"][0]
  assert 0 < lam < 1 and np.all(batch["mixup_lambda"] == lam)
  assert batch["labels"].min() >= 1 / 7 - 1e-6 and batch["labels"].max() <= 1 + 1e-6


def test_corrupt_record_names_its_shard_and_index(shard_dir, tmp_path):
  broken = tmp_path / "broken"
  shutil.copytree(shard_dir, broken)
  metadata = json.loads((broken / layout.METADATA).read_text())
  row = next(r for r in metadata["shards"] if r["kind"] == "windows" and r["split"] == "train"
             and r["format"] == "array_record" and r["records"] > 2)
  path = broken / row["file"]
  data = layout.read_array_record(str(path))
  data[2] = data[2][:-100]  # truncated payload
  path.unlink()
  writer.write_shard(str(broken), row["name"], row["split"], ("array_record",), row["index"],
                     row["count"], data, "windows")
  config = ip.InputConfig(batch_size=1, spec_augment=False)
  ds = ip.training_examples(broken, config)
  with pytest.raises(ip.ShardRecordError, match=rf"{row['file']}#2: not a tf.train.Example"):
    for i in range(10 * len(data)):
      ds[i]


def test_missing_shards_or_statistics_are_clear_errors(shard_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="no ArrayRecord window shards"):
    ip.ShardSet.open(shard_dir, ("validation",))
  broken = tmp_path / "nostats"
  shutil.copytree(shard_dir, broken)
  metadata = json.loads((broken / layout.METADATA).read_text())
  metadata["normalization"] = {"count": 0, "mean": None, "std": None}
  (broken / layout.METADATA).write_text(json.dumps(metadata))
  with pytest.raises(ValueError, match="normalisation statistics"):
    ip.ShardSet.open(broken, ("train",))
