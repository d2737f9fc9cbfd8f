"""The transcription head and its loss, and notes-aware pre-training through the trainer."""

import dataclasses
import json
import pathlib
import shutil
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
from pipelines.audio import notes as notes_lib
from pipelines.shards import tiled_windows
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


def test_velocity_weight_scales_the_velocity_part_alone():
  """Perfect onsets, frames and pedal, velocities off by a known amount: the total is the
  velocity MSE times its weight (the reported part unweighted); other parts are untouched."""
  rolls = _rolls()
  logits = {k: jnp.where(rolls[k] > 0, 30.0, -30.0) for k in ("onset", "offset", "frame",
                                                              "pedal")}
  off = jnp.clip(rolls["velocity"] + 0.2, 0.01, 0.99)
  logits["velocity"] = jnp.log(off / (1 - off))
  one, parts = transcription.loss(logits, rolls, None)
  ten, parts10 = transcription.loss(logits, rolls, None, velocity_weight=10.0)
  mse = float(parts["velocity_mse"])
  assert mse > 0.01 and float(parts10["velocity_mse"]) == pytest.approx(mse)
  rest = float(one) - mse
  assert float(ten) == pytest.approx(rest + 10 * mse, rel=1e-5)
  assert float(transcription.loss(logits, rolls, None, velocity_weight=0.0)[0]) == (
      pytest.approx(rest, abs=1e-6))


def test_head_needs_time_columns_that_tile_the_window():
  transcription.check_encoder(ENCODER)
  for bad in (ENCODER.replace(time_stride=10), ENCODER.replace(num_frames=72)):
    with pytest.raises(ValueError, match="non-overlapping time patches"):
      transcription.check_encoder(bad)
  with pytest.raises(ValueError, match="not both 0"):
    ssast.SSASTConfig(encoder=ENCODER, num_masked=4, ssast_weight=0.0)


@pytest.mark.parametrize("weights,params,frame_features", [
    ((1.0, 0.0), {"discriminative", "encoder", "generative"}, False),
    ((0.0, 1.0), {"encoder", "transcription"}, False),
    ((0.0, 1.0), {"encoder", "transcription"}, True),
    ((1.0, 1.0), {"discriminative", "encoder", "generative", "transcription"}, True)])
def test_the_three_objectives_and_learning(weights, params, frame_features):
  config = ssast.SSASTConfig(encoder=ENCODER, num_masked=8, ssast_weight=weights[0],
                             transcription_weight=weights[1],
                             transcription_frame_features=frame_features)
  model = ssast.SSAST(config)
  rolls = _rolls()
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 128, 64)), jnp.float32)
  variables = model.init({"params": jax.random.key(0), "masking": jax.random.key(1)}, x,
                         rolls=rolls)
  assert set(variables["params"]) == params
  if not weights[1]:
    return
  head = set(variables["params"]["transcription"])
  assert head == ({"hidden", "out", "frames", "place"} if frame_features else {"hidden", "out"})
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


def _frame_head(frame_features):
  head = transcription.TranscriptionHead(ENCODER, 32, frame_features)
  tokens = jnp.zeros((1, ENCODER.num_patches, ENCODER.width))  # a constant column context
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 128, 64)), jnp.float32)
  params = head.init(jax.random.key(0), tokens, x)
  return lambda features: head.apply(params, tokens, features)


def test_the_frame_features_reach_the_frames_they_describe():
  """With frame features, changing input frame 30 changes the logits of frames 29-32 only
  (a 3-frame convolution over the frames and their rise since the frame before); without
  them the head reads the tokens alone."""
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 128, 64)), jnp.float32)
  changed = x.at[0, :, 30].add(3.0)
  apply = _frame_head(True)
  moved = np.abs(np.asarray(apply(changed)["onset"] - apply(x)["onset"])).max(axis=-1)[0]
  assert sorted(np.flatnonzero(moved > 1e-6)) == [29, 30, 31, 32]
  plain = _frame_head(False)
  assert np.array_equal(np.asarray(plain(changed)["onset"]), np.asarray(plain(x)["onset"]))
  with pytest.raises(ValueError, match="needs the encoder's input features"):
    transcription.TranscriptionHead(ENCODER, 32, True).init(
        jax.random.key(0), jnp.zeros((1, ENCODER.num_patches, ENCODER.width)))


def test_the_transcriber_scores_what_pre_training_trained():
  """Inference (`Transcriber`) with a pre-training model's parameters gives the logits that
  model's loss saw: the loss recomputed from its probabilities matches (frame features too)."""
  config = ssast.SSASTConfig(encoder=ENCODER, ssast_weight=0.0, transcription_weight=1.0,
                             transcription_hidden=32, transcription_frame_features=True)
  rolls = _rolls()
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 128, 64)), jnp.float32)
  model = ssast.SSAST(config)
  params = model.init({"params": jax.random.key(0)}, x, rolls=rolls)["params"]
  trained = float(model.apply({"params": params}, x, rolls=rolls)["transcription"])
  probs = transcription.Transcriber(ENCODER, 32, True).apply({"params": params}, x)
  logits = {k: jnp.log(p) - jnp.log1p(-p) for k, p in probs.items()}
  assert float(transcription.loss(logits, rolls, None)[0]) == pytest.approx(trained, rel=1e-4)


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
  assert all(perfect[f"{k}/f1"] == 1.0 for k in transcription_scores.F1_METRICS)
  assert perfect["velocity/r"] == pytest.approx(1.0, abs=1e-3)
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
  assert shuffled["velocity/r"] == pytest.approx(
      np.corrcoef(reference.notes[:, 3], order[:, 3])[0, 1])
  # velocity/r pairs the matched notes only: with the late and the off-key note unmatched,
  # fewer than three pairs leave it undefined.
  assert scores["velocity/r"] is None
  empty = transcription_scores.score(reference, notes.Notes(np.zeros((0, 4)), np.zeros((0, 2))))
  assert empty["onset/f1"] == 0.0 and empty["pedal_frames/f1"] == 0.0
  assert empty["velocity/r"] is None
  # Pedal frames: down 0.2-0.8 s against 0.5-1.1 s overlaps 30 of 60 frames each way.
  late = transcription_scores.score(reference, notes.Notes(reference.notes, [[0.5, 1.1]]))
  assert late["pedal_frames/f1"] == pytest.approx(0.5) and late["pedal/f1"] == 0.0
  # A subset of the metrics is those metrics of the full score, and nothing else.
  subset = transcription_scores.score(reference, off, ("onset_offset", "pedal"))
  assert subset == {k: v for k, v in scores.items() if k.startswith(("onset_offset/", "pedal/"))}
  with pytest.raises(ValueError, match="unknown metrics"):
    transcription_scores.score(reference, off, ("offset",))
  # A performance MIDI that starts before its audio: one clear error, naming the side.
  early = notes.Notes(reference.notes - [[0.3, 0.3, 0, 0]] * 4, reference.pedal)
  with pytest.raises(ValueError, match=r"2 of the reference's notes start before 0 s "
                                       r"\(the first at -0.200 s\)"):
    transcription_scores.score(early, off)
  with pytest.raises(ValueError, match="estimate's pedal intervals start before 0 s"):
    transcription_scores.score(reference, notes.Notes(reference.notes, [[-0.1, 0.5]]))
  with pytest.raises(ValueError, match="estimate's notes have non-finite times"):
    transcription_scores.score(reference, notes.Notes(off.notes + [[np.nan, 0, 0, 0]] * 4,
                                                      off.pedal))
  # Decoding thresholds: a faint onset below 0.5 is not a note; a held onset run is one note.
  probs = {k: np.zeros((20, 88), np.float32) for k in ("onset", "frame", "velocity")}
  probs["pedal"] = np.zeros(20, np.float32)
  probs["onset"][2:5, 39] = 0.9
  probs["onset"][10, 40] = 0.4
  probs["frame"][2:8, 39] = 0.8
  one = notes.from_rolls(probs)
  np.testing.assert_allclose(one.notes[:, :3], [[0.02, 0.08, 60]], atol=1e-6)
  # Its velocity: at the run's first frame, or the largest over the run (not past it).
  probs["velocity"][2:9, 39] = [0.2, 0.6, 0.5, 0.9, 0.9, 0.9, 0.9]
  assert notes.from_rolls(probs).notes[0, 3] == round(0.2 * 127)
  assert notes.from_rolls(probs, velocity_at="max").notes[0, 3] == round(0.6 * 127)
  with pytest.raises(ValueError, match="velocity_at"):
    notes.from_rolls(probs, velocity_at="mean")


