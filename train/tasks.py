"""The two training tasks: SSAST pre-training and multi-task fine-tuning.

A task turns the config into a model, its loss, its input pipelines and its
validation metrics; `train.trainer` runs either the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from model import ast, baselines, multitask, ssast, targets, transcription
from pipelines import input_pipeline
from pipelines.datasets import taxonomy
from pipelines.shards import metadata
from train import metrics as val_metrics
from train import predictions as prediction_files
from train import rundir, sharding, statistics_table


class DataMismatchError(ValueError):
  """The shards do not fit the configured model (shape, dataset or labels)."""


def _trained_on(raw: dict, chosen: dict[str, str | None]) -> dict:
  """The job's metadata as the run saw it: with `input.soundfonts` leaving some of its
  SoundFonts out, only the chosen ones are listed (what "heard in training" reads, and the
  first of them renders a MIDI input), the job's full list kept beside them."""
  job = metadata.soundfonts(raw)
  if chosen == job:
    return raw
  config = dict(raw.get("config") or {})
  config["soundfonts"] = [f for f in config.get("soundfonts") or []
                          if metadata.soundfont_label(f) in chosen]
  return dict(raw, config=config, soundfonts=chosen, job_soundfonts=job,
              soundfont_sha256=next(iter(chosen.values())) if len(chosen) == 1 else None)


def _input_config(config: ml_collections.ConfigDict, *, batch_size: int, splits, keys=None,
                  soundfonts=None, train: bool) -> input_pipeline.InputConfig:
  i = config.input
  return input_pipeline.InputConfig(
      batch_size=batch_size, seed=config.seed, splits=tuple(splits), keys=keys,
      soundfonts=soundfonts,
      variants=None if (i.augmented and train) else (0,), read_threads=i.read_threads,
      worker_processes=i.worker_processes if train else 0,
      prefetch_buffer_size=i.prefetch_buffer_size, spec_augment=i.spec_augment and train,
      freq_mask=i.freq_mask, time_mask=i.time_mask,
      mixup_alpha=i.mixup_alpha if train else 0.0,
      gain_db=i.gain_db if train else 0.0, tilt_db=i.tilt_db if train else 0.0,
      eq_db=i.eq_db if train else 0.0,
      note_rolls=config.task == "pretrain" and config.model.transcription_weight > 0,
      process_index=jax.process_index(), process_count=jax.process_count())


def _encoder(config: ml_collections.ConfigDict) -> ast.EncoderConfig:
  return ast.EncoderConfig(**config.model.encoder.to_dict())


def window_input(config: ml_collections.ConfigDict) -> jax.ShapeDtypeStruct:
  """One microbatch of log-mel windows `[microbatch, mel, frames]`."""
  e = config.model.encoder
  return jax.ShapeDtypeStruct((config.microbatch_size, e.num_mel_bins, e.num_frames),
                              jnp.float32)


def _gather(x) -> np.ndarray:
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


