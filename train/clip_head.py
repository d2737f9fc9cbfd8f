"""A clip-level head on cached window embeddings: one score for the whole performance.

  python -m train.clip_head --data_dir=SHARDS --windows=WINDOWS.npz --workdir=W \
      [--pooling=attention|mean] [--split=piece|performer] [--folds=0,1|none] [--test]

A PercePiano label belongs to a 5-90 s clip, but the fine-tuned AST scores each
5.12 s window alone and averages the scores. This head reads every window's frozen
encoder embedding (`eval.shard_embeddings --windows_output`) with where the window
lies (start and end over the clip's length, the clip's log length, the window count),
and learns the pooling:

  attention   the windows attend to each other (one self-attention layer), then a
              learned query attends over them: the clip's score can weigh windows by
              what they hold and where they are (backbone "ast+clip_attention")
  mean        each window scored alone by the same input layer and a linear read-out,
              the scores averaged: window averaging, the ablation (backbone
              "ast+window_mean")

Both see the same inputs (position included), so the difference is the pooling. Each
fold is trained on its training performances only: standardised inputs and labels,
AdamW, full passes in minibatches; the number of epochs is chosen on a validation part
of the training performances grouped like the outer split (never the held-out fold),
then the head is refitted on all of them for that many epochs. Everything is seeded
(`--seed`): the same seed gives the same predictions on one machine. The folds go
through `train.crossval.run` like the trainer and `train.ridge`, so `eval.report`
reads them (`--compare=W`).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import app, flags, logging

from pipelines import entry_point
from pipelines.datasets import taxonomy
from pipelines.shards import metadata
from train import crossval, fold_runs, metrics, statistics_table, trainer

FLAGS = flags.FLAGS
BACKBONES = {"attention": "ast+clip_attention", "mean": "ast+window_mean"}
POSITION_FEATURES = 4  # start / length, end / length, log length, windows / 10


class ClipHeadError(ValueError):
  pass


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  pooling: str = "attention"
  hidden: int = 128
  heads: int = 4
  dropout: float = 0.2
  learning_rate: float = 1e-3
  weight_decay: float = 1e-2
  batch_size: int = 64
  max_epochs: int = 300
  patience: int = 30  # epochs without a better validation Pearson before stopping
  validation_fraction: float = 0.2  # of the training groups, to choose the epochs


class ClipHead(nn.Module):
  """`[B, W, D]` window embeddings, `[B, W, 4]` positions, `[B, W]` mask -> `[B, outputs]`."""

  pooling: str
  hidden: int
  heads: int
  dropout: float
  outputs: int = taxonomy.NUM_DIMENSIONS

  @nn.compact
  def __call__(self, x, position, mask, train: bool = False):
    h = nn.Dense(self.hidden)(x) + nn.Dense(self.hidden, use_bias=False)(position)
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.gelu(nn.LayerNorm()(h)))
    if self.pooling == "mean":
      scores = nn.Dense(self.outputs)(h)
      weight = mask[..., None].astype(scores.dtype)
      return (scores * weight).sum(1) / weight.sum(1)
    h = nn.LayerNorm()(h + nn.MultiHeadDotProductAttention(num_heads=self.heads)(
        h, h, mask=nn.make_attention_mask(mask, mask)))
    query = self.param("query", nn.initializers.normal(0.02), (1, 1, self.hidden))
    query = jnp.broadcast_to(query, (h.shape[0], 1, self.hidden))
    pooled = nn.MultiHeadDotProductAttention(num_heads=self.heads)(
        query, h, mask=nn.make_attention_mask(jnp.ones(h.shape[:1] + (1,), bool), mask))[:, 0]
    return nn.Dense(self.outputs)(nn.Dropout(self.dropout, deterministic=not train)(pooled))


@dataclasses.dataclass(frozen=True)
class Batch:
  x: np.ndarray  # [P, W, D] zero-padded
  position: np.ndarray  # [P, W, 4]
  mask: np.ndarray  # [P, W] bool

  def take(self, rows) -> "Batch":
    return Batch(self.x[rows], self.position[rows], self.mask[rows])


def padded(windows: list[statistics_table.WindowVectors]) -> Batch:
  """Performances padded to the longest one's window count, with position features."""
  most = max(len(w.x) for w in windows)
  width = windows[0].x.shape[1]
  x = np.zeros((len(windows), most, width), np.float32)
  position = np.zeros((len(windows), most, POSITION_FEATURES), np.float32)
  mask = np.zeros((len(windows), most), bool)
  for i, w in enumerate(windows):
    n, length = len(w.x), max(w.duration_s, 1e-3)
    x[i, :n] = w.x
    position[i, :n] = np.stack([w.starts_s / length, w.ends_s / length,
                                np.full(n, np.log(length)), np.full(n, n / 10.0)], axis=1)
    mask[i, :n] = True
  return Batch(x, position, mask)