def test_report_means_skip_an_undefined_velocity_correlation():
  """A performance with under three matched notes has no velocity correlation: the report's
  mean is over the performances that have one, and None where none has."""
  from eval import shard_transcription, transcription_report
  from pipelines.audio import notes
  many = notes.Notes([[0.1 * i, 0.1 * i + 0.05, 60, 20 + 10 * i] for i in range(1, 6)],
                     np.zeros((0, 2)))
  few = notes.Notes([[0.1, 0.2, 60, 50]], np.zeros((0, 2)))

  def performance(reference, velocity_scale):
    rolls = notes.rolls(reference, frames=80)
    probs = {k: v.astype(np.float32) for k, v in rolls.items()}
    probs["velocity"] = probs["velocity"] ** velocity_scale  # monotone: r < 1, > 0
    return shard_transcription.Performance("k", "g", probs, reference, 0.8)

  both = [performance(many, 2.0), performance(few, 1.0)]
  alone = transcription_report.mean_scores(both[:1], shard_transcription.Thresholds())
  mean = transcription_report.mean_scores(both, shard_transcription.Thresholds())
  assert 0.9 < alone["velocity/r"] < 1.0 and mean["velocity/r"] == alone["velocity/r"]
  assert mean["onset/f1"] == 1.0
  assert transcription_report.mean_scores(both[1:], shard_transcription.Thresholds())[
      "velocity/r"] is None


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



# ----------------------------------------------------------------------------- shards, report

def _source_notes(maestro_shards: pathlib.Path, key: str, trim_start_s: float):
  from pipelines.audio import notes
  from pipelines.datasets import maestro
  root = maestro_shards.parent / "corpus" / "maestro-v3.0.0"
  index = maestro.read_maestro(root)
  midi = next(p.midi_filename for p in index.performances
              if p.audio_filename.rsplit(".", 1)[0] == key)
  return notes.from_midi((root / midi).read_bytes()).shifted(trim_start_s)


def test_windows_tile_and_reassemble_the_performance_notes(train_shards):
  """The job's windows overlap (hop 1.28 s, window 2.56 s): tiling keeps every other one,
  and the notes they own are the source MIDI's over the frames kept."""
  from eval import shard_transcription, transcription_scores
  windows = tiled_windows.read_windows(train_shards["maestro"], ["validation"])
  assert windows
  for key, tiled in windows.items():
    starts = [w.header["start_s"] for w in tiled]
    assert starts == sorted(starts) and np.all(np.diff(starts) >= 2.56 - 1e-6), starts
    total = (tiled_windows.frame(starts[-1]) + tiled[-1].header["valid_frames"])
    reference = shard_transcription._reference(tiled, total)
    source = _source_notes(train_shards["maestro"], key, tiled[0].header["trim_start_s"])
    heard = source.window(0.0, total / 100)
    heard = type(heard)(heard.notes[heard.notes[:, 0] >= 0], heard.pedal)
    assert len(reference.notes) == len(heard.notes) > 0
    scores = transcription_scores.score(heard, reference)
    assert scores["onset/f1"] == 1.0, (key, scores)
    # A perfect transcriber (the reference's own rolls) decodes back to it.
    rolls = notes_lib.rolls(reference, total)
    decoded = shard_transcription.Thresholds().decode(
        {k: v.astype(np.float32) for k, v in rolls.items()})
    assert transcription_scores.score(reference, decoded)["onset/f1"] == 1.0
  # Tiling leaves no hole: every frame some window of the job covers, a kept one covers.
  every = tiled_windows.read_windows(train_shards["maestro"], ["validation"], tiled=False)
  for key, tiled in windows.items():
    def covered(ws):
      return set().union(*(range(tiled_windows.frame(w.header["start_s"]),
                                 tiled_windows.frame(w.header["start_s"])
                                 + w.header["valid_frames"]) for w in ws))
    assert covered(tiled) == covered(every[key]), key
  # max_seconds keeps the windows that start before it.
  first = tiled_windows.read_windows(train_shards["maestro"], ["validation"],
                                     max_seconds=2.0)
  assert all(w.header["start_s"] < 2.0 for ws in first.values() for w in ws)


def test_tiling_keeps_windows_whose_float32_start_reads_a_hair_early():
  """A job with hop = window stores start times as float32: the window at 30.72 s reads as
  30.7199993 s, before the previous one's end computed from 25.6000004 s. Every window
  must still be kept (it was dropped, and a 5 s hole opened in 224 of the 1202 PercePiano
  transcriptions); an overlapping window must still be left out."""
  from pipelines.shards import records

  def window(start: float) -> tiled_windows.Window:
    header = {"key": "k", "split": "train", "variant": 0, "start_s": start,
              "num_frames": 512, "valid_frames": 512}
    encoded = records.encode_window(header, np.zeros((4, 512), np.float32))
    decoded, arrays = records.decode(encoded)
    return tiled_windows.Window(decoded, arrays["features"], None)

  windows = [window(round(k * 5.12, 3)) for k in range(40)]
  assert windows[6].header["start_s"] < 30.72  # what the records really give back
  assert tiled_windows.tiled_order(windows) == windows
  overlapping = [window(round(k * 2.56, 3)) for k in range(40)]
  assert tiled_windows.tiled_order(overlapping) == overlapping[::2]


def test_saved_thresholds_decode_as_they_did_and_flags_override_them():
  """Thresholds saved before `velocity_at` existed (the releases') read velocities at the
  onset frame, as when their ridge was fitted; a saved choice or a flag wins over that."""
  import types

  from eval import shard_transcription
  old = {"onset": 0.6, "frame": 0.5, "pedal": 0.6, "min_pedal_s": 0.2}
  chosen, source = shard_transcription.thresholds_for(types.SimpleNamespace(thresholds=old),
                                                      None, None, None)
  assert chosen.velocity_at == "onset" and chosen.onset == 0.6 and source == "validation"
  chosen, source = shard_transcription.thresholds_for(types.SimpleNamespace(thresholds=old),
                                                      None, None, None, "max")
  assert chosen.velocity_at == "max" and chosen.pedal == 0.6 and source == "flags"
  saved = shard_transcription.thresholds_for(
      types.SimpleNamespace(thresholds={**old, "velocity_at": "max"}), None, None, None)[0]
  assert saved.velocity_at == "max"