class Task:
  """Shared plumbing; subclasses define the model, loss and validation."""

  name: str

  def __init__(self, config: ml_collections.ConfigDict):
    if not config.data_dir:
      raise ValueError("config.data_dir is not set (--config.data_dir=SHARD_DIR)")
    self.config = config
    self.data_dir = pathlib.Path(config.data_dir)
    self.metadata = metadata.read(self.data_dir)

  @property
  def depth(self) -> int:
    """Encoder layers (for layer-wise LR decay)."""
    return self.model_config.encoder.depth

  # ---- inputs
  @property
  def host_batch(self) -> int:
    return self.config.batch_size // jax.process_count()

  def train_input_config(self) -> input_pipeline.InputConfig:
    return _input_config(self.config, batch_size=self.host_batch, splits=self.train_splits,
                         keys=self.train_keys, soundfonts=self.soundfont_checksums, train=True)

  def eval_input_config(self) -> input_pipeline.InputConfig:
    return _input_config(self.config,
                         batch_size=self.config.eval_batch_size // jax.process_count(),
                         splits=self.eval_splits, keys=self.eval_keys,
                         soundfonts=self.soundfont_checksums, train=False)

  @functools.cached_property
  def soundfonts(self) -> dict[str, str | None]:
    """Name -> SHA-256 of the SoundFonts whose windows the run reads: `input.soundfonts`
    (names as the job's metadata lists them, comma-separated), by default all of the job's."""
    job = metadata.soundfonts(self.metadata.raw)
    names = [n.strip() for n in self.config.input.get("soundfonts", "").split(",") if n.strip()]
    unknown = sorted(set(names) - set(job))
    if unknown:
      raise DataMismatchError(f"--config.input.soundfonts names {unknown}, but {self.data_dir} "
                              f"was rendered with {sorted(job)}")
    return {n: job[n] for n in names} if names else job

  @property
  def soundfont_checksums(self) -> frozenset[str | None] | None:
    """The window filter of `soundfonts` (None: every window, nothing left out)."""
    chosen = self.soundfonts
    return None if chosen == metadata.soundfonts(self.metadata.raw) else frozenset(
        chosen.values())

  def examples_per_epoch(self) -> int:
    return input_pipeline.count(self.data_dir, self.train_input_config())

  @functools.cached_property
  def eval_examples(self) -> int:
    """Validation windows (counted once: with fold filters, counting reads every header)."""
    return input_pipeline.count(self.data_dir, self.eval_input_config())

  def example_input(self) -> jax.ShapeDtypeStruct:
    """One microbatch of features: what the parameters are shaped by."""
    return window_input(self.config)

  def check_inputs(self) -> None:
    """The first training example fits the model (a clear error before any compiling)."""
    example = input_pipeline.training_examples(self.data_dir, self.train_input_config())[0]
    e = self.config.model.encoder
    shape = tuple(np.shape(example["features"])[-2:])
    if shape != (e.num_mel_bins, e.num_frames):
      raise DataMismatchError(
          f"{self.data_dir} holds windows of {shape[0]} mel bins x {shape[1]} frames; the model "
          f"expects {e.num_mel_bins} x {e.num_frames} (set --config.model.encoder.num_frames="
          f"{shape[1]} or re-run the job with another --window_s)")

  train_keys = None
  eval_keys = None
  evaluates_test = False  # scores a held-out test set (then only once, at the end)

  # ---- evaluation over the whole validation split, every host in lock-step
  def eval_batches(self, mesh):
    """Yields (global batch, host batch) for every validation window once.

    All hosts run the same number of batches (collectives must match): a host
    whose slice ends early pads with weight-0 copies of its last batch.
    """
    config = self.eval_input_config()
    total = self.eval_examples
    per_host = math.ceil(total / jax.process_count())
    num_batches = math.ceil(per_host / config.batch_size)
    iterator = iter(self.evaluation_stream(config))
    last = None
    for _ in range(num_batches):
      host = next(iterator, None)
      if host is None:
        host = dict(last, weight=np.zeros_like(last["weight"]))
      last = host
      yield sharding.global_batch(self.host_fields(host), mesh), host

  def evaluation_stream(self, config: input_pipeline.InputConfig):
    return input_pipeline.evaluation(self.data_dir, config)

  def host_fields(self, batch: dict) -> dict:
    return batch

  # ---- files the evaluation and inference tools read (process 0 calls these)
  def write_artifacts(self, workdir: pathlib.Path) -> None:
    """Run-level files next to the checkpoints (written once, before training): the
    data's feature settings (rundir.write_data_metadata)."""
    rundir.write_data_metadata(workdir, _trained_on(self.metadata.raw, self.soundfonts))

  def write_evaluation(self, workdir: pathlib.Path, step: int) -> None:
    """Per-example outputs of the evaluation just run."""


