"""Audio and features: decoding, MIDI rendering, the log-mel front end, windows, augmentation.

Nothing here knows about shards or Beam: these are the per-recording transformations that the Beam
jobs and inference (`eval.predict`) share, so training and inference cannot drift apart.
"""