def test_thresholds_are_chosen_on_the_tune_half():
  """Onsets at probability 0.35 and a held frame at 0.25: the grid must pick thresholds
  below both; the halves split compositions, never a composition between them."""
  from eval import shard_transcription, transcription_report
  notes = notes_lib
  reference = notes.Notes([[0.1, 0.5, 60, 80], [0.6, 1.0, 64, 80]], [[0.05, 0.9]])
  rolls = notes.rolls(reference, 120)
  probs = {"onset": rolls["onset"] * np.float16(0.35),
           "frame": rolls["frame"] * np.float16(0.25), "velocity": rolls["velocity"],
           "pedal": rolls["pedal"] * np.float16(0.8)}
  performance = shard_transcription.Performance("k", "g", probs, reference, 1.2)
  chosen = transcription_report.choose([performance])
  assert chosen.onset <= 0.3 and chosen.frame <= 0.2 and chosen.pedal <= 0.8
  assert transcription_report.mean_scores([performance], chosen)["onset_offset/f1"] == 1.0
  assert transcription_report.mean_scores([performance], shard_transcription.Thresholds()
                                          )["onset/f1"] == 0.0
  assert chosen.min_pedal_s == 0.0  # nothing to drop: the neutral value wins the tie
  assert chosen.velocity_at == "onset"  # every frame reads the same velocity: a tie
  # Two 30 ms flickers of the pedal after the true press: each would count as a press until
  # the shortest press kept is longer than them.
  flicker = dict(probs, pedal=probs["pedal"].copy())
  flicker["pedal"][[100, 101, 102, 110, 111, 112]] = 0.9
  flickering = shard_transcription.Performance("k", "g", flicker, reference, 1.2)
  assert len(notes.from_rolls(flicker, pedal_threshold=0.5).pedal) == 3
  assert len(notes.from_rolls(flicker, pedal_threshold=0.5, min_pedal_s=0.05).pedal) == 1
  chosen = transcription_report.choose([flickering])
  assert chosen.min_pedal_s >= 0.05
  assert transcription_report.mean_scores([flickering], chosen)["pedal/f1"] == 1.0
  # Velocities that only the later frames of each onset run get right: read there.
  played = notes.Notes([[0.1 + 0.2 * i, 0.15 + 0.2 * i, 60 + i, v]
                        for i, v in enumerate((30, 60, 90, 120))], np.zeros((0, 2)))
  late = {k: np.zeros((120, 88), np.float32) for k in ("onset", "frame", "velocity")}
  late["pedal"] = np.zeros(120, np.float32)
  for i, v in enumerate((30, 60, 90, 120)):
    first = 10 + 20 * i
    key = 60 + i - notes.PIANO_LOW
    late["onset"][first:first + 3, key] = 0.9
    late["frame"][first:first + 5, key] = 0.9
    late["velocity"][first:first + 3, key] = (0.3, v / 127, v / 127)
  late_notes = shard_transcription.Performance("k", "g", late, played, 1.2)
  chosen = transcription_report.choose([late_notes])
  assert chosen.velocity_at == "max"
  assert transcription_report.mean_scores([late_notes], chosen)["onset_velocity/f1"] == 1.0
  assert transcription_report.mean_scores(
      [late_notes], dataclasses.replace(chosen, velocity_at="onset"))["onset_velocity/f1"] < 0.5
  tune, report = transcription_report.halves(["a", "a", "b", "c", "d", "e"], seed=0)
  assert tune | report == set("abcde") and not tune & report and len(tune) == 2
  assert transcription_report.halves(list("abcde"), 0) == (tune, report)
  with pytest.raises(ValueError, match="two held-out compositions"):
    transcription_report.halves(["a", "a"], 0)


def _report(first_step, steps, soundfont, timbres, compositions=("a",)):
  """A transcription.json of `steps` (pre-training steps) scored on `soundfont`."""
  scored = [{"step": step, "run": "r", "run_step": step - first_step,
             "report": {"onset/f1": step / 1000, "onset_offset/f1": step / 2000},
             "timbres": {name: {"onset/f1": step / 1500, "heard_in_training": heard}
                         for name, heard in timbres.items()}} for step in steps]
  return {"checkpoint": "r", "data": {"soundfont": soundfont, "compositions": {
              "tune": ["t"], "report": list(compositions)}, "seed": 0,
              "max_seconds_per_performance": 60.0, "split": "validation",
              "dataset": "maestro", "performances": {"tune": 1, "report": 1}},
          "machine": "m", "objective": {}, "batch_size": 16, "steps": scored,
          "final": {"step": steps[-1], **scored[-1]["report"]}}


