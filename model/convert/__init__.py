"""Import PyTorch AST / SSAST weights into `model.ast` parameters (and export them back).

Why: the encoder is only worth fine-tuning on PercePiano's ~1200 clips if it
starts from weights that already hear audio: AudioSet-trained AST (the
`MIT/ast-finetuned-audioset-*` hub checkpoints, or the original repository's
`.pth` files) or SSAST self-supervised checkpoints. All are PyTorch.

  loading           state dicts from .safetensors / weights-only pickles
  conversion        convert, from_transformers / from_ast / from_ssast, Report
  rules, keys       the name mapping as data, and reading a state dict's keys
  config_inference  infer_config: the EncoderConfig the weights describe
  merging           merge_into: converted arrays into an initialised tree
  errors            ConversionError and its subclasses
  __main__          python -m model.convert --input FILE --output DIR --heads 12

and the other direction, a fine-tuning run out to PyTorch (the same rules, inverted):

  piano_perception  the PyTorch head and loader that `eval.export_transformers` (a run
                    -> a `transformers.ASTModel` checkpoint, the head's weights,
                    perception.json) copies into every export (torch only)

Typical use:

  state = loading.load_state_dict("ast-audioset.safetensors")
  config = config_inference.infer_config(state, heads=12)  # or an EncoderConfig
  converted, report = conversion.convert(state, config)
  variables = ast.Encoder(config).init(rng, features)
  params = merging.merge_into(variables["params"], converted)  # keeps the boxes
"""
