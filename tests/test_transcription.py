"""The transcription head and its loss, and notes-aware pre-training through the trainer."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pretty_midi
import pytest

from model import ast, ssast, transcription
from pipelines import input_pipeline
from train import metric_writer, rundir

REPO = pathlib.Path(__file__).resolve().parent.parent
ENCODER = ast.EncoderConfig(num_mel_bins=128, num_frames=64, width=32, depth=1, heads=2,
                            mlp_dim=64, freq_stride=16, time_stride=16, num_tokens=1,
                            pooling="patches")


def _rolls(seed=0, b=2, frames=64):
  rng = np.random.default_rng(seed)
  out = {name: (rng.random((b, frames, 88)) < 0.05).astype(np.float32)
         for name in ("onset", "offset", "frame")}
  out["velocity"] = (out["onset"] * rng.random((b, frames, 88))).astype(np.float32)
  out["pedal"] = (rng.random((b, frames)) < 0.5).astype(np.float32)
  out["has_notes"] = np.ones(b, bool)
  return {k: jnp.asarray(v) for k, v in out.items()}


def test_loss_known_answers_and_masks():
  rolls = _rolls()
  perfect = {k: jnp.where(rolls[k] > 0, 30.0, -30.0) for k in ("onset", "offset", "frame",
                                                               "pedal")}
  perfect["velocity"] = jnp.log(rolls["velocity"] / (1 - rolls["velocity"] + 1e-7) + 1e-7)
  total, parts = transcription.loss(perfect, rolls, None)
  assert float(total) < 1e-6 and float(parts["onset_f1_frames"]) == pytest.approx(1.0)
  wrong = {k: -v for k, v in perfect.items()}
  bad, bad_parts = transcription.loss(wrong, rolls, None)
  assert float(bad) > 10 and float(bad_parts["onset_f1_frames"]) == 0.0
  # A window without note targets, and frames past valid_frames, do not count.
  masked = dict(rolls, has_notes=jnp.array([True, False]))
  garbage = {k: v.at[1].set(-v[1]) for k, v in perfect.items()}
  assert float(transcription.loss(garbage, masked, None)[0]) < 1e-6
  cut = {k: v.at[:, 40:].set(-v[:, 40:]) for k, v in perfect.items()}
  assert float(transcription.loss(cut, rolls, jnp.array([40, 40]))[0]) < 1e-6
  assert float(transcription.loss(cut, rolls, None)[0]) > 1


def test_head_needs_time_columns_that_tile_the_window():
  transcription.check_encoder(ENCODER)
  for bad in (ENCODER.replace(time_stride=10), ENCODER.replace(num_frames=72)):
    with pytest.raises(ValueError, match="non-overlapping time patches"):
      transcription.check_encoder(bad)
  with pytest.raises(ValueError, match="not both 0"):
    ssast.SSASTConfig(encoder=ENCODER, num_masked=4, ssast_weight=0.0)


@pytest.mark.parametrize("weights,params", [
    ((1.0, 0.0), {"discriminative", "encoder", "generative"}),
    ((0.0, 1.0), {"encoder", "transcription"}),
    ((1.0, 1.0), {"discriminative", "encoder", "generative", "transcription"})])
def test_the_three_objectives_and_learning(weights, params):
  config = ssast.SSASTConfig(encoder=ENCODER, num_masked=8, ssast_weight=weights[0],
                             transcription_weight=weights[1])
  model = ssast.SSAST(config)
  rolls = _rolls()
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 128, 64)), jnp.float32)
  variables = model.init({"params": jax.random.key(0), "masking": jax.random.key(1)}, x,
                         rolls=rolls)
  assert set(variables["params"]) == params
  if not weights[1]:
    return
  # The head can fit a batch's rolls: the transcription loss falls by more than half.
  tx = optax.adam(3e-3)
  state = tx.init(variables["params"])

  def loss(p, key):
    out = model.apply({"params": p}, x, rolls=rolls, rngs={"masking": key})
    return out["transcription"]

  @jax.jit
  def step(p, s, key):
    value, grads = jax.value_and_grad(loss)(p, key)
    updates, s = tx.update(grads, s)
    return optax.apply_updates(p, updates), s, value

  p, first = variables["params"], None
  for i in range(60):
    p, state, value = step(p, state, jax.random.key(i))
    first = float(value) if first is None else first
  assert float(value) < 0.5 * first


@pytest.fixture(scope="module")
def notes_pretrained(train_shards, jax_env, tmp_path_factory) -> pathlib.Path:
  """3 steps of SSAST + transcription pre-training of a small encoder on the MAESTRO job's
  shards (WAVs with aligned MIDI, so their windows carry note targets)."""
  workdir = tmp_path_factory.mktemp("notes-pretrained")
  args = ["--config=train/configs/pretrain.py:tiny", f"--workdir={workdir}",
          f"--config.data_dir={train_shards['maestro']}", "--config.model.encoder.num_frames=256",
          "--config.model.encoder.width=64", "--config.model.encoder.depth=2",
          "--config.model.encoder.heads=2", "--config.model.encoder.mlp_dim=128",
          "--config.model.num_masked=48", "--config.model.transcription_weight=1.0",
          "--config.model.transcription_hidden=64", "--config.num_steps=3",
          "--config.batch_size=8", "--config.microbatch_size=8", "--config.eval_batch_size=8",
          "--config.log_every_steps=1"]
  proc = subprocess.run([sys.executable, "-m", "train.main", *args], cwd=REPO, env=jax_env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_notes_aware_pretraining_runs_in_the_trainer(notes_pretrained):
  tmp_path = notes_pretrained
  assert rundir.finished(rundir.read_result(tmp_path))
  logged = metric_writer.read(tmp_path)
  train = [e for e in logged if "train/onset_bce" in e]
  assert len(train) == 3 and all(e["train/info_nce"] > 0 for e in train)
  final = [e for e in logged if "val/transcription" in e][-1]
  assert final["val/transcription"] > 0 and 0 <= final["val/onset_f1_frames"] <= 1
  assert json.loads((tmp_path / rundir.CONFIG).read_text())["model"]["transcription_weight"] == 1
  assert input_pipeline.ROLL_FIELDS[-1] == "has_notes"


# ----------------------------------------------------------------------------- decoding, scores

def test_decoding_inverts_the_rolls_and_mir_eval_scores_it():
  from eval import transcription_scores
  from pipelines.audio import notes
  reference = notes.Notes([[0.10, 0.50, 60, 100], [0.10, 0.30, 64, 50], [0.60, 0.90, 60, 30],
                           [0.62, 1.20, 21, 80]], [[0.2, 0.8]])
  rolls = notes.rolls(reference, frames=150)
  decoded = notes.from_rolls({k: v.astype(np.float32) for k, v in rolls.items()})
  np.testing.assert_allclose(decoded.notes[:, [0, 2]], reference.notes[:, [0, 2]], atol=1e-6)
  np.testing.assert_allclose(decoded.notes[:, 1], reference.notes[:, 1], atol=0.0101)
  np.testing.assert_allclose(decoded.notes[:, 3], reference.notes[:, 3], atol=0.5)
  np.testing.assert_allclose(decoded.pedal, reference.pedal, atol=1e-6)
  perfect = transcription_scores.score(reference, decoded)
  assert all(perfect[f"{k}/f1"] == 1.0 for k in ("onset", "onset_offset", "onset_velocity",
                                                  "pedal"))
  # One note a semitone off, one 80 ms late, no pedal.
  off = notes.Notes(reference.notes + [[0, 0, 1, 0], [0.08, 0.08, 0, 0], [0, 0, 0, 0],
                                       [0, 0, 0, 0]], np.zeros((0, 2)))
  scores = transcription_scores.score(reference, off)
  assert scores["onset/f1"] == pytest.approx(0.5) and scores["pedal/f1"] == 0.0
  # Every note right but the velocities out of order: onsets perfect, velocity not (mir_eval
  # rescales velocities linearly first, so only a non-monotone change can fail).
  order = reference.notes.copy()
  order[:, 3] = order[[1, 3, 0, 2], 3]
  shuffled = transcription_scores.score(reference, notes.Notes(order, reference.pedal))
  assert shuffled["onset/f1"] == 1.0 and shuffled["onset_velocity/f1"] < 1.0
  empty = transcription_scores.score(reference, notes.Notes(np.zeros((0, 4)), np.zeros((0, 2))))
  assert empty["onset/f1"] == 0.0
  # Decoding thresholds: a faint onset below 0.5 is not a note; a held onset run is one note.
  probs = {k: np.zeros((20, 88), np.float32) for k in ("onset", "frame", "velocity")}
  probs["pedal"] = np.zeros(20, np.float32)
  probs["onset"][2:5, 39] = 0.9
  probs["onset"][10, 40] = 0.4
  probs["frame"][2:8, 39] = 0.8
  one = notes.from_rolls(probs)
  np.testing.assert_allclose(one.notes[:, :3], [[0.02, 0.08, 60]], atol=1e-6)


def test_transcribe_writes_midi_and_scores_it(notes_pretrained, jax_env, tmp_path, finetuned_run):
  from pipelines.audio import notes, render
  midi = pretty_midi.PrettyMIDI()
  piano = pretty_midi.Instrument(0)
  piano.notes += [pretty_midi.Note(80, 60 + i, 0.5 + 0.3 * i, 0.8 + 0.3 * i) for i in range(8)]
  midi.instruments.append(piano)
  source = tmp_path / "in.mid"
  source.write_bytes(render.midi_to_bytes(midi))

  def transcribe(*args):
    return subprocess.run([sys.executable, "-m", "eval.transcribe", *map(str, args)], cwd=REPO,
                          env=jax_env, capture_output=True, text=True, timeout=600, check=False)

  out = tmp_path / "out.mid"
  proc = transcribe(f"--checkpoint={notes_pretrained}", source, f"--output_midi={out}",
                    f"--reference_midi={source}", f"--output_json={tmp_path / 's.json'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "onset/f1" in proc.stdout
  transcribed = notes.from_midi(out.read_bytes())  # a readable MIDI file (3 steps: any notes)
  assert transcribed.notes.shape[1] == 4
  scores = json.loads((tmp_path / "s.json").read_text())
  assert 0.0 <= scores["onset/f1"] <= 1.0 and scores["step"] == 3
  # Bad input: one line each, no traceback.
  missing = transcribe(f"--checkpoint={notes_pretrained}", tmp_path / "nope.wav",
                       f"--output_midi={out}")
  assert missing.returncode != 0 and "nope.wav" in missing.stderr
  assert "Traceback" not in missing.stderr
  wrong = transcribe(f"--checkpoint={finetuned_run}", source, f"--output_midi={out}")
  assert wrong.returncode != 0 and "not a pre-training run with a transcription head" in \
      wrong.stderr

