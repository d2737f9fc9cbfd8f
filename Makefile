# Two commands for a newcomer: `make demo` and `make test`. Each first creates or
# refreshes the project's virtual environment from requirements.lock.

PYTHON ?= python3.11
VENV ?= .venv
PERCEPIANO_DIR ?= ../shared/data/percepiano
ASAP_DIR ?= ../shared/data/asap
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export PERCEPIANO_DIR ASAP_DIR

.PHONY: demo demo-data benchmark-percepiano demo-real test test-slow bench bench-model bench-train bench-predict lock clean

# The lock is complete (every transitive dependency, with hashes), so pip
# installs exactly it with --no-deps; the project itself is then installed
# editable without touching the pinned set. The environment is rebuilt from
# scratch whenever the lock changes, so nothing outside the lock lingers.
$(STAMP): requirements.lock pyproject.toml
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
	  --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps \
	  --no-build-isolation -e .
	touch $@

# End to end on the embedded corpus (generated into out/demo-corpus on first use):
# Beam shards -> SSAST pre-training -> fine-tuning + CNN baseline -> report in out/demo/report.
demo: $(STAMP)
	$(BIN)/python -m experiments.demo --corpus_dir=out/demo-corpus --workdir=out/demo

# The real benchmark on 2 cores, resumable stage by stage (rerun to continue; STAGES=a,b and
# FOLDS=0,1 run pieces). Reports land in reports/benchmark/{piece,performer} (committed).
# JOBS=2: two stages at once when their inputs are ready (1.3x the training throughput on 2
# cores, measured); JOBS=1 runs them one at a time, in order. NOTES_ENCODER=release/transcriber
# uses the committed transcriber instead of the notes-aware pre-training (a fresh machine).
STAGES ?=
FOLDS ?=
JOBS ?= 2
NOTES_ENCODER ?=
benchmark-percepiano: $(STAMP)
	$(BIN)/python -m experiments.percepiano_benchmark --percepiano_dir=$(PERCEPIANO_DIR) \
	  --asap_dir=$(ASAP_DIR) --workdir=out/benchmark --report_dir=reports/benchmark \
	  --only=$(STAGES) --folds=$(FOLDS) --jobs=$(JOBS) --notes_encoder=$(NOTES_ENCODER)

# The data path alone on the embedded corpus: MIDI -> audio -> log-mel -> windows (~1 min).
demo-data: $(STAMP)
	$(BIN)/python -m pipelines.walkthrough --corpus_dir=out/demo-corpus

# The same on the real PercePiano release (a Schubert D960 clip with 20 s of trailing silence).
demo-real: $(STAMP)
	$(BIN)/python -m pipelines.walkthrough --percepiano_dir=$(PERCEPIANO_DIR) \
	  --key=Schubert_D960_mv2_8bars_3_07

# Two pytest workers (pytest-xdist), one test file each at a time: compilation is mostly
# single-threaded, so a second process uses the second core that one JAX process leaves idle.
# A test that runs past --timeout (set-up included) fails with every thread's stack
# (pytest-timeout) instead of stalling CI: the slowest default test takes ~2 min, the
# slowest slow one (the demo at smoke scale) ~7.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -n $(TEST_WORKERS) --dist loadfile --timeout=600 $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow --xla_backend_opt=default --timeout=1500 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/features_speed.py
	$(BIN)/python benchmarks/render_speed.py --percepiano_dir=$(PERCEPIANO_DIR)

# Flax AST vs transformers' PyTorch ASTModel, forward and train step, f32 and bf16 (~30 min on 2 cores).
bench-model: $(STAMP)
	$(BIN)/python benchmarks/model_speed.py

# The trainer's step vs a PyTorch training loop of the same model, tiny/small/base, plus the
# compiled memory of every config's microbatch (~40 min on 2 cores).
bench-train: $(STAMP)
	$(BIN)/python benchmarks/train_speed.py --json reports/speed/train_speed.json

# eval.predict end to end from a 120 s WAV, tiny/small/base + base levers, vs PyTorch (~8 min on 2 quiet cores).
bench-predict: $(STAMP)
	$(BIN)/python benchmarks/predict_speed.py

# Regenerate the lock after editing pyproject.toml dependencies (pip-tools is
# in the locked dev extra).
lock: $(STAMP)
	$(BIN)/pip-compile --quiet --allow-unsafe --extra=test --extra=dev --generate-hashes --strip-extras \
	  --no-emit-index-url --no-emit-find-links --output-file=requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis out