class Fitted:
  """A head trained on some performances: predicts label-space scores for others."""

  def __init__(self, model: ClipHead, params, x_mean, x_std, y_mean, y_std, epochs: int):
    self.model, self.params, self.epochs = model, params, epochs
    self.x_mean, self.x_std, self.y_mean, self.y_std = x_mean, x_std, y_mean, y_std

  def predict(self, batch: Batch) -> np.ndarray:
    x = (batch.x - self.x_mean) / self.x_std * batch.mask[..., None]
    out = self.model.apply({"params": self.params}, x, batch.position, batch.mask)
    return np.asarray(out, np.float64) * self.y_std + self.y_mean


def _train(config: HeadConfig, batch: Batch, labels: np.ndarray, seed: int, epochs: int,
           validation: tuple[Batch, np.ndarray] | None = None) -> Fitted:
  """`epochs` passes over `batch` (or, with `validation`, until its Pearson stops rising;
  the returned head is then the best epoch's and `.epochs` says which)."""
  valid_windows = batch.x[batch.mask]
  x_mean, x_std = valid_windows.mean(0), valid_windows.std(0) + 1e-6
  known = np.isfinite(labels)
  y_mean = np.nanmean(labels, 0)
  y_std = np.nanstd(labels, 0) + 1e-6
  x = (batch.x - x_mean) / x_std * batch.mask[..., None]
  y = np.where(known, (labels - y_mean) / y_std, 0.0).astype(np.float32)
  model = ClipHead(config.pooling, config.hidden, config.heads, config.dropout)
  rng = jax.random.key(seed)
  params = model.init(rng, x[:1], batch.position[:1], batch.mask[:1])["params"]
  tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, xb, pb, mb, yb, kb, rng):
    def loss_fn(p):
      out = model.apply({"params": p}, xb, pb, mb, train=True, rngs={"dropout": rng})
      return jnp.sum(kb * (out - yb) ** 2) / jnp.maximum(kb.sum(), 1.0)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  fitted = functools.partial(Fitted, model, x_mean=x_mean, x_std=x_std, y_mean=y_mean,
                             y_std=y_std)
  order_rng = np.random.default_rng(seed)
  best, best_score, since = None, -np.inf, 0
  for epoch in range(1, epochs + 1):
    order = order_rng.permutation(len(x))
    for i in range(0, len(order), config.batch_size):
      rows = order[i:i + config.batch_size]
      rng, sub = jax.random.split(rng)
      params, opt, _ = step(params, opt, x[rows], batch.position[rows], batch.mask[rows],
                            y[rows], known[rows].astype(np.float32), sub)
    if validation is None:
      continue
    held, held_labels = validation
    score = metrics.mean_pearson(fitted(params=params, epochs=epoch).predict(held),
                                 held_labels, np.isfinite(held_labels))
    if score > best_score:
      best, best_score, since = (params, epoch), score, 0
    else:
      since += 1
      if since >= config.patience:
        break
  if validation is None:
    return fitted(params=params, epochs=epochs)
  return fitted(params=best[0], epochs=best[1])


def fit(config: HeadConfig, batch: Batch, labels: np.ndarray, groups: np.ndarray,
        seed: int = 0) -> Fitted:
  """Chooses the epochs on a grouped validation part of these performances, then refits
  on all of them for that many."""
  names = np.unique(groups)
  if names.size < 2:
    raise ClipHeadError("the training performances form one group: no validation part can "
                        "choose the epochs")
  chosen = np.random.default_rng(seed).permutation(names)
  held_groups = set(chosen[:max(1, int(round(config.validation_fraction * names.size)))])
  held = np.array([g in held_groups for g in groups])
  trial = _train(config, batch.take(~held), labels[~held], seed, config.max_epochs,
                 validation=(batch.take(held), labels[held]))
  return _train(config, batch, labels, seed, trial.epochs)


