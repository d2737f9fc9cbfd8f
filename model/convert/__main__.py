"""Command line: convert a PyTorch AST/SSAST checkpoint into an Orbax parameter tree.

  python -m model.convert --input FILE --output DIR --heads 12 \\
      [--source auto|transformers|ast|ssast]

Writes `DIR/params` (Orbax), which the trainer's warm start reads
(`init.converted=DIR`), and `DIR/convert.json` (the inferred config and the
conversion report).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys

from absl import app, flags, logging

from model.convert import config_inference, conversion, loading, rules
from model.convert.errors import ConversionError
from pipelines import entry_point


def define_flags() -> None:
  """Registers the command-line flags (only when run as a program)."""
  flags.DEFINE_string("input", None, "Checkpoint: .safetensors, .bin, .pt or .pth.",
                      required=True)
  flags.DEFINE_string("output", None, "Directory for params/ (Orbax) and convert.json.",
                      required=True)
  flags.DEFINE_integer("heads", None, "Attention heads (not recoverable from the weights).",
                       required=True)
  flags.DEFINE_enum("source", "auto", ["auto", *rules.SOURCES],
                    "Source layout; auto = from key names.")
  flags.DEFINE_integer("num_mel_bins", 128, "Input mel bins of our encoder.")
  flags.DEFINE_integer("num_frames", 1024, "Input frames of our encoder.")
  flags.DEFINE_integer("freq_stride", None, "Default: inferred from the position grid.")
  flags.DEFINE_integer("time_stride", None, "Default: inferred from the position grid.")
  flags.DEFINE_float("layer_norm_eps", None,
                     "Default: the source's (transformers 1e-12, AST/SSAST 1e-6).")
  flags.DEFINE_bool("allow_missing", False, "Write even if some target parameters are missing.")
  flags.DEFINE_bool("overwrite", False, "Replace an existing DIR/params.")


def main(argv: list[str]) -> None:
  # Only the command line writes checkpoints: the library needs no orbax.
  import orbax.checkpoint as ocp

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  source = None if f.source == "auto" else f.source
  overrides = {name: getattr(f, name) for name in
               ("num_mel_bins", "num_frames", "freq_stride", "time_stride", "layer_norm_eps")
               if getattr(f, name) is not None}
  output = pathlib.Path(f.output).absolute()
  target = output / "params"
  try:
    if target.exists() and not f.overwrite:
      raise ConversionError(f"{target} exists; pass --overwrite to replace it")
    state = loading.load_state_dict(f.input)
    config = config_inference.infer_config(state, f.heads, source, **overrides)
    params, report = conversion.convert(state, config, source, strict=not f.allow_missing)
  except ConversionError as e:
    sys.exit(f"error: {e}")
  output.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(target, params, force=f.overwrite)
  summary = {"input": str(pathlib.Path(f.input).absolute()), "params": str(target),
             "config": dataclasses.asdict(config), "report": report.to_dict()}
  (output / "convert.json").write_text(json.dumps(summary, indent=2) + "\n")
  logging.info("converted %d tensors (%s); %d unused, %d missing -> %s", len(report.loaded),
               report.naming, len(report.unused), len(report.missing), target)
  for note in report.notes:
    logging.warning("%s", note)


def cli() -> None:
  """Console entry point (`ppt-convert`; also `python -m model.convert`)."""
  entry_point.run(__doc__, define_flags, main)


if __name__ == "__main__":
  cli()
