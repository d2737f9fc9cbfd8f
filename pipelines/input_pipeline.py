"""Grain input pipelines over the Beam jobs' ArrayRecord shards.

  pretraining(dir, config)  features only, shuffled, repeated, SpecAugment (+ the windows'
                            note targets as dense rolls with `note_rolls`)
  finetuning(dir, config)   features + 19 labels + label mask, SpecAugment and mixup
  evaluation(dir, config)   every window exactly once in a stable order, padded last
                            batch marked by `weight` 0, with the key and window index
                            needed to average windows per performance
  rows(examples, config)    the training stream of in-memory examples (one row per
                            example, e.g. a performance's clip-statistics vector):
                            the same seeded shuffle, host blocks and mixup, no SpecAugment
  rows_evaluation(...)      every in-memory row once, padded like `evaluation`

Order of operations (MapDataset, all random choices from `config.seed`):
source -> [filter splits/folds/variants] -> shuffle -> repeat -> decode (errors
name shard and index) -> normalise with the shard metadata's mean/std ->
SpecAugment (random_map) -> this host's block of each global batch ->
batch(drop_remainder) -> mixup (random_map on batches) -> to_iter_dataset(read
threads) -> mp_prefetch(worker processes). The iterator's `get_state()` /
`set_state()` is the checkpointable input state the trainer stores with the
model, so a restored run continues on exactly the next batch.
"""

from __future__ import annotations

import bisect
import dataclasses
import pathlib
from collections.abc import Sequence

import grain
import numpy as np
from absl import flags

from pipelines.audio import frontend, notes
from pipelines.shards import layout, metadata, records


@dataclasses.dataclass(frozen=True)
class InputConfig:
  batch_size: int = 8
  seed: int = 0
  splits: tuple[str, ...] = ("train",)
  folds: tuple[int, ...] | None = None  # None: every fold of the chosen splits
  # None: every performance; else only these keys (a split other than the one the
  # shards' split/fold headers follow, e.g. the performer split of piece-split shards).
  keys: frozenset[str] | None = None
  variants: tuple[int, ...] | None = None  # None: clean and every augmented variant
  # None: every window; else the SHA-256s of the SoundFonts whose windows are kept (None in
  # the set keeps recorded audio): one timbre of a job rendered with several held out.
  soundfonts: frozenset[str | None] | None = None
  read_threads: int = 4
  worker_processes: int = 0
  prefetch_buffer_size: int = 64
  spec_augment: bool = True
  freq_mask: int = 48  # AST's AudioSet setting (of 128 bins)
  time_mask: int = 192  # AST's AudioSet setting for 1024 frames; scaled to the clip
  mixup_alpha: float = 0.0  # 0: off; AST used Beta(10, 10) on AudioSet
  # Level and colour (issue 25: a transcriber that hears pianos it never trained on): each
  # training example's audio made louder or quieter by up to ±gain_db and brighter or darker
  # by a linear tilt of up to ±tilt_db from the lowest mel bin to the highest, as another
  # piano, microphone or room would; `eq_db` adds a random smooth curve over the mel bins (a
  # few cosines, peak up to ±eq_db): a piano whose middle register sits 25 dB below its ends
  # (MuseScore General against TimGM6mb) is a curve, not a line. All are additive in log-mel,
  # so they are applied to the stored windows on the fly. 0: off (and no random draw, so the
  # other augmentations' streams are those of a run without it).
  gain_db: float = 0.0
  tilt_db: float = 0.0
  eq_db: float = 0.0
  # Dense note targets of each window (`notes.rolls`: onset/offset/frame/velocity [frames,
  # 88], pedal [frames], has_notes); a window without MIDI gets zeros and has_notes False.
  note_rolls: bool = False
  process_index: int = 0
  process_count: int = 1


class ShardRecordError(ValueError):
  """A record in a shard is corrupt or does not follow the schema."""