# ----------------------------------------------------------------------------- the runs

def _config(data_dir: pathlib.Path, windows: pathlib.Path, split: str, seed: int,
            head: HeadConfig) -> ml_collections.ConfigDict:
  """What identifies these runs, in the trainer's config shape where eval.report reads it."""
  return ml_collections.ConfigDict({
      "task": "finetune", "data_dir": str(data_dir), "split": split, "seed": seed,
      "validation_fold": -1, "model": {"backbone": BACKBONES[head.pooling]},
      "clip_head": {**dataclasses.asdict(head), "windows": str(windows)}})


def run_fold(windows: dict[str, statistics_table.WindowVectors], labels: dict[str, np.ndarray],
             meta: metadata.ShardMetadata, config: ml_collections.ConfigDict,
             directory: pathlib.Path) -> trainer.Result:
  t0 = time.perf_counter()
  fold = fold_runs.fold_of(meta, config)
  missing = sorted(k for k in fold.train_keys + fold.held_keys
                   if k not in windows or k not in labels)
  if missing:
    raise ClipHeadError(f"{len(missing)} performances of the split have no window embeddings "
                        f"or labels (made from other shards?), e.g. {missing[:3]}")
  head = HeadConfig(**{k: v for k, v in config.clip_head.items() if k != "windows"})
  train_labels = np.stack([labels[k] for k in fold.train_keys])
  held_labels = np.stack([labels[k] for k in fold.held_keys])
  fitted = fit(head, padded([windows[k] for k in fold.train_keys]), train_labels,
               statistics_table.groups_of(fold.train_keys, config.split), seed=config.seed)
  scores = fitted.predict(padded([windows[k] for k in fold.held_keys]))
  result = fold_runs.write(directory, config, meta, fold, scores, held_labels,
                           np.isfinite(held_labels), time.perf_counter() - t0,
                           {"epochs": fitted.epochs})
  logging.info("%s: %d epochs, mean Pearson %.3f", directory.name, fitted.epochs,
               result.metrics["val/pearson/mean"])
  return result


def run(data_dir: str | pathlib.Path, windows_file: str | pathlib.Path,
        workdir: str | pathlib.Path, split: str, only: list[int] | None = None,
        test: bool = False, *, seed: int = 0, head: HeadConfig = HeadConfig()) -> dict:
  """Every fold not finished yet (and the test set with `test`), through train.crossval's
  driver; returns its summary."""
  if head.pooling not in BACKBONES:
    raise ClipHeadError(f"pooling must be one of {sorted(BACKBONES)}, got {head.pooling!r}")
  data_dir, workdir = pathlib.Path(data_dir).absolute(), pathlib.Path(workdir).absolute()
  windows_file = pathlib.Path(windows_file).absolute()
  if not windows_file.is_file():
    raise ClipHeadError(f"{windows_file} does not exist (eval.shard_embeddings "
                        "--windows_output writes it)")
  meta = metadata.read(data_dir)

  @functools.cache
  def inputs():  # only when some fold still has to be fitted
    return statistics_table.load_windows(windows_file)[0], statistics_table.labels(data_dir)

  return crossval.run(_config(data_dir, windows_file, split, seed, head), workdir, split,
                      only, test,
                      train=lambda config, directory: run_fold(*inputs(), meta, config,
                                                               directory))


# ----------------------------------------------------------------------------- CLI

def define_flags() -> None:
  flags.DEFINE_string("data_dir", None, "A PercePiano job's output (with its audio shards, "
                      "for the labels).", required=True)
  flags.DEFINE_string("windows", None, "The window embeddings eval.shard_embeddings "
                      "--windows_output wrote for these shards.", required=True)
  crossval.define_fold_flags()
  flags.DEFINE_enum("pooling", "attention", sorted(BACKBONES),
                    "attention: learned pooling over the windows; mean: window averaging.")
  flags.DEFINE_integer("seed", 0, "Seed of the initialisation, the batches, dropout and the "
                       "validation part.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  fold_runs.main(lambda only: run(
      FLAGS.data_dir, FLAGS.windows, FLAGS.workdir, FLAGS.split, only, FLAGS.test,
      seed=FLAGS.seed, head=HeadConfig(pooling=FLAGS.pooling)), (ClipHeadError,))


def cli() -> None:
  """Console entry point (`ppt-clip-head`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
