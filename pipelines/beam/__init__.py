"""The Apache Beam jobs: the preprocessing graph, the shard writer and one module per job.

The only package of the project that imports Beam.
"""