class Pretraining(Task):
  name = "pretrain"

  def __init__(self, config):
    super().__init__(config)
    m = config.model
    self.model_config = ssast.SSASTConfig(
        encoder=_encoder(config), num_masked=m.num_masked, masking=m.masking,
        cluster_size=m.cluster_size, generative_weight=m.generative_weight,
        ssast_weight=m.ssast_weight, transcription_weight=m.transcription_weight,
        transcription_hidden=m.transcription_hidden,
        transcription_positive_weight=m.get("transcription_positive_weight", 1.0),
        transcription_velocity_weight=m.get("transcription_velocity_weight", 1.0),
        transcription_frame_features=m.get("transcription_frame_features", False))
    self.model = ssast.SSAST(self.model_config)
    self.train_splits = (config.train_split,)
    self.eval_splits = (config.eval_split,)

  def train_iterator(self):
    return iter(input_pipeline.pretraining(self.data_dir, self.train_input_config()))

  def init(self, rng, features):
    r1, r2 = jax.random.split(rng)
    rolls = (transcription.empty_rolls(*features.shape[::2])
             if self.model_config.transcribes else None)
    return self.model.init({"params": r1, "masking": r2}, features, rolls=rolls)

  def loss_fn(self, params, batch, rng, train: bool):
    dropout, masking = jax.random.split(rng)
    rolls = ({k: batch[k] for k in input_pipeline.ROLL_FIELDS}
             if self.model_config.transcribes else None)
    out = self.model.apply({"params": params}, batch["features"], train=train,
                           valid_frames=batch["valid_frames"], rolls=rolls,
                           rngs={"dropout": dropout, "masking": masking})
    return out["loss"], {k: v for k, v in out.items() if k not in ("mask", "indices")}

  def make_eval_step(self):
    def step(params, batch, rng):
      _, m = self.loss_fn(params, batch, rng, False)
      weight = batch["weight"].sum()
      return {k: v * weight for k, v in m.items()} | {"weight": weight}
    return step

  def evaluate(self, eval_step, params, mesh) -> dict[str, float]:
    """Masked-patch losses on the validation split, with a fixed masking seed per batch.

    Batch means are weighted by their real examples; the padded last batch's
    duplicates still take part in its mean (a small bias on one batch).
    """
    totals: dict[str, float] = {}
    key = jax.random.key(self.config.seed + 1)
    for i, (batch, _) in enumerate(self.eval_batches(mesh)):
      out = jax.device_get(eval_step(params, batch, jax.random.fold_in(key, i)))
      for k, v in out.items():
        totals[k] = totals.get(k, 0.0) + float(v)
    weight = totals.pop("weight")
    return {f"val/{k}": v / weight for k, v in totals.items()}


def finetuning_model_config(config: ml_collections.ConfigDict) -> multitask.MultiTaskConfig:
  """The fine-tuning model a config describes (also how eval rebuilds it from W/config.json)."""
  m = config.model
  return multitask.MultiTaskConfig(
      backbone=m.backbone, encoder=_encoder(config),
      cnn=baselines.CNNConfig(**m.cnn.to_dict()),
      pooled_stats=baselines.PooledStatsConfig(**m.pooled_stats.to_dict()),
      head=m.head, head_heads=m.head_heads, head_depth=m.head_depth, head_hidden=m.head_hidden,
      cross_task=m.cross_task, adaptive_weighting=m.adaptive_weighting,
      loss_weights=_parse_weights(m.loss_weights))


