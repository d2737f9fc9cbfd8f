"""Dataset readers: the PercePiano release, MAESTRO v3 and ASAP layouts, splits, the 19 dimensions.

Readers validate a release and describe it as plain data; they write nothing and run no job
(the Beam jobs in `pipelines.beam` own the command lines).
"""
