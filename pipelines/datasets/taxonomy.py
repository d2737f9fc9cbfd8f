"""The 19 PercePiano perceptual dimensions and the three task groups.

This is the one declarative place for the label taxonomy: readers validate label
vectors against `NUM_DIMENSIONS`, the model's grouped heads read `GROUPS`, and
reports print `DIMENSIONS[i].describe()`. Order is the release's label order.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Dimension:
  """One perceptual rating scale, rated 1..7 from `low` to `high`."""

  name: str  # stable identifier used in configs, metrics and reports
  category: str  # the questionnaire category in the PercePiano paper
  low: str
  high: str

  def describe(self) -> str:
    return f"{self.category}: {self.low} <-> {self.high}"


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("timing_stability", "Timing", "Stable", "Unstable"),
    Dimension("articulation_length", "Articulation", "Short", "Long"),
    Dimension("articulation_touch", "Articulation", "Soft/cushioned", "Hard/solid"),
    Dimension("pedal_amount", "Pedal", "Sparse/dry", "Saturated/wet"),
    Dimension("pedal_clarity", "Pedal", "Clean", "Blurred"),
    Dimension("timbre_variety", "Timbre", "Even", "Colorful"),
    Dimension("timbre_depth", "Timbre", "Shallow", "Rich"),
    Dimension("timbre_brightness", "Timbre", "Bright", "Dark"),
    Dimension("timbre_loudness", "Timbre", "Soft", "Loud"),
    Dimension("dynamic_sophistication", "Dynamic", "Sophisticated/mellow", "Raw/crude"),
    Dimension("dynamic_range", "Dynamic", "Little dynamic range", "Large dynamic range"),
    Dimension("pace", "Music making", "Fast paced", "Slow paced"),
    Dimension("spaciousness", "Music making", "Flat", "Spacious"),
    Dimension("balance", "Music making", "Disproportioned", "Balanced"),
    Dimension("dramatic", "Music making", "Pure", "Dramatic/expressive"),
    Dimension("mood", "Emotion", "Optimistic/pleasant", "Dark"),
    Dimension("energy", "Emotion", "Low energy", "High energy"),
    Dimension("imagination", "Emotion", "Honest", "Imaginative"),
    Dimension("interpretation", "Interpretation", "Unsatisfactory/doubtful", "Convincing"),
)

NUM_DIMENSIONS = len(DIMENSIONS)

# Task groups for the multi-task heads (design, REFERENCE.md): Timing alone;
# Dynamics = articulation, pedal, timbre and dynamic; Expression = music making,
# emotion and interpretation. Membership by category so a dimension cannot be
# forgotten or counted twice.
GROUP_CATEGORIES: dict[str, tuple[str, ...]] = {
    "timing": ("Timing",),
    "dynamics": ("Articulation", "Pedal", "Timbre", "Dynamic"),
    "expression": ("Music making", "Emotion", "Interpretation"),
}

GROUPS: dict[str, tuple[int, ...]] = {
    group: tuple(i for i, d in enumerate(DIMENSIONS) if d.category in categories)
    for group, categories in GROUP_CATEGORIES.items()
}

DIMENSION_NAMES: tuple[str, ...] = tuple(d.name for d in DIMENSIONS)
