"""eval.attention: rollout and map math, the model's sown layouts, PNGs, and the CLI on a real run.

The math is checked on hand-computed and property cases; the layouts against
tiny models with random parameters (the probabilities the real model sows);
the figures and the command line end to end on a fine-tuning run the real
trainer writes in a subprocess (slow: compiling the trainer takes ~70 s).
"""

from __future__ import annotations

import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from eval import attention, attention_figures, loading, recording
from model import ast, multitask
from model import attention as model_attention
from pipelines.audio import features, frontend, windowing

REPO = pathlib.Path(__file__).resolve().parent.parent

# Stride 10 on 32 x 64: a 2 x 5 grid of overlapping patches, 1 + 10 tokens.
ENC = ast.EncoderConfig(width=16, depth=2, heads=2, mlp_dim=32, num_mel_bins=32, num_frames=64,
                        num_tokens=1, pooling="patches", dropout=0.0)


def _random_attention(rng, layers, heads, n, mask=None):
  logits = rng.normal(size=(layers, heads, n, n)) * 2
  if mask is not None:
    logits = np.where(mask[None, None, None, :], logits, -np.inf)
  e = np.exp(logits - logits.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


# ---- rollout


@pytest.mark.parametrize("residual", [0.0, 0.5, 0.9])
@pytest.mark.parametrize("masked", [False, True])
def test_rollout_rows_sum_to_one(residual, masked):
  rng = np.random.default_rng(0)
  mask = np.array([True] * 5 + [False] * 2) if masked else None
  rolled = attention.rollout(_random_attention(rng, 3, 2, 7, mask), mask, residual)
  np.testing.assert_allclose(rolled.sum(axis=1), 1.0, atol=1e-12)
  assert (rolled >= 0).all()


def test_rollout_of_identity_attention_is_identity():
  eye = np.broadcast_to(np.eye(6), (4, 3, 6, 6))
  np.testing.assert_allclose(attention.rollout(eye), np.eye(6), atol=1e-12)


def test_rollout_two_layers_three_tokens_by_hand():
  # Layer 1, both heads: every token attends to token 1. With residual 0.5:
  #   Â1 = [[.5, .5, 0], [0, 1, 0], [0, .5, .5]]
  # Layer 2, head a -> token 0, head b -> token 2; head mean [.5, 0, .5] per row:
  #   Â2 = [[.75, 0, .25], [.25, .5, .25], [.25, 0, .75]]
  # R = Â2 Â1 (the later layer on the left):
  #   row 0 = .75 [.5, .5, 0] + .25 [0, .5, .5]             = [3/8, 1/2, 1/8]
  #   row 1 = .25 [.5, .5, 0] + .5 [0, 1, 0] + .25 [0, .5, .5] = [1/8, 3/4, 1/8]
  #   row 2 = .25 [.5, .5, 0] + .75 [0, .5, .5]             = [1/8, 1/2, 3/8]
  to = lambda j: np.tile(np.eye(3)[j], (3, 1))
  layers = np.stack([np.stack([to(1), to(1)]), np.stack([to(0), to(2)])])
  expected = np.array([[3, 4, 1], [1, 6, 1], [1, 4, 3]]) / 8
  np.testing.assert_allclose(attention.rollout(layers, residual=0.5), expected, atol=1e-12)


def test_rollout_renormalises_after_dropping_padded_keys():
  # One layer, one head, uniform over 3 tokens; token 2 is padding. Valid rows:
  # 0.5 * [1/3, 1/3, 0] + 0.5 * identity, renormalised by 5/6.
  uniform = np.full((1, 1, 3, 3), 1 / 3)
  rolled = attention.rollout(uniform, np.array([True, True, False]))
  np.testing.assert_allclose(rolled[0], [(1 / 6 + 1 / 2) / (5 / 6), (1 / 6) / (5 / 6), 0.0])


def test_padded_keys_get_zero_weight():
  rng = np.random.default_rng(1)
  mask = np.array([True, True, False, True, True, False, False])
  # Probabilities that (wrongly) put weight on padding: the rollout must not.
  rolled = attention.rollout(_random_attention(rng, 3, 2, 7), mask)
  assert (rolled[:, ~mask] == 0).all()
  np.testing.assert_allclose(rolled.sum(axis=1), 1.0, atol=1e-12)


def test_rollout_rejects_bad_shapes():
  with pytest.raises(attention.AttentionMapError, match="layers, heads, N, N"):
    attention.rollout(np.ones((2, 3, 4)))
  with pytest.raises(attention.AttentionMapError, match="masks every token"):
    attention.rollout(np.ones((1, 1, 2, 2)) / 2, np.zeros(2, bool))


# ---- patch relevance and the spectrogram grid


def test_patch_relevance_of_identity_rollout():
  cfg = ENC.replace(freq_stride=16, time_stride=16, num_frames=48)  # 2 x 3 grid
  valid_frames = 20  # patches start at frames 0, 16, 32: the last time column is padding
  mask = np.concatenate([[True], np.asarray(ast.patch_validity(np.array([valid_frames]), cfg))[0]])
  eye = np.eye(cfg.length)
  relevance = attention.patch_relevance(eye, cfg, mask)
  expected = np.zeros(cfg.grid)
  expected[:, :2] = 1 / 4  # 4 valid patches, each pooled once, each reading only itself
  np.testing.assert_allclose(relevance, expected)
  # Pooling the [CLS] token: with identity attention it reads no patch at all.
  assert (attention.patch_relevance(eye, cfg.replace(pooling="tokens"), mask) == 0).all()


def test_patch_relevance_follows_patchify_order():
  cfg = ENC.replace(freq_stride=16, time_stride=16, num_frames=48)  # 2 x 3 grid
  x = np.zeros((1, 32, 48), np.float32)
  x[0, 0:16, 16:32] = 1.0  # only patch (frequency 0, time 1) is non-zero
  flat = np.asarray(ast.patchify(x, 16, 16, 16)).reshape(-1, 256).any(axis=1)
  token = cfg.num_tokens + int(np.flatnonzero(flat)[0])
  rolled = np.zeros((cfg.length, cfg.length))
  rolled[:, token] = 1.0  # every pooled row reads exactly that token
  relevance = attention.patch_relevance(rolled, cfg)
  assert relevance[0, 1] == 1.0 and relevance.sum() == 1.0


def test_one_hot_patch_lands_on_its_block():
  plain = ENC.replace(freq_stride=16, time_stride=16)  # non-overlapping: 2 x 4
  grid = np.zeros(plain.grid)
  grid[1, 2] = 1.0
  spec = attention.to_spectrogram(grid, plain)
  block = np.zeros((32, 64), bool)
  block[16:32, 32:48] = True
  assert (spec[block] == 1.0).all() and (spec[~block] == 0).all()
  # Overlapping (stride 10): the patch still covers exactly its 16 x 16 pixels,
  # shared with its neighbours where they overlap.
  grid = np.zeros(ENC.grid)
  grid[1, 3] = 1.0
  spec = attention.to_spectrogram(grid, ENC)
  block = np.zeros((32, 64), bool)
  block[10:26, 30:46] = True
  assert (spec[block] > 0).all() and (spec[~block] == 0).all() and spec.max() == 1.0


def test_spectrogram_keeps_mass_and_constants():
  cfg = ast.EncoderConfig(num_mel_bins=128, num_frames=256)  # the real stride-10 layout
  counts = attention.coverage(cfg)
  assert counts[:126].min() >= 1 and (counts[126:] == 0).all()  # 12 patches reach bin 125
  grid = np.random.default_rng(2).random(cfg.grid)
  spec = attention.to_spectrogram(grid, cfg)
  # Each patch spreads its value over its 256 pixels, shared by coverage.
  np.testing.assert_allclose((spec * counts).sum(), 16 * 16 * grid.sum())
  constant = attention.to_spectrogram(np.full(cfg.grid, 0.25), cfg)
  np.testing.assert_allclose(constant[counts > 0], 0.25)
  assert (constant[counts == 0] == 0).all()
  with pytest.raises(attention.AttentionMapError, match="grid must be"):
    attention.to_spectrogram(np.ones((3, 3)), cfg)


def test_group_shares_sum_to_one_and_skip_padding():
  rng = np.random.default_rng(3)
  n, g = ENC.length, 3
  mask = np.concatenate([[True], np.asarray(ast.patch_validity(np.array([30]), ENC))[0]])
  key_mask = np.concatenate([mask, np.ones(g, bool)])
  logits = np.where(key_mask, rng.normal(size=(2, 4, g, n + g)), -np.inf)
  probs = np.exp(logits) / np.exp(logits).sum(axis=-1, keepdims=True)
  out = attention.group_attention(probs, ENC, ["timing", "dynamics", "expression"], mask)
  mean = probs.mean(axis=(0, 1))
  for j, (name, value) in enumerate(out.items()):
    s = value["shares"]
    assert s["patches"] + s["extra_tokens"] + s["self"] + s["other_groups"] == pytest.approx(1)
    assert value["grid"].sum() == pytest.approx(s["patches"])
    assert (value["grid"].reshape(-1)[~mask[1:]] == 0).all()
    assert s["to_groups"][name] == s["self"] == pytest.approx(mean[j, n + j])
    assert s["other_groups"] == pytest.approx(mean[j, n:].sum() - mean[j, n + j])


# ---- the model's sown probabilities (tiny models, random parameters)


def _model(**changes):
  """A tiny model with random parameters, drawn in numpy from the shapes `init` would make
  (jitting `init` compiles every initialiser: ~30 s on 2 cores)."""
  cfg = multitask.MultiTaskConfig(encoder=ENC, head_heads=2, head_hidden=16, **changes)
  x = np.random.default_rng(5).normal(size=(2, 32, 64)).astype(np.float32)
  shapes = nn.unbox(jax.eval_shape(multitask.MultiTaskModel(cfg).init, jax.random.key(0), x))
  rng = np.random.default_rng(6)
  params = jax.tree.map(lambda s: (0.3 * rng.normal(size=s.shape)).astype(s.dtype),
                        shapes["params"])
  return cfg, params, x


@pytest.fixture(scope="module")
def grouped():
  """(config, params, inputs [2, 32, 64], a Collector): one compile shared by the tests."""
  cfg, params, x = _model()
  return cfg, params, x, attention.Collector(cfg, params)


def test_collected_layouts_and_plain_attention_matches_the_trained_kernel(grouped):
  cfg, params, x, collector = grouped
  valid = np.array([64, 25])  # example 1: patches starting at frame >= 25 are padding
  got = collector(x, valid)
  n, g = ENC.length, 3
  assert got["encoder"].shape == (2, ENC.depth, ENC.heads, n, n)
  assert got["cross"].shape == (2, 1, 2, g, n + g)
  # [.., queries, keys]: each query's row is a distribution with nothing on padding.
  np.testing.assert_allclose(got["encoder"].sum(axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(got["cross"].sum(axis=-1), 1.0, atol=1e-5)
  padded = ~got["token_mask"][1]
  assert padded.sum() == 2 * 2  # time columns 3 and 4 (starts 30, 40) of both mel rows
  assert (got["encoder"][1][..., padded] == 0).all()
  assert (got["cross"][1][..., :n][..., padded] == 0).all()
  # The maps describe the trained model: "plain" gives the predictions of the kernel
  # the config runs here ("auto": "blocked" on a CPU).
  assert model_attention.resolve(cfg.encoder.attention) == "blocked"
  blocked = jax.jit(multitask.MultiTaskModel(cfg).apply)({"params": params}, x,
                                                         valid_frames=valid)
  np.testing.assert_allclose(got["predictions"], blocked["predictions"], atol=1e-5)


def test_cross_task_off_is_unfolded_per_example():
  cfg, params, x = _model(cross_task=False)
  collector = attention.Collector(cfg, params)
  both = collector(x, np.array([64, 40]))
  n, g = ENC.length, 3
  assert both["cross"].shape == (2, 1, 2, g, n + g)
  for j in range(g):
    others = [n + k for k in range(g) if k != j]
    assert (both["cross"][:, :, :, j, others] == 0).all()
    assert (both["cross"][:, :, :, j, n + j] > 0).all()
  # Folded rows are b·G + j: example 1 beside example 0 must match example 1 beside itself.
  alone = collector(x[[1, 1]], np.array([40, 40]))["cross"]
  np.testing.assert_allclose(both["cross"][1], alone[0], atol=1e-6)
  maps = attention.maps_from_attention(both, 1, collector.config)
  assert all(v["shares"]["other_groups"] == 0 for v in maps["groups"].values())


def test_maps_are_a_function_of_the_input(grouped):
  _, _, x, collector = grouped
  both = collector(x, np.array([64, 64]))
  first = attention.maps_from_attention(both, 0, collector.config)
  second = attention.maps_from_attention(both, 1, collector.config)
  again = attention.maps_from_attention(collector(x[[0, 0]], np.array([64, 64])), 1,
                                        collector.config)
  assert not np.allclose(first["rollout"]["grid"], second["rollout"]["grid"])
  assert not np.allclose(first["groups"]["timing"]["grid"], second["groups"]["timing"]["grid"])
  np.testing.assert_allclose(first["rollout"]["grid"], again["rollout"]["grid"], atol=1e-6)
  assert first["rollout"]["map"].shape == (32, 64)


def test_flat_head_gives_the_rollout_only_and_other_backbones_are_refused():
  cfg, params, x = _model(head="flat")
  collector = attention.Collector(cfg, params)
  result = attention.maps_from_attention(collector(x, np.array([64, 64])), 0, collector.config)
  assert result["groups"] == {} and result["rollout"]["grid"].shape == ENC.grid
  with pytest.raises(attention.AttentionMapError, match="AST backbone"):
    attention.Collector(cfg.replace(backbone="cnn"), params)


def _png_is_a_picture(path: pathlib.Path) -> np.ndarray:
  from matplotlib import image

  pixels = image.imread(path)
  assert path.stat().st_size > 0 and pixels.ndim == 3 and min(pixels.shape[:2]) > 100
  assert pixels[..., :3].std() > 0.05  # not blank
  return pixels


def test_draw_writes_a_png(grouped, tmp_path):
  _, _, x, collector = grouped
  result = attention.maps_from_attention(collector(x, np.array([64, 50])), 1, collector.config)
  path = attention_figures.draw(result, x[1], tmp_path / "sub" / "a.png", start_s=1.28, valid_frames=50,
                        title="tiny")
  assert path == tmp_path / "sub" / "a.png"
  _png_is_a_picture(path)


def test_mel_bin_centres_lie_under_the_filters():
  hz = attention_figures.mel_bin_hz()
  banks = features.mel_banks()  # [fft bins, mel]
  resolution = features.AST.sample_rate / features.AST.fft_length
  peak_hz = banks.argmax(axis=0) * resolution
  assert (np.diff(hz) > 0).all()
  # The lowest filters are narrower than an FFT bin; some hold no bin at all.
  some = banks.max(axis=0) > 0
  assert some.sum() > 120
  np.testing.assert_allclose(hz[some], peak_hz[some], atol=resolution)


# ---- windows


def test_select_window_reproduces_training_windows_and_names_bad_requests():
  logmel = np.random.default_rng(4).normal(size=(700, 128)).astype(np.float32)
  spec = windowing.WindowConfig(256, 128)
  cut = windowing.cut(logmel, spec)
  chosen = attention_figures.select_window(logmel, spec, window_index=2, name="x.wav")
  assert chosen.start_frame == 256 and np.array_equal(chosen.features, cut[2].features)
  with pytest.raises(attention.WindowError, match=r"window 9 is out of range: x.wav .* 5 window"):
    attention_figures.select_window(logmel, spec, window_index=9, name="x.wav")
  late = attention_figures.select_window(logmel, spec, start_s=5.0)
  assert late.start_frame == 500 and late.valid_frames == 200 and late.index == -1
  np.testing.assert_array_equal(late.features[:200], logmel[500:])
  assert (late.features[200:] == 0).all()
  with pytest.raises(attention.WindowError, match="outside"):
    attention_figures.select_window(logmel, spec, start_s=7.5)
  with pytest.raises(attention.AttentionMapError, match="not both"):
    attention_figures.select_window(logmel, spec, window_index=0, start_s=1.0)


def _cli(args, env=None, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "eval.attention_figures", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def test_cli_missing_audio_fails_clearly(tmp_path):
  missing = tmp_path / "nowhere.wav"
  proc = _cli([f"--checkpoint={tmp_path}", f"--audio={missing}", f"--output_dir={tmp_path}"])
  assert proc.returncode != 0
  assert f"error: {missing}: no such file" in proc.stderr


# ---- a real fine-tuning run (the trainer CLI), slow

@pytest.fixture(scope="module")
def env(jax_env) -> dict[str, str]:
  return jax_env


@pytest.fixture(scope="module")
def finetuned(finetuned_run) -> pathlib.Path:
  return finetuned_run


@pytest.fixture(scope="module")
def performance(tmp_path_factory, make_midi, chords) -> pathlib.Path:
  path = tmp_path_factory.mktemp("performance") / "chords.mid"
  path.write_bytes(make_midi(chords(seconds=5.0)))
  return path


@pytest.mark.slow
def test_cli_writes_attention_pngs(finetuned, performance, env, tmp_path):
  proc = _cli([f"--checkpoint={finetuned}", f"--audio={performance}", "--window_index=1",
               f"--output_dir={tmp_path}"], env)
  assert proc.returncode == 0, proc.stderr[-4000:]
  paths = [pathlib.Path(line) for line in proc.stdout.split()]
  assert paths == [tmp_path / "chords_window001_attention.png"]
  _png_is_a_picture(paths[0])
  late = _cli([f"--checkpoint={finetuned}", f"--audio={performance}", "--start_s=2.5",
               f"--output_dir={tmp_path}"], env)
  assert late.returncode == 0, late.stderr[-4000:]
  _png_is_a_picture(pathlib.Path(late.stdout.split()[0]))


@pytest.mark.slow
def test_cli_out_of_range_window_and_missing_file_fail_clearly(finetuned, performance, env,
                                                              tmp_path):
  proc = _cli([f"--checkpoint={finetuned}", f"--audio={performance}", "--window_index=40",
               f"--output_dir={tmp_path}"], env)
  assert proc.returncode != 0
  assert "window 40 is out of range" in proc.stderr and str(performance) in proc.stderr
  broken = tmp_path / "broken.mid"
  broken.write_bytes(b"not midi")
  proc = _cli([f"--checkpoint={finetuned}", f"--audio={broken}", f"--output_dir={tmp_path}"], env)
  assert proc.returncode != 0 and f"error: {broken}" in proc.stderr
  assert not list(tmp_path.glob("*.png"))


@pytest.mark.slow
def test_maps_of_the_trained_model(finetuned, performance, tmp_path):
  run = loading.load(finetuned)
  settings = recording.FeatureSettings.from_metadata(run.data_metadata)
  samples = recording.load_samples(performance, settings)
  assert (settings.window.frames, settings.window.hop_frames) == (256, 128)
  windows = frontend.windows(samples, settings.window)
  inputs = list(frontend.model_input(windows[:2], settings.mean, settings.std))
  first = attention.maps(run, inputs[0], windows[0].valid_frames)
  second = attention.maps(run, inputs[1], windows[1].valid_frames)
  assert not np.allclose(first["rollout"]["grid"], second["rollout"]["grid"])
  assert set(first["groups"]) == {"timing", "dynamics", "expression"}
  assert first["groups"]["timing"]["dimensions"] == ("timing_stability",)
  # The plain-attention rebuild predicts what the trained (blocked) model predicts.
  trained = run.model.apply({"params": run.params}, inputs[0][None],
                            valid_frames=np.array([windows[0].valid_frames]))
  np.testing.assert_allclose(first["predictions"], trained["predictions"][0], atol=1e-5)
  paths = attention_figures.figures_for_windows(run, windows[:2], tmp_path / "figures", name="chords")
  assert [p.name for p in paths] == ["chords_window000_attention.png",
                                     "chords_window001_attention.png"]
  for path in paths:
    _png_is_a_picture(path)

