"""What a shard is: the record format, file names and the typed metadata reader.

Beam-free, so the Grain input, the trainer and evaluation read shards without importing Beam.
"""