class Finetuning(Task):
  name = "finetune"

  def __init__(self, config):
    super().__init__(config)
    self.model_config = finetuning_model_config(config)
    self.model = multitask.MultiTaskModel(self.model_config)
    fold = config.validation_fold
    if self.metadata.dataset != "percepiano":
      raise DataMismatchError(f"{self.data_dir} is a {self.metadata.dataset!r} job's output; "
                              "fine-tuning needs the PercePiano job's shards")
    # Performances are selected by key from the split table in the metadata, so one
    # set of shards serves both the piece and the performer split.
    self.split = config.split or self.metadata.splits["shards_follow"]
    if self.split not in ("piece", "performer"):
      raise ValueError(f"split {self.split!r} is not 'piece' or 'performer'")
    assignment = self.metadata.split_table(self.split)
    folds = sorted({int(v.removeprefix("fold")) for v in assignment.values()
                    if v.startswith("fold")})
    self.train_splits = self.eval_splits = ("train", "test")
    if fold == -1:
      train_sides = {f"fold{f}" for f in folds}
      eval_side = "test"
    elif fold in folds:
      train_sides = {f"fold{f}" for f in folds if f != fold}
      eval_side = f"fold{fold}"
    else:
      raise ValueError(f"validation_fold {fold} is not one of the {self.split} split's folds "
                       f"{folds} (or -1 for its test set)")
    self.train_keys = frozenset(k for k, v in assignment.items() if v in train_sides)
    self.eval_keys = frozenset(k for k, v in assignment.items() if v == eval_side)
    if not self.train_keys or not self.eval_keys:
      raise DataMismatchError(f"the {self.split} split has no performances for training or for "
                              f"{eval_side}")
    keys = sorted(set(self.metadata.split_table("piece")) |
                  set(self.metadata.split_table("performer")))
    self.key_ids = {k: i for i, k in enumerate(keys)}
    self.keys = tuple(keys)
    self.split_name = f"{self.split}/{eval_side}"
    self.normalizer = self._fit_targets()
    self.last_predictions: prediction_files.Predictions | None = None

  @property
  def evaluates_test(self) -> bool:
    """This run scores the held-out test set (so only once, at the end)."""
    return self.config.validation_fold == -1

  def _fit_targets(self) -> targets.TargetNormalizer:
    """Per-dimension label statistics of the training windows (every host alike)."""
    config = self.train_input_config()
    config = dataclasses.replace(config, batch_size=64, spec_augment=False, mixup_alpha=0.0,
                                 process_index=0, process_count=1)
    labels, masks = [], []
    for batch in input_pipeline.evaluation(self.data_dir, config):
      real = batch["weight"] > 0
      labels.append(batch["labels"][real])
      masks.append(batch["label_mask"][real])
    return targets.TargetNormalizer.fit(np.concatenate(labels), np.concatenate(masks))

  def train_iterator(self):
    return iter(input_pipeline.finetuning(self.data_dir, self.train_input_config()))

  def init(self, rng, features):
    return self.model.init({"params": rng}, features)

  def _normalised(self, labels):
    mean = jnp.asarray(self.normalizer.mean, jnp.float32)
    std = jnp.asarray(self.normalizer.std, jnp.float32)
    return (labels - mean) / std

  def loss_fn(self, params, batch, rng, train: bool):
    out = self.model.apply({"params": params}, batch["features"], train=train,
                           valid_frames=batch.get("valid_frames"), rngs={"dropout": rng})
    return multitask.loss(out, self._normalised(batch["labels"]), batch["label_mask"],
                          batch.get("weight"), self.model_config)

  def host_fields(self, batch: dict) -> dict:
    unknown = sorted({str(k) for k in batch["key"]} - set(self.key_ids))
    if unknown:
      raise DataMismatchError(f"windows of keys {unknown[:5]} are not in the shards' split table")
    return dict(batch, key_id=np.array([self.key_ids[str(k)] for k in batch["key"]], np.int32))

  def make_eval_step(self):
    def step(params, batch, rng):
      del rng
      out = self.model.apply({"params": params}, batch["features"], train=False,
                             valid_frames=batch.get("valid_frames"))
      return {"predictions": out["predictions"]}
    return step

  def evaluate(self, eval_step, params, mesh) -> dict[str, float]:
    """Pearson per dimension / group on performance-averaged predictions (label space)."""
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("pred", "label", "mask", "id", "w")}
    for batch, _ in self.eval_batches(mesh):
      out = eval_step(params, batch, None)
      parts["pred"].append(_gather(out["predictions"]))
      parts["label"].append(_gather(batch["labels"]))
      parts["mask"].append(_gather(batch["label_mask"]))
      parts["id"].append(_gather(batch["key_id"]))
      parts["w"].append(_gather(batch["weight"]))
    real = np.concatenate(parts["w"]) > 0
    pick = lambda k: np.concatenate(parts[k])[real]
    predictions = self.normalizer.denormalize(pick("pred"))
    ids = pick("id")
    pred, label, mask = val_metrics.performance_means(ids, predictions, pick("label"),
                                                       pick("mask"))
    unique, windows = np.unique(ids, return_counts=True)
    self.last_predictions = prediction_files.Predictions(
        keys=tuple(self.keys[i] for i in unique), predictions=pred, labels=label, mask=mask,
        windows=windows, split=self.split_name)
    values = val_metrics.per_dimension_pearson(pred, label, mask)
    out = {f"val/{k}": v for k, v in val_metrics.summarise(values).items()}
    out["val/performances"] = float(len(pred))
    out["val/mse"] = float(np.mean(((pred - label) ** 2)[mask]))
    return out

  def write_artifacts(self, workdir: pathlib.Path) -> None:
    super().write_artifacts(workdir)
    # eval.predict maps the heads' standardised outputs back to the label scale with this.
    (workdir / targets.FILE).write_text(json.dumps(self.normalizer.to_dict(), indent=1) + "\n")

  def write_evaluation(self, workdir: pathlib.Path, step: int) -> None:
    if self.last_predictions is not None:
      dataclasses.replace(self.last_predictions, step=step).save(
          prediction_files.path_for(workdir, step))


