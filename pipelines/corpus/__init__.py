"""The generated corpus: small PercePiano- and MAESTRO-layout releases for `make demo` and tests.

Written in exactly the real layouts, so every loader is exercised by the same code that reads
the real releases.
"""