@dataclasses.dataclass(frozen=True)
class ShardSet:
  """The window shards of one job's output, with what is needed to read them."""

  root: pathlib.Path
  files: tuple[pathlib.Path, ...]
  offsets: tuple[int, ...]  # global index of each file's first record
  mean: float
  std: float
  dataset: str

  @classmethod
  def open(cls, root: str | pathlib.Path, splits: Sequence[str]) -> ShardSet:
    root = pathlib.Path(root)
    meta = metadata.read(root)
    rows = meta.shard_files("windows", splits=splits)
    if not rows:
      raise FileNotFoundError(f"{root}: no ArrayRecord window shards for splits {list(splits)}")
    mean, std = meta.normalization
    offsets, total = [], 0
    for r in rows:
      # A truncated shard would otherwise fail inside ArrayRecord with an error that names
      # no file; the size the job wrote is a check that costs one stat per file.
      path = root / r.file
      size = path.stat().st_size if path.is_file() else None
      if r.bytes is not None and size != r.bytes:
        raise ShardRecordError(
            f"{path}: {'missing' if size is None else f'{size} bytes'}, but "
            f"{layout.METADATA} lists {r.bytes} (truncated or replaced after the job wrote "
            "it); rerun the job")
      offsets.append(total)
      total += r.records
    return cls(root=root, files=tuple(root / r.file for r in rows), offsets=tuple(offsets),
               mean=mean, std=std, dataset=meta.dataset)

  def locate(self, index: int) -> str:
    """'file#local_index' of a global record index (for error messages)."""
    i = bisect.bisect_right(self.offsets, index) - 1
    return f"{self.files[i].name}#{index - self.offsets[i]}"

  def source(self) -> grain.sources.ArrayRecordDataSource:
    return grain.sources.ArrayRecordDataSource([str(f) for f in self.files])


ROLL_FIELDS = ("onset", "offset", "frame", "velocity", "pedal", "has_notes")


def _rolls(header: dict, arrays: dict, frames: int) -> dict:
  has = header["num_notes"] >= 0
  window = notes.Notes(arrays["notes"], arrays["pedal"])
  out = notes.rolls(window, frames)
  return dict(out, has_notes=np.bool_(has))


_HEADER = ("valid_frames", "key", "window_index", "fold", "variant")


def _decode(shards: ShardSet, index: int, record: bytes, note_rolls: bool = False) -> dict:
  try:
    header, arrays = records.decode(record, _HEADER)
    if header["kind"] != "window":
      raise records.RecordError(f"kind {header['kind']!r} is not a window")
  except (records.RecordError, KeyError, ValueError) as e:
    raise ShardRecordError(f"{shards.locate(index)}: {e}") from None
  features = frontend.normalize(arrays["features"], shards.mean, shards.std)
  rolls = _rolls(header, arrays, features.shape[1]) if note_rolls else {}
  return {**rolls,
      "features": features,  # [mel, frames], normalised like AST: (x - mean) / (2 std)
      "labels": arrays["labels"].astype(np.float32),
      "label_mask": arrays["label_mask"],
      "valid_frames": np.int32(header["valid_frames"]),
      "key": header["key"],
      "window_index": np.int32(header["window_index"]),
      "fold": np.int32(header["fold"]),
      "variant": np.int32(header["variant"]),
  }


def _spec_augment(config: InputConfig):
  def augment(example: dict, rng: np.random.Generator) -> dict:
    features = example["features"].copy()
    mel, frames = features.shape
    valid = int(example["valid_frames"])
    f = int(rng.integers(0, config.freq_mask + 1))
    f0 = int(rng.integers(0, mel - f + 1))
    features[f0:f0 + f, :valid] = 0.0  # padding keeps its constant value
    t_max = int(round(config.time_mask * valid / frames))  # scaled to the clip's length
    t = int(rng.integers(0, t_max + 1))
    t0 = int(rng.integers(0, max(1, valid - t + 1)))
    features[:, t0:t0 + t] = 0.0
    return dict(example, features=features)
  return augment


EQ_COMPONENTS = 3  # cosines of 1/2, 1 and 3/2 periods over the mel axis: smooth, not ripple


def eq_curve(rng: np.random.Generator, bins: int, peak_db: float) -> np.ndarray:
  """A random smooth curve over `bins` mel bins in dB whose largest magnitude is drawn
  uniformly from [0, peak_db]: EQ_COMPONENTS cosines of random amplitude and phase."""
  k = np.arange(1, EQ_COMPONENTS + 1)[:, None]
  amplitude = rng.uniform(-1.0, 1.0, (EQ_COMPONENTS, 1))
  phase = rng.uniform(0.0, 2.0 * np.pi, (EQ_COMPONENTS, 1))
  curve = (amplitude * np.cos(np.pi * k * np.linspace(0.0, 1.0, bins) + phase)).sum(0)
  return curve * (rng.uniform(0.0, peak_db) / max(float(np.abs(curve).max()), 1e-6))