class ClipStatisticsFinetuning(Finetuning):
  """Fine-tuning's heads, loss, folds and evaluation on one vector per performance: the
  clip statistics the closed-form ridge fits (`backbone=clip_stats`).

  The statistics are standardised with the training performances' mean and standard
  deviation (as the ridge does); the targets are fitted on the training performances,
  one row each (the window tasks fit them on windows).
  """

  def __init__(self, config, workdir: pathlib.Path | None = None):
    cache = (pathlib.Path(config.clip_statistics_cache) if config.clip_statistics_cache
             else pathlib.Path(workdir or ".") / statistics_table.CACHE["audio"])
    # Before Finetuning's constructor: it fits the targets, which reads the table.
    self.table = statistics_table.load(config.data_dir, cache)
    super().__init__(config)
    self._train_rows = self._rows(self.train_keys)
    self._eval_rows = self._rows(self.eval_keys)
    x = self.table.x[self._train_rows]
    self.feature_mean = x.mean(0)
    self.feature_scale = np.where(x.std(0) > 0, x.std(0), 1.0)

  def _rows(self, keys) -> np.ndarray:
    missing = sorted(set(keys) - set(self.table.keys))
    if missing:
      raise DataMismatchError(f"{len(missing)} performances of the split have no clip "
                              f"statistics, e.g. {missing[:3]}")
    return self.table.rows(sorted(keys))

  def _fit_targets(self) -> targets.TargetNormalizer:
    rows = self._rows(self.train_keys)
    return targets.TargetNormalizer.fit(np.nan_to_num(self.table.labels[rows]),
                                        self.table.mask[rows])

  def _examples(self, rows: np.ndarray) -> dict[str, np.ndarray]:
    x = (self.table.x[rows] - self.feature_mean) / self.feature_scale
    return {"features": x.astype(np.float32),
            "labels": np.nan_to_num(self.table.labels[rows]).astype(np.float32),
            "label_mask": self.table.mask[rows],
            "key": np.asarray([self.table.keys[i] for i in rows])}

  def example_input(self) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((self.config.microbatch_size, self.table.x.shape[1]),
                                jnp.float32)

  def check_inputs(self) -> None:
    if self.config.input.spec_augment:
      logging.info("clip_stats: SpecAugment does not apply to statistics vectors (ignored)")

  def examples_per_epoch(self) -> int:
    return len(self._train_rows)

  @functools.cached_property
  def eval_examples(self) -> int:
    return len(self._eval_rows)

  def train_iterator(self):
    return iter(input_pipeline.rows(
        {k: v for k, v in self._examples(self._train_rows).items() if k != "key"},
        self.train_input_config()))

  def evaluation_stream(self, config: input_pipeline.InputConfig):
    return input_pipeline.rows_evaluation(self._examples(self._eval_rows), config)


def _parse_weights(text: str) -> tuple[tuple[str, float], ...]:
  """"timing=1,dynamics=2" -> (("timing", 1.0), ("dynamics", 2.0))."""
  out = []
  for item in (i.strip() for i in text.split(",")):
    if not item:
      continue
    name, sep, value = item.partition("=")
    try:
      if not sep:
        raise ValueError
      out.append((name.strip(), float(value)))
    except ValueError:
      raise ValueError(f"model.loss_weights: {item!r} is not GROUP=WEIGHT (e.g. "
                       f"'timing=1,dynamics=2')") from None
  return tuple(out)


TASKS = {"pretrain": Pretraining, "finetune": Finetuning}


def make(config: ml_collections.ConfigDict, workdir: pathlib.Path | None = None) -> Task:
  """The config's task; `workdir` holds caches a task makes (clip statistics)."""
  if config.task not in TASKS:
    raise ValueError(f"unknown task {config.task!r}; expected one of {sorted(TASKS)}")
  if config.task == "finetune" and config.model.backbone == "clip_stats":
    return ClipStatisticsFinetuning(config, workdir)
  return TASKS[config.task](config)


def summary_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
  """The scalar metrics worth a progress line (drops per-dimension entries)."""
  names = set(taxonomy.DIMENSION_NAMES)
  return {k: v for k, v in metrics.items() if k.rsplit("/", 1)[-1] not in names}
