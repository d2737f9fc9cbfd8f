"""What a training run carries from step to step, and what a checkpoint restores."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """`step` counts optimiser updates; `rng` is the run's base key (raw uint32 key
  data, so Orbax stores it like any array); step `s` draws from
  `fold_in(rng, s)`, so a restored run continues the same random stream."""

  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