def _level_and_colour(config: InputConfig, std: float):
  # 1 dB of power in the model's units: the log-mel is ln(power), normalised by 2 std.
  per_db = np.log(10.0) / 10.0 / (2.0 * std)

  def augment(example: dict, rng: np.random.Generator) -> dict:
    features = example["features"].copy()
    bins = features.shape[0]
    gain = rng.uniform(-config.gain_db, config.gain_db)
    tilt = rng.uniform(-config.tilt_db, config.tilt_db)
    shift = gain + tilt * np.linspace(-1.0, 1.0, bins)
    if config.eq_db > 0:  # drawn after gain and tilt: their draws stay those of a run without
      shift = shift + eq_curve(rng, bins, config.eq_db)
    shift = shift * per_db
    valid = int(example["valid_frames"])
    features[:, :valid] += shift[:, None].astype(features.dtype)  # padding keeps its value
    return dict(example, features=features)
  return augment


def _mixup(alpha: float):
  def mix(batch: dict, rng: np.random.Generator) -> dict:
    lam = np.float32(rng.beta(alpha, alpha))
    perm = rng.permutation(batch["features"].shape[0])
    return dict(
        batch,
        features=lam * batch["features"] + (1 - lam) * batch["features"][perm],
        labels=lam * batch["labels"] + (1 - lam) * batch["labels"][perm],
        label_mask=batch["label_mask"] & batch["label_mask"][perm],
        mixup_lambda=np.full(perm.shape, lam, np.float32))
  return mix


def _keep(config: InputConfig, shards: ShardSet) -> list[int] | None:
  """Global indices passing the fold/key/variant/SoundFont filters (None: keep all)."""
  if (config.folds is None and config.variants is None and config.keys is None
      and config.soundfonts is None):
    return None
  keep = []
  for file, offset in zip(shards.files, shards.offsets):
    for i, record in enumerate(grain.sources.ArrayRecordDataSource([str(file)])):
      header, _ = records.decode(record, ("fold", "key", "variant", "soundfont_sha256"))
      if ((config.folds is None or header["fold"] in config.folds) and
          (config.keys is None or header["key"] in config.keys) and
          (config.variants is None or header["variant"] in config.variants) and
          (config.soundfonts is None or header.get("soundfont_sha256") in config.soundfonts)):
        keep.append(offset + i)
  return keep


def _finish(ds, config: InputConfig):
  if config.worker_processes > 0 and not flags.FLAGS.is_parsed():
    # Grain's worker processes read absl flags; outside an absl program (tests,
    # notebooks) accept their defaults.
    flags.FLAGS.mark_as_parsed()
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                            prefetch_buffer_size=config.prefetch_buffer_size))
  if config.worker_processes > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.worker_processes))
  return ds


class _Selected(grain.sources.RandomAccessDataSource):
  """A subset of a source's records, by global index; yields (global index, record)."""

  def __init__(self, source, indices: Sequence[int] | None):
    self._source = source
    self._indices = None if indices is None else np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self._source) if self._indices is None else len(self._indices)

  def __getitem__(self, index: int):
    global_index = int(index if self._indices is None else self._indices[index])
    return global_index, self._source[global_index]


_TRAIN_FIELDS = {False: ("features", "valid_frames"),
                 True: ("features", "labels", "label_mask", "valid_frames")}


def _examples(root, config: InputConfig, shards: ShardSet | None = None) -> grain.MapDataset:
  """The endless, shuffled, decoded and normalised stream of every host (not sliced)."""
  shards = shards or ShardSet.open(root, config.splits)
  ds = grain.MapDataset.source(_Selected(shards.source(), _keep(config, shards)))
  ds = ds.seed(config.seed).shuffle().repeat()
  return ds.map(lambda item: _decode(shards, *item, note_rolls=config.note_rolls))


class _HostBlocks(grain.MapDataset):
  """This host's rows of every global batch: a contiguous block of `batch_size`.

  Host `p` of `P` reads, for global batch `k` (of `P * batch_size` examples),
  stream elements `k*P*b + p*b ... + b - 1`. Concatenating the hosts' batches in
  process order (what `jax.make_array_from_process_local_data` does) therefore
  rebuilds the single-host batch exactly, row for row, so per-row randomness
  (dropout, SSAST masks) and results do not depend on the number of hosts.
  """

  def __init__(self, parent: grain.MapDataset, config: InputConfig):
    super().__init__(parent)
    self._b, self._p, self._count = config.batch_size, config.process_index, config.process_count

  def __len__(self) -> int:
    return len(self._parents[0]) // self._count

  def _index(self, index: int) -> int:
    k, row = divmod(index, self._b)
    return (k * self._count + self._p) * self._b + row

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parents[0][self._index(index)]

  def __str__(self) -> str:
    return f"HostBlocks(batch={self._b}, host={self._p}/{self._count})"


def _host_slice(ds: grain.MapDataset, config: InputConfig) -> grain.MapDataset:
  return _HostBlocks(ds, config) if config.process_count > 1 else ds


