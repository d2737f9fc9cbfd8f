"""`python -m pipelines.augment`: regenerate augmented shards from stored clean audio.

  python -m pipelines.augment --input_dir O --output_dir O2 --seed S --variants K \
      [--augment noise --augment pitch_shift] [beam options]

Reads the `*_audio-*` shards and metadata that `pipelines.percepiano` or
`pipelines.maestro` wrote into O, and writes only the augmented window shards
(variants 1..K) to O2, without touching the original sources. See jobs.py.
"""

from pipelines import jobs

if __name__ == "__main__":
  jobs.run_main(jobs.define_augment_flags, jobs.main_augment)