def test_two_reports_of_one_lineage_merge_into_one(tmp_path):
  """A run continued from a release, scored on a fresh machine, joins the report of the
  release's own pre-training: one curve per SoundFont across both, even where the two
  tuned on different sets."""
  from eval import transcription_report
  earlier = _report(0, [500, 1000], "A+B", {"A": True, "C": False})
  earlier["lineage"] = [{"run": "first", "first_step": 0, "soundfonts": {"A": "1"}}]
  later = _report(1000, [1500, 2000], "A", {"C": False})
  later["lineage"] = [{"run": "release", "first_step": 0, "soundfonts": {"A": "1"}},
                      {"run": "continued", "first_step": 1000, "soundfonts": {"A": "1"}}]
  merged = transcription_report.merge(earlier, later)
  assert [s["step"] for s in merged["steps"]] == [500, 1000, 1500, 2000]
  assert [s["scored_on"] for s in merged["steps"]] == ["A+B", "A+B", "A", "A"]
  assert [run["run"] for run in merged["lineage"]] == ["first", "continued"]
  assert merged["final"] == later["final"]
  by_font = [transcription_report.onset_by_soundfont(s, s["scored_on"])
             for s in merged["steps"]]
  assert [f["A"][0] for f in by_font] == [500 / 1500, 1000 / 1500, 1.5, 2.0]
  assert [f["C"] for f in by_font] == [(s / 1500, False) for s in (500, 1000, 1500, 2000)]
  # Not one lineage, or other held-out compositions: refused.
  with pytest.raises(ValueError, match="not one lineage"):
    transcription_report.merge(_report(0, [500], "A", {}) | {"lineage": []}, later)
  other = _report(0, [500, 1000], "A", {}, compositions=("b",))
  with pytest.raises(ValueError, match="data.compositions"):
    transcription_report.merge(other | {"lineage": []}, later)
  # The command writes the merged report and its figure.
  for name, report in (("earlier.json", earlier), ("later.json", later)):
    (tmp_path / name).write_text(json.dumps(report))
  out = tmp_path / "out"
  proc = subprocess.run([sys.executable, "-m", "eval.transcription_report",
                         f"--merge={tmp_path / 'earlier.json'},{tmp_path / 'later.json'}",
                         f"--output_dir={out}"], cwd=REPO, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  written = json.loads((out / "transcription.json").read_text())
  assert written["steps"] == merged["steps"] and (out / "transcription_f1.png").stat().st_size
  proc = subprocess.run([sys.executable, "-m", "eval.transcription_report",
                         f"--merge={tmp_path / 'earlier.json'}", f"--output_dir={out}"],
                        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode != 0 and "--merge takes EARLIER.json,LATER.json" in proc.stderr


def test_notes_archive_round_trip_and_damage(tmp_path):
  notes = notes_lib
  performances = {"b": notes.Notes([[0.1, 0.5, 60, 80]], [[0.0, 1.0]]),
                  "a": notes.Notes(np.zeros((0, 4)), np.zeros((0, 2)))}
  path = tmp_path / "n.npz"
  notes.save_archive(path, performances, {"a": 1.5, "b": 2.0}, {"step": 3})
  loaded, durations, about = notes.load_archive(path)
  assert list(loaded) == ["a", "b"] and durations == {"a": 1.5, "b": 2.0} and about == {"step": 3}
  np.testing.assert_array_equal(loaded["b"].notes, performances["b"].notes)
  np.testing.assert_array_equal(loaded["b"].pedal, performances["b"].pedal)
  assert loaded["a"].notes.shape == (0, 4)
  with pytest.raises(notes.NotesError, match="rerun eval.shard_transcription"):
    notes.load_posteriors(path)  # written without the probability statistics
  notes.save_archive(path, performances, {"a": 1.5, "b": 2.0}, {"step": 3},
                     (("x", "y"), {"a": [1.0, 2.0], "b": [3.0, 4.0]}))
  names, vectors = notes.load_posteriors(path)
  assert names == ("x", "y") and list(vectors) == ["a", "b"]
  np.testing.assert_array_equal(vectors["b"], [3.0, 4.0])
  assert list(notes.load_archive(path)[0]) == ["a", "b"]  # the notes read as before
  path.write_bytes(path.read_bytes()[:100])
  with pytest.raises(notes.NotesError, match="not a notes archive"):
    notes.load_archive(path)


def test_posterior_statistics_known_answers():
  """One key sounding for the first second of two (onsets at 0 and 0.5 s, velocity 0.5),
  the pedal down for its first half second, at 10 ms frames."""
  from pipelines.audio import posterior_statistics as ps
  frames = 200
  rolls = {k: np.zeros((frames, 88), np.float16) for k in ("onset", "frame", "velocity")}
  rolls["frame"][:100, 60] = 1
  rolls["onset"][[0, 50], 60] = 1
  rolls["velocity"][[0, 50], 60] = 0.5
  rolls["pedal"] = np.zeros(frames, np.float16)
  rolls["pedal"][:50] = 1
  got = dict(zip(ps.names(), ps.compute(rolls, 0.01)))
  assert len(got) == len(ps.names()) == 24
  expected = {
      "polyphony_mean": 0.5, "polyphony_std": 0.5, "polyphony_p10": 0.0, "polyphony_p50": 0.5,
      "polyphony_p90": 1.0, "sounding_fraction": 0.5, "sounding_polyphony_mean": 1.0,
      "pedal_mean": 0.25, "pedal_std": np.sqrt(0.25 * 0.75), "pedal_change_rate": 100 / 199,
      "pedal_fall_rate": 100 / 199, "pedal_down_fraction": 0.25, "pedal_sounding_mean": 0.5,
      "pedal_polyphony_corr": np.corrcoef(rolls["pedal"].astype(float),
                                          rolls["frame"].sum(1, dtype=float))[0, 1],
      "onset_rate": 1.0, "onset_mass_std": np.sqrt(0.01 * 0.99),
      "onset_bins_cv": 3.0, "velocity_mean": 0.5, "velocity_std": 0.0,
      "frames_per_onset": 50.0, "log_frames_per_onset": np.log(51.0),
      "polyphony_change_rate": 100 / 199, "low_register_polyphony": 0.0,
      "high_register_polyphony": 0.5}
  assert set(expected) == set(got)
  for name, value in expected.items():
    assert got[name] == pytest.approx(value, abs=1e-9), name
  # Nothing playing: every statistic is still finite (0 where there is nothing to measure).
  silent = {k: np.zeros_like(v) for k, v in rolls.items()}
  assert np.all(ps.compute(silent, 0.01) == 0)
  with pytest.raises(ValueError, match="no frames"):
    ps.compute({k: v[:0] for k, v in rolls.items()}, 0.01)
  with pytest.raises(ValueError, match="different shapes"):
    ps.compute({**rolls, "pedal": rolls["pedal"][:-1]}, 0.01)


@pytest.mark.slow  # ~60-70 s on 2 cores: in make test-slow (and CI) to keep make test < 15 min
def test_transcription_report_then_the_notes_ridge(notes_pretrained, train_shards, job_with_audio,
                                                   jax_env, tmp_path):
  """The report scores every kept checkpoint and stores its thresholds in the run; the
  shards CLI then transcribes a PercePiano job with them, and the ridge fits on the
  transcribed notes (backbone notes)."""
  def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                          env=jax_env, capture_output=True, text=True, timeout=600, check=False)

  out = tmp_path / "report"
  # The tiny corpus holds few validation compositions: the training split stands in.
  proc = run("eval.transcription_report", f"--checkpoint={notes_pretrained}",
             f"--data_dir={train_shards['maestro']}", f"--output_dir={out}", "--split=train",
             "--max_seconds=5")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / "transcription.json").read_text())
  assert [s["step"] for s in report["steps"]] == [3] and report["final"]["step"] == 3
  from eval import transcription_report, transcription_scores
  step = report["steps"][0]
  chosen = dict(step["thresholds"])
  assert chosen.pop("min_pedal_s") in transcription_report.MIN_PEDAL_GRID
  assert chosen.pop("velocity_at") in notes_lib.VELOCITY_AT
  assert set(chosen) == {"onset", "frame", "pedal"}
  assert set(chosen.values()) <= set(transcription_report.GRID)
  assert all(0 <= step[half][f"{m}/f1"] <= 1 for half in ("tune", "report")
             for m in transcription_scores.F1_METRICS)
  assert all(step[half]["velocity/r"] is None or -1 <= step[half]["velocity/r"] <= 1
             for half in ("tune", "report"))
  assert report["data"]["performances"]["tune"] > 0 and report["data"]["performances"]["report"] > 0
  assert (out / "transcription_f1.png").stat().st_size > 0
  saved = json.loads((notes_pretrained / "transcription_thresholds.json").read_text())
  assert saved["3"]["thresholds"] == step["thresholds"]
  missing = run("eval.transcription_report", f"--checkpoint={notes_pretrained}",
                f"--data_dir={train_shards['maestro']}", f"--output_dir={out}", "--steps=7",
                "--split=train")
  assert missing.returncode != 0 and "no checkpoints [7]" in missing.stderr
  assert "Traceback" not in missing.stderr

  archive = tmp_path / "notes.npz"
  proc = run("eval.shard_transcription", f"--checkpoint={notes_pretrained}",
             f"--data_dir={job_with_audio}", f"--output={archive}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "thresholds from validation" in proc.stdout
  transcribed, durations, about = notes_lib.load_archive(archive)
  assert about["step"] == 3 and about["thresholds"] == step["thresholds"]
  from pipelines.shards import layout, metadata, records
  meta = metadata.read(job_with_audio)
  keys = {records.decode(r)[0]["key"] for f in meta.shard_files("audio")
          for r in layout.read_array_record(str(job_with_audio / f.file))}
  assert set(transcribed) == keys and all(d > 0 for d in durations.values())
  from pipelines.audio import posterior_statistics
  names, posteriors = notes_lib.load_posteriors(archive)
  assert names == posterior_statistics.names() and set(posteriors) == keys
  assert all(np.all(np.isfinite(v)) and v[0] > 0 for v in posteriors.values())  # polyphony

  ridge = tmp_path / "ridge"
  proc = run("train.ridge", f"--data_dir={job_with_audio}", f"--workdir={ridge}",
             "--features=notes", f"--transcribed_notes={archive}", "--test", "--inner_folds=2",
             "--workers=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  run_config = json.loads((ridge / "test" / rundir.CONFIG).read_text())
  assert run_config["model"]["backbone"] == "notes" and run_config["ridge"]["fit_on"] == "midi"
  from train import notes_from_midi, predictions
  assert json.loads((ridge / "test" / rundir.RESULT).read_text())["blend"] in notes_from_midi.BLENDS
  # The ablation: the ridge fitted on the transcription's own statistics.
  direct = tmp_path / "ridge_direct"
  proc = run("train.ridge", f"--data_dir={job_with_audio}", f"--workdir={direct}",
             "--features=notes", f"--transcribed_notes={archive}", "--test", "--inner_folds=2",
             "--workers=1", "--notes_fit=transcription")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads((direct / "test" / rundir.CONFIG).read_text())["ridge"]["fit_on"] == (
      "transcription")
  assert not np.allclose(predictions.load_selected(direct / "test").predictions,
                         predictions.load_selected(ridge / "test").predictions)
  # An archive of other performances is refused with the key it lacks.
  notes_lib.save_archive(tmp_path / "other.npz", {"x": transcribed[min(transcribed)]}, {"x": 1.0},
                           {})
  proc = run("train.ridge", f"--data_dir={job_with_audio}", f"--workdir={tmp_path / 'r2'}",
             "--features=notes", f"--transcribed_notes={tmp_path / 'other.npz'}", "--test")
  assert proc.returncode != 0 and "has no row of performance" in proc.stderr
  proc = run("train.ridge", f"--data_dir={job_with_audio}", f"--workdir={tmp_path / 'r3'}",
             "--features=notes", "--test")
  assert proc.returncode != 0 and "--transcribed_notes" in proc.stderr


@pytest.mark.slow  # ~45-90 s on 2 cores: in make test-slow (and CI) to keep make test < 15 min
def test_the_report_scores_other_timbres_along_a_continued_runs_lineage(
    notes_pretrained, train_shards, jax_env, tmp_path):
  """A run continued on a second SoundFont is scored with the run it continues (steps counted
  from the first run's start); the same compositions rendered with other SoundFonts
  (`maestro_job --soundfont --only_splits --variants=0`) are scored with the thresholds tuned
  on --data_dir and marked heard in training or not; a job of --data_dir's own SoundFonts,
  or one lacking the report half's compositions, is refused."""
  from eval import loading, transcription_report, transcription_scores
  from pipelines.audio import render
  from pipelines.shards import metadata

  def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                          env=jax_env, capture_output=True, text=True, timeout=600, check=False)

  # Other SoundFont files (TimGM6mb plus trailing bytes: other checksums, the same sound).
  fonts = {}
  for name, tail in (("SecondFont", b"\0"), ("UnheardFont", b"\0\0")):
    fonts[name] = tmp_path / f"{name}.sf2"
    fonts[name].write_bytes(render.default_soundfont().read_bytes() + tail)
  corpus = train_shards["maestro"].parent / "corpus" / "maestro-v3.0.0"
  job = ["pipelines.beam.maestro_job", f"--maestro_dir={corpus}", "--from_midi",
         "--window_s=2.56", "--hop_s=1.28", "--nowrite_audio", "--variants=0",
         "--direct_running_mode=in_memory", "--direct_num_workers=1"]
  second, unheard = tmp_path / "second", tmp_path / "unheard"
  # The second timbre's job is also the continued run's training data (both splits).
  proc = run(*job, f"--output_dir={second}", f"--soundfont={fonts['SecondFont']}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = run(*job, f"--output_dir={unheard}", f"--soundfont={fonts['UnheardFont']}",
             "--only_splits=train")
  assert proc.returncode == 0, proc.stderr[-3000:]
  meta = metadata.read(unheard)
  assert meta.raw["splits"]["only_splits"] == ["train"]
  assert meta.raw["soundfont_sha256"] == render.soundfont_sha256(fonts["UnheardFont"])
  bad = run(*job, f"--output_dir={tmp_path / 'bad'}", "--only_splits=nope")
  assert bad.returncode != 0 and "only_splits names splits the tree does not have: ['nope']" \
      in bad.stderr and "Traceback" not in bad.stderr
  missing = run(*job, f"--output_dir={tmp_path / 'bad'}", f"--soundfont={tmp_path / 'no.sf2'}")
  assert missing.returncode != 0 and "no.sf2" in missing.stderr
  assert "Traceback" not in missing.stderr and not (tmp_path / "bad").exists()

  continued = tmp_path / "continued"
  proc = run("train.main", "--config=train/configs/pretrain.py:tiny", f"--workdir={continued}",
             f"--config.data_dir={second}", "--config.model.encoder.num_frames=256",
             "--config.model.encoder.width=64", "--config.model.encoder.depth=2",
             "--config.model.encoder.heads=2", "--config.model.encoder.mlp_dim=128",
             "--config.model.num_masked=48", "--config.model.transcription_weight=1.0",
             "--config.model.transcription_hidden=64", "--config.num_steps=2",
             "--config.batch_size=8", "--config.microbatch_size=8", "--config.eval_batch_size=8",
             "--config.eval_every_steps=0", "--config.checkpoint.every_steps=1",
             f"--config.init.checkpoint={notes_pretrained}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  first_steps = loading.checkpoint_steps(notes_pretrained)
  segments = transcription_report.lineage(continued)
  assert [s.workdir for s in segments] == [notes_pretrained, continued]
  assert [s.offset for s in segments] == [0, 3] and segments[1].steps == (1, 2)
  assert segments[0].steps == tuple(first_steps)

  out = tmp_path / "report"
  args = ["eval.transcription_report", f"--checkpoint={continued}",
          f"--data_dir={train_shards['maestro']}", f"--output_dir={out}", "--split=train",
          "--max_seconds=5"]
  proc = run(*args, f"--timbres={second},{unheard}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((out / "transcription.json").read_text())
  assert [(s["run"], s["run_step"], s["step"]) for s in report["steps"]] == [
      *((str(notes_pretrained), k, k) for k in first_steps),
      (str(continued), 1, 4), (str(continued), 2, 5)]
  assert report["final"]["step"] == 5 and report["final"]["run_step"] == 2
  assert report["data"]["training_soundfonts"] == {
      metadata.RECORDED: None,  # the fixture's job read WAV files
      "SecondFont": render.soundfont_sha256(fonts["SecondFont"])}
  timbres = report["final"]["timbres"]
  assert {k: v["heard_in_training"] for k, v in timbres.items()} == {
      "SecondFont": True, "UnheardFont": False}
  metrics = set(report["final"]) - {"step", "run_step", "timbres"}
  assert set(timbres["UnheardFont"]) == metrics | {"heard_in_training"}
  assert all(0 <= timbres["UnheardFont"][f"{m}/f1"] <= 1 for m in transcription_scores.F1_METRICS)
  assert "on UnheardFont (never heard)" in proc.stdout and "on SecondFont (heard)" in proc.stdout
  # Each run keeps the thresholds chosen for its own steps.
  assert loading.saved_thresholds(continued, 2) == report["steps"][-1]["thresholds"]
  assert loading.saved_thresholds(notes_pretrained, first_steps[-1]) is not None
  # A release of the continued run carries its lineage's step count and every timbre's scores.
  from eval import export_release
  export_release.export_transcriber(str(continued), 2, tmp_path / "release", "test",
                                    str(out / "transcription.json"))
  about = json.loads((tmp_path / "release" / "release.json").read_text())
  assert about["scores"]["pretraining_steps"] == 5
  assert about["scores"]["held_out"] == report["steps"][-1]["report"]
  assert about["scores"]["timbres"] == timbres
  # A run continued from that release counts from its 5 steps and hears both runs' SoundFonts.
  released = transcription_report.lineage(tmp_path / "release")
  assert [(s.workdir, s.steps, s.offset) for s in released] == [(tmp_path / "release", (5,), 0)]
  assert released[0].soundfonts == report["data"]["training_soundfonts"]
  same = run(*args, f"--timbres={train_shards['maestro']}")
  assert same.returncode != 0 and "its report half is already scored" in same.stderr
  # A report half naming a composition the job does not hold.
  windows = transcription_report._held_out_windows(str(unheard), "train", 5.0)
  groups = {ws[0].group for ws in windows.values()}
  with pytest.raises(ValueError, match="lacks held-out compositions"):
    transcription_report.other_timbres([meta], metadata.read(train_shards["maestro"]),
                                       "train", 5.0, groups | {"a composition it lacks"})


@pytest.mark.slow  # ~55 s on 2 cores: in make test-slow (and CI) to keep make test < 15 min
def test_a_released_transcriber_transcribes_and_continues_pre_training(notes_pretrained,
                                                                       train_shards, jax_env,
                                                                       tmp_path):
  """eval.export_release -> a float16 safetensors release that eval.transcribe reads with
  its own thresholds, and that a later pre-training continues from."""
  from eval import loading
  from model import release

  def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                          env=jax_env, capture_output=True, text=True, timeout=600, check=False)

  out = tmp_path / "release"
  refused = run("eval.export_release", f"--checkpoint={notes_pretrained}", f"--output_dir={out}",
                "--command=test", "--step=3")
  if not (notes_pretrained / loading.THRESHOLDS_FILE).is_file():
    assert refused.returncode != 0 and "eval.transcription_report" in refused.stderr
  chosen = {"onset": 0.3, "frame": 0.4, "pedal": 0.6}
  loading.save_thresholds(notes_pretrained, 3, chosen, "test")
  midi = tmp_path / "in.mid"
  from pipelines.audio import render
  source = pretty_midi.PrettyMIDI()
  piano = pretty_midi.Instrument(0)
  piano.notes += [pretty_midi.Note(80, 60 + i, 0.5 + 0.3 * i, 0.8 + 0.3 * i) for i in range(4)]
  source.instruments.append(piano)
  midi.write_bytes(render.midi_to_bytes(source))
  proc = run("eval.export_release", f"--checkpoint={notes_pretrained}", f"--output_dir={out}",
             "--command=make test", f"--check_midi={midi}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  params, about = release.read(out)
  assert about["kind"] == "transcriber" and about["step"] == 3 and about["thresholds"] == chosen
  assert about["command"] == "make test" and set(params) == {"encoder", "transcription"}
  assert (out / about["check"]["midi"]).read_bytes() == midi.read_bytes()
  assert 0 <= about["check"]["onset/f1"] <= 1 and about["check"]["seconds"] > 1
  run_ = loading.load_transcriber(out)
  assert run_.thresholds == chosen and run_.step == 3
  proc = run("eval.transcribe", f"--checkpoint={out}", midi, f"--output_midi={tmp_path / 'o.mid'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "thresholds from validation" in proc.stdout

  workdir = tmp_path / "continued"
  args = ["--config=train/configs/pretrain.py:tiny", f"--workdir={workdir}",
          f"--config.data_dir={train_shards['maestro']}", "--config.model.encoder.num_frames=256",
          "--config.model.encoder.width=64", "--config.model.encoder.depth=2",
          "--config.model.encoder.heads=2", "--config.model.encoder.mlp_dim=128",
          "--config.model.num_masked=48", "--config.model.transcription_weight=1.0",
          "--config.model.transcription_hidden=64", "--config.num_steps=1",
          "--config.batch_size=8", "--config.microbatch_size=8", "--config.eval_batch_size=8",
          "--config.eval_every_steps=0", f"--config.init.checkpoint={out}"]
  proc = run("train.main", *args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads((workdir / rundir.WARM_START).read_text())
  # The release holds the encoder and the head; SSAST's heads (this run has both
  # objectives) start fresh.
  assert report["step"] == 3 and report["initialised"]
  assert {p.split("/")[0] for p in report["initialised"]} <= {"discriminative", "generative",
                                                              "mask_embed"}
  assert {p.split("/")[0] for p in report["loaded"]} == {"encoder", "transcription"}
  # The report counts the continued run's steps after the release's.
  from eval import transcription_report
  segments = transcription_report.lineage(workdir)
  assert [(s.workdir, s.steps, s.offset) for s in segments] == [(out, (), 0), (workdir, (1,), 3)]
  # The release itself is scored as it ships, at its step; its thresholds stay as exported.
  shipped = (out / "release.json").read_bytes()
  proc = run("eval.transcription_report", f"--checkpoint={out}",
             f"--data_dir={train_shards['maestro']}", f"--output_dir={tmp_path / 'scored'}",
             "--split=train", "--max_seconds=5")
  assert proc.returncode == 0, proc.stderr[-3000:]
  scored = json.loads((tmp_path / "scored" / "transcription.json").read_text())
  assert [(s["run"], s["step"]) for s in scored["steps"]] == [(str(out.absolute()), 3)]
  assert 0 <= scored["final"]["onset/f1"] <= 1
  assert (out / "release.json").read_bytes() == shipped
  assert not (out / loading.THRESHOLDS_FILE).exists()
  proc = run("eval.transcription_report", f"--checkpoint={out}", "--steps=3",
             f"--data_dir={train_shards['maestro']}", f"--output_dir={tmp_path / 'scored'}")
  assert proc.returncode != 0 and "is a release" in proc.stderr and "Traceback" not in proc.stderr


def test_performances_share_batches_and_get_their_own_outputs(notes_pretrained, train_shards):
  """Short performances are batched together (filling_batches); each still gets exactly the
  transcription and the embedding it gets alone."""
  from eval import loading, shard_embeddings, shard_transcription
  sizes = dict(zip("abcde", (2, 1, 3, 5, 1)))
  chunks = list(shard_transcription.filling_batches({k: [0] * n for k, n in sizes.items()}, 3))
  assert [[k for k, _ in c] for c in chunks] == [["a", "b"], ["c"], ["d", "e"]]
  run = loading.load_transcriber(notes_pretrained)
  windows = tiled_windows.read_windows(str(train_shards["maestro"]), ["train"], max_seconds=5)
  assert len(windows) >= 3
  together = list(shard_transcription.transcribe(run, windows, batch_size=3))
  assert [p.key for p in together] == list(windows)
  for p in together:
    alone = next(shard_transcription.transcribe(run, {p.key: windows[p.key]}, batch_size=3))
    for k, v in alone.probabilities.items():
      np.testing.assert_allclose(p.probabilities[k].astype(np.float32), v.astype(np.float32),
                                 atol=2e-3)
  keys, rows = shard_embeddings.embed(run, windows, batch_size=3)
  assert keys == list(windows)
  for key, row in zip(keys, rows):
    np.testing.assert_allclose(row, shard_embeddings.embed(run, {key: windows[key]},
                                                           batch_size=3)[1][0], atol=1e-4)


@pytest.mark.slow  # ~45-90 s on 2 cores: in make test-slow (and CI) to keep make test < 15 min
def test_probes_embed_with_the_pretrained_and_a_random_encoder(notes_pretrained, job_with_audio,
                                                               jax_env, tmp_path):
  """eval.shard_embeddings -> one row per performance (mean and std of its windows' pooled
  embeddings), from the run's encoder or a random one of its shape; the ridge fits them."""
  from train import statistics_table

  def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                          env=jax_env, capture_output=True, text=True, timeout=600, check=False)

  tables = {}
  windows_file = tmp_path / "windows.npz"
  for name, extra in (("trained", [f"--windows_output={windows_file}"]),
                      ("random", ["--random_init"])):
    out = tmp_path / f"{name}.npz"
    proc = run("eval.shard_embeddings", f"--checkpoint={notes_pretrained}",
               f"--data_dir={job_with_audio}", f"--output={out}", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tables[name] = statistics_table.load_vectors(out)
  rows, about = tables["trained"]
  width = 2 * 64  # mean and std of the 64-wide encoder's pooled output
  assert about["step"] == 3 and all(v.shape == (width,) for v in rows.values())
  assert all(np.all(v[64:] >= 0) for v in rows.values())  # the std half
  # Every window kept one by one: their mean and std are the performance's row.
  per_window, windows_about = statistics_table.load_windows(windows_file)
  assert set(per_window) == set(rows) and windows_about["step"] == 3
  for key, w in per_window.items():
    assert w.x.shape[1] == 64 and np.all(np.diff(w.starts_s) > 0)
    assert np.all(w.ends_s > w.starts_s)
    np.testing.assert_allclose(np.concatenate([w.x.mean(0), w.x.std(0)]), rows[key], rtol=1e-5,
                               atol=1e-5)
  random_rows, random_about = tables["random"]
  assert random_about["random_init"] and set(random_rows) == set(rows)
  key = min(rows)
  assert not np.allclose(rows[key], random_rows[key])

  ridge = tmp_path / "probe"
  proc = run("train.ridge", f"--data_dir={job_with_audio}", f"--workdir={ridge}",
             "--features=embeddings", f"--embeddings={tmp_path / 'trained.npz'}", "--test",
             "--inner_folds=2", "--workers=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  config = json.loads((ridge / "test" / rundir.CONFIG).read_text())
  assert config["model"]["backbone"] == "probe"
  assert config["ridge"]["features_file"] == str(tmp_path / "trained.npz")
  wrong = run("train.ridge", f"--data_dir={job_with_audio}", f"--workdir={tmp_path / 'w'}",
              "--features=notes", f"--embeddings={tmp_path / 'trained.npz'}", "--test")
  assert wrong.returncode != 0 and "--embeddings is for --features=embeddings" in wrong.stderr

  # Fusion: a transcription's note statistics, then the embeddings. With the stored MIDI as
  # the "transcription", its rows are exactly the oracle's statistics and the probe's vectors.
  from pipelines.shards import layout, metadata, records
  meta = metadata.read(job_with_audio)
  stored, durations = {}, {}
  for f in meta.shard_files("audio"):
    for data in layout.read_array_record(str(job_with_audio / f.file)):
      header, arrays = records.decode(data)
      stored[header["key"]] = notes_lib.Notes(arrays["notes"], arrays["pedal"])
      durations[header["key"]] = header["num_samples"] / header["sample_rate"]
  archive = tmp_path / "midi_notes.npz"
  notes_lib.save_archive(archive, stored, durations, {})
  fused = statistics_table.load(job_with_audio, tmp_path / "fusion.npz", features="fusion",
                                features_file=[archive, tmp_path / "trained.npz"])
  oracle = statistics_table.load(job_with_audio, tmp_path / "oracle.npz", features="midi_notes")
  assert fused.keys == oracle.keys
  np.testing.assert_allclose(fused.x, np.concatenate(
      [oracle.x, np.stack([rows[k] for k in fused.keys])], axis=1))
  proc = run("train.ridge", f"--data_dir={job_with_audio}", f"--workdir={tmp_path / 'fusion'}",
             "--features=fusion", f"--transcribed_notes={archive}",
             f"--embeddings={tmp_path / 'trained.npz'}", "--test", "--inner_folds=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  config = json.loads((tmp_path / "fusion" / "test" / rundir.CONFIG).read_text())
  assert config["model"]["backbone"] == "fusion"
  assert config["ridge"]["features_file"] == [str(archive), str(tmp_path / "trained.npz")]
  from train import ridge_fit
  result = json.loads((tmp_path / "fusion" / "test" / rundir.RESULT).read_text())
  assert result["block_weight"] in ridge_fit.BLOCK_WEIGHTS  # the embeddings' weight, chosen
  half = run("train.ridge", f"--data_dir={job_with_audio}", f"--workdir={tmp_path / 'f2'}",
             "--features=fusion", f"--embeddings={tmp_path / 'trained.npz'}", "--test")
  assert half.returncode != 0 and "--transcribed_notes and --embeddings" in half.stderr

  # The clip head pools those windows (train.clip_head), through crossval like the ridge.
  proc = run("train.clip_head", f"--data_dir={job_with_audio}", f"--windows={windows_file}",
             f"--workdir={tmp_path / 'clip'}", "--pooling=mean", "--test")
  assert proc.returncode == 0, proc.stderr[-3000:]
  config = json.loads((tmp_path / "clip" / "test" / rundir.CONFIG).read_text())
  assert config["model"]["backbone"] == "ast+window_mean"
  result = json.loads((tmp_path / "clip" / "test" / rundir.RESULT).read_text())
  assert 1 <= result["epochs"] <= config["clip_head"]["max_epochs"]
  assert "test: mean Pearson" in proc.stdout
  missing = run("train.clip_head", f"--data_dir={job_with_audio}",
                f"--windows={tmp_path / 'absent.npz'}", f"--workdir={tmp_path / 'c2'}", "--test")
  assert missing.returncode != 0 and "does not exist" in missing.stderr
  assert "Traceback" not in missing.stderr
  one = {min(per_window): per_window[min(per_window)]}
  statistics_table.save_windows(tmp_path / "one.npz", one, {})
  other = run("train.clip_head", f"--data_dir={job_with_audio}",
              f"--windows={tmp_path / 'one.npz'}", f"--workdir={tmp_path / 'c3'}", "--test")
  assert other.returncode != 0 and "have no window embeddings" in other.stderr

  # ast_stats: the same two files, plus the archive's probability statistics and the audio
  # clip statistics. An archive written without the former is refused with what to rerun.
  with pytest.raises(statistics_table.StatisticsError, match="rerun eval.shard_transcription"):
    statistics_table.load(job_with_audio, tmp_path / "ast.npz", features="ast_stats",
                          features_file=[archive, tmp_path / "trained.npz"])
  posteriors = {k: np.arange(24.0) * (i + 1) for i, k in enumerate(sorted(stored))}
  from pipelines.audio import posterior_statistics
  notes_lib.save_archive(archive, stored, durations, {},
                         (posterior_statistics.names(), posteriors))
  everything = statistics_table.load(job_with_audio, tmp_path / "ast.npz", features="ast_stats",
                                     features_file=[archive, tmp_path / "trained.npz"])
  audio = statistics_table.load(job_with_audio, tmp_path / "audio.npz", workers=1)
  assert everything.keys == oracle.keys == audio.keys
  np.testing.assert_allclose(everything.x, np.concatenate(
      [oracle.x, np.stack([posteriors[k] for k in everything.keys]),
       np.stack([rows[k] for k in everything.keys]), audio.x], axis=1))
  read = len(statistics_table.names("notes")) + len(posterior_statistics.names()) + width
  assert len(statistics_table.names("ast_stats", read)) == everything.x.shape[1]
  proc = run("train.ridge", f"--data_dir={job_with_audio}", f"--workdir={tmp_path / 'ast'}",
             "--features=ast_stats", f"--transcribed_notes={archive}",
             f"--embeddings={tmp_path / 'trained.npz'}", "--test", "--inner_folds=2",
             "--workers=1", f"--statistics_cache={tmp_path / 'ast.npz'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  config = json.loads((tmp_path / "ast" / "test" / rundir.CONFIG).read_text())
  assert config["model"]["backbone"] == "ast+stats"


def test_the_machine_is_described_by_its_cpu_and_cores():
  import os

  from eval import machine
  described = machine.describe()
  assert described.endswith(f"{os.cpu_count()} cores") and len(described) > len("1 cores")


def test_positive_weight_scales_the_true_onsets_and_offsets_only():
  rolls = _rolls()
  logits = {k: jnp.zeros_like(rolls[k], jnp.float32) for k in ("onset", "offset", "frame",
                                                               "velocity")}
  logits["pedal"] = jnp.zeros_like(rolls["pedal"], jnp.float32)
  _, plain = transcription.loss(logits, rolls, None)
  _, weighted = transcription.loss(logits, rolls, None, positive_weight=5.0)
  for name in ("onset", "offset"):
    positives = float(np.asarray(rolls[name]).sum())
    count = float(np.asarray(rolls["has_notes"]).sum()) * rolls[name].shape[1]
    # At logit 0 every element costs log 2: 4 more per positive with weight 5.
    assert float(weighted[f"{name}_bce"] - plain[f"{name}_bce"]) == pytest.approx(
        4 * np.log(2) * positives / count, rel=1e-5)
  assert float(weighted["frame_bce"]) == pytest.approx(float(plain["frame_bce"]))
  # Summed over keys: all-zero logits cost 88 log 2 a frame.
  assert float(plain["frame_bce"]) == pytest.approx(88 * np.log(2), rel=1e-5)


def test_the_notes_model_ships_as_one_release_that_eval_predict_uses(notes_pretrained,
                                                                    job_with_audio, jax_env,
                                                                    tmp_path, monkeypatch):
  """eval.export_release --kind=notes_perception: the transcriber plus the notes model fitted
  as the benchmark's test run fits it (same predictions), refused when damaged or too large;
  eval.predict scores a recording with it and gets the ratings recorded beside the
  weights."""
  from eval import loading, notes_perception
  from model import release
  from train import predictions, statistics_table

  def run(module, *args):
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                          env=jax_env, capture_output=True, text=True, timeout=600, check=False)

  loading.save_thresholds(notes_pretrained, 3, {"onset": 0.3, "frame": 0.4, "pedal": 0.5,
                                                "min_pedal_s": 0.0}, "test")
  archive = tmp_path / "notes.npz"
  proc = run("eval.shard_transcription", f"--checkpoint={notes_pretrained}",
             f"--data_dir={job_with_audio}", f"--output={archive}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  ridge_run = tmp_path / "ridge"
  proc = run("train.ridge", f"--data_dir={job_with_audio}", f"--workdir={ridge_run}",
             "--features=notes", f"--transcribed_notes={archive}", "--test", "--folds=none",
             "--workers=1")
  assert proc.returncode == 0, proc.stderr[-3000:]
  midi = tmp_path / "in.mid"
  source = pretty_midi.PrettyMIDI()
  piano = pretty_midi.Instrument(0)
  piano.notes += [pretty_midi.Note(40 + 6 * i, 60 + i % 7, 0.5 + 0.25 * i, 0.9 + 0.25 * i)
                  for i in range(12)]
  source.instruments.append(piano)
  from pipelines.audio import render
  midi.write_bytes(render.midi_to_bytes(source))
  out = tmp_path / "perception"
  export = ["eval.export_release", "--kind=notes_perception", f"--checkpoint={notes_pretrained}",
            f"--data_dir={job_with_audio}", f"--transcribed_notes={archive}",
            f"--output_dir={out}", "--command=make test", "--step=3"]
  proc = run(*export, f"--check_midi={midi}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  _, about = release.read(out)
  assert about["kind"] == notes_perception.KIND and about["step"] == 3
  assert notes_perception.is_notes_perception(out) and not notes_perception.is_notes_perception(
      notes_pretrained)
  # The shipped notes model is the benchmark test run's: the same predictions of the test set.
  shipped = notes_perception.read_model(out, about)
  result = json.loads((ridge_run / "test" / rundir.RESULT).read_text())
  assert (about["perception"]["alpha"], about["perception"]["blend"]) == (result["alpha"],
                                                                          result["blend"])
  table = statistics_table.with_midi(job_with_audio, tmp_path / "t.npz", archive)
  expected = predictions.load_selected(ridge_run / "test")
  np.testing.assert_allclose(shipped.predict(table.x[table.rows(expected.keys)]),
                             expected.predictions, atol=1e-9)
  # A damaged notes model is refused, naming the file.
  damaged = tmp_path / "damaged"
  shutil.copytree(out, damaged)
  with open(damaged / notes_perception.PERCEPTION, "r+b") as f:
    f.seek(-8, 2)
    f.write(b"\0" * 8)
  from model import release as release_lib
  with pytest.raises(release_lib.ReleaseError, match="does not match the SHA-256"):
    notes_perception.NotesPerception.from_release(damaged)
  # A release over the size a repository takes is refused before anything is written.
  from eval import export_release
  monkeypatch.setattr(export_release, "MAX_MB", 0.01)
  with pytest.raises(ValueError, match="over the 0 MB a committed release may take"):
    export_release.export_notes_perception(str(notes_pretrained), 3, tmp_path / "big",
                                           "make test", str(job_with_audio), str(archive))
  assert not (tmp_path / "big").exists()
  assert about["scores"]["piece/test"]["performances"] == len(expected.keys)
  # eval.predict with the release: the recorded ratings of its check performance.
  scored = tmp_path / "p.json"
  proc = run("eval.predict", f"--checkpoint={out}", out / about["check"]["midi"],
             f"--output_json={scored}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  doc = json.loads(scored.read_text())
  assert doc["kind"] == notes_perception.KIND and doc["files"][0]["windows"] == 1
  np.testing.assert_allclose(list(doc["files"][0]["label_space"].values()),
                             about["check"]["label_space"], atol=1e-6)
  proc = run("eval.predict", f"--checkpoint={out}", "--hop_s=1", midi)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr
  assert "--hop_s: the notes model transcribes the whole recording once" in proc.stderr
  # A transcription made by another step (or with other thresholds) is refused.
  transcribed, durations, made_by = notes_lib.load_archive(archive)
  assert made_by["tiling"] == tiled_windows.TILING  # what the benchmark's check reads
  notes_lib.save_archive(tmp_path / "other.npz", transcribed, durations, {**made_by, "step": 2})
  proc = run(*[a if not a.startswith("--transcribed_notes") else
               f"--transcribed_notes={tmp_path / 'other.npz'}" for a in export])
  assert proc.returncode != 0 and "was transcribed by step 2" in proc.stderr
  assert "Traceback" not in proc.stderr
  # Velocities read otherwise than the run's thresholds say are other thresholds too.
  other = {**made_by, "thresholds": {**made_by["thresholds"], "velocity_at": "max"}}
  notes_lib.save_archive(tmp_path / "other.npz", transcribed, durations, other)
  proc = run(*[a if not a.startswith("--transcribed_notes") else
               f"--transcribed_notes={tmp_path / 'other.npz'}" for a in export])
  assert proc.returncode != 0 and "'velocity_at': 'max'" in proc.stderr
