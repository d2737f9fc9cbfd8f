"""What machine a measurement was made on, recorded beside the number (CPU models vary)."""

from __future__ import annotations

import os
import pathlib
import platform


def describe() -> str:
  """E.g. "Intel(R) Xeon(R) Processor, AVX-512, AMX, 2 cores": the CPU model and the
  vector extensions that decide its speed, from /proc/cpuinfo where there is one."""
  model, flags = platform.processor() or platform.machine(), set()
  cpuinfo = pathlib.Path("/proc/cpuinfo")
  if cpuinfo.is_file():
    for line in cpuinfo.read_text().splitlines():
      key, _, value = line.partition(":")
      if key.strip() == "model name":
        model = value.strip()
      elif key.strip() == "flags":
        flags = set(value.split())
      if model and flags:
        break
  extensions = [name for name, flag in (("AVX2", "avx2"), ("AVX-512", "avx512f"),
                                        ("AMX", "amx_tile")) if flag in flags]
  return ", ".join([model, *extensions, f"{os.cpu_count()} cores"])