def training_examples(root, config: InputConfig) -> grain.MapDataset:
  """This host's slice of the endless, shuffled, decoded and normalised example stream.

  Examples keep their `key`, `variant` and `window_index` (tests use them to
  check that hosts see disjoint examples covering every window per epoch).
  """
  return _host_slice(_examples(root, config), config)


def count(root, config: InputConfig) -> int:
  """Windows per epoch of `config.splits` after the fold/key/variant filters (all hosts)."""
  shards = ShardSet.open(root, config.splits)
  keep = _keep(config, shards)
  return len(shards.source()) if keep is None else len(keep)


def _training(root, config: InputConfig, *, labelled: bool):
  if labelled and config.note_rolls and config.mixup_alpha > 0:
    raise ValueError("mixup mixes features and labels, not note rolls: turn one of them off")
  fields = _TRAIN_FIELDS[labelled] + (ROLL_FIELDS if config.note_rolls else ())
  shards = ShardSet.open(root, config.splits)
  ds = _examples(root, config, shards).map(lambda ex: {k: ex[k] for k in fields})
  if config.gain_db > 0 or config.tilt_db > 0 or config.eq_db > 0:
    ds = ds.random_map(_level_and_colour(config, shards.std))
  if config.spec_augment:
    ds = ds.random_map(_spec_augment(config))
  # The host slice comes after SpecAugment (MapDataset is lazy: nothing is
  # decoded for the other hosts' examples), so an example's masks depend on its
  # global position only: the same seed augments alike on 1 host or 64.
  ds = _host_slice(ds, config).batch(config.batch_size, drop_remainder=True)
  if labelled and config.mixup_alpha > 0:
    ds = ds.random_map(_mixup(config.mixup_alpha))
  return _finish(ds, config)


def pretraining(root, config: InputConfig):
  """Endless shuffled batches of `features` `[batch, mel, frames]` and `valid_frames`."""
  return _training(root, config, labelled=False)


def finetuning(root, config: InputConfig):
  """Endless shuffled batches with `labels` and `label_mask` `[batch, 19]`."""
  return _training(root, config, labelled=True)


def evaluation(root, config: InputConfig):
  """Every window of `config.splits` once, in shard order; no augmentation.

  The last batch is padded by repeating its first example with `weight` 0.
  """
  shards = ShardSet.open(root, config.splits)
  ds = grain.MapDataset.source(_Selected(shards.source(), _keep(config, shards)))
  ds = ds[config.process_index::config.process_count]
  ds = ds.map(lambda item: _decode(shards, *item, note_rolls=config.note_rolls))
  ds = ds.batch(config.batch_size, drop_remainder=False, batch_fn=_padded_batch(config))
  return _finish(ds, config)


def _padded_batch(config: InputConfig):
  def batch_fn(examples: Sequence[dict]) -> dict:
    pad = config.batch_size - len(examples)
    full = list(examples) + [examples[0]] * pad
    out = {k: np.stack([np.asarray(e[k]) for e in full]) for k in full[0]}
    out["weight"] = np.array([1.0] * len(examples) + [0.0] * pad, np.float32)
    return out
  return batch_fn


def _row_source(examples: dict[str, np.ndarray]) -> list[dict]:
  sizes = {k: len(v) for k, v in examples.items()}
  if len(set(sizes.values())) != 1:
    raise ValueError(f"examples have fields of different lengths: {sizes}")
  n = next(iter(sizes.values()))
  return [{k: v[i] for k, v in examples.items()} for i in range(n)]


def rows(examples: dict[str, np.ndarray], config: InputConfig):
  """Endless shuffled batches of in-memory rows (`examples[field][i]` is row i's field).

  The same order of operations as `finetuning` without decoding and SpecAugment:
  seeded shuffle -> repeat -> this host's block of each global batch -> batch ->
  mixup; the iterator is checkpointable like the shard streams.
  """
  ds = grain.MapDataset.source(_row_source(examples)).seed(config.seed).shuffle().repeat()
  ds = _host_slice(ds, config).batch(config.batch_size, drop_remainder=True)
  if config.mixup_alpha > 0:
    ds = ds.random_map(_mixup(config.mixup_alpha))
  return _finish(ds, config)


def rows_evaluation(examples: dict[str, np.ndarray], config: InputConfig):
  """Every in-memory row once, in order, this host's share; the last batch padded with
  `weight` 0 as in `evaluation`."""
  ds = grain.MapDataset.source(_row_source(examples))
  ds = ds[config.process_index::config.process_count]
  ds = ds.batch(config.batch_size, drop_remainder=False, batch_fn=_padded_batch(config))
  return _finish(ds, config)

