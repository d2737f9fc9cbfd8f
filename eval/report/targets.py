"""The report's goals (a Pearson per group, a gain over each baseline), met or not."""

from __future__ import annotations

from collections.abc import Sequence

from eval.report.rendering import fmt
from eval.report.scoring import headline_rows
from pipelines.datasets import taxonomy


def targets(evaluations: dict, pearson: float | None, gain: float | None,
            baselines: Sequence[str]) -> list[dict]:
  """Plain checks of the goals: Pearson >= `pearson` per group, relative gain >= `gain`
  over each run named in `baselines`."""
  out = []
  for key, evaluation in evaluations.items():
    rows = headline_rows(evaluation)
    if pearson is not None:
      for group in taxonomy.GROUPS:
        value = rows[group]["pearson"]
        out.append({"evaluation": key, "goal": f"{group} Pearson >= {pearson:g}",
                    "value": value, "met": bool(value >= pearson)})
    if gain is not None:
      # The gain goal is over the baselines, not over the AST's own ablations, and
      # every baseline gets a row on every set: never "every target is met" with a
      # baseline unchecked.
      if not baselines:
        out.append({"evaluation": key, "goal": f"mean Pearson >= {100 * gain:g} % over the "
                    "baselines", "value": None, "met": False, "kind": "gain",
                    "note": "no baseline compared on this set"})
      for name in baselines:
        goal = f"mean Pearson >= {100 * gain:g} % over {name}"
        c = evaluation["compare"].get(name)
        if c is None:
          out.append({"evaluation": key, "goal": goal, "value": None, "met": False,
                      "kind": "gain", "note": f"{name} has no predictions for this set"})
          continue
        value = c["relative_mean_pearson_gain"]
        # The point estimate decides "met"; the paired p-value of the lead says how
        # far to trust it.
        lead = headline_rows(c)["mean"]
        if value is None:
          out.append({"evaluation": key, "goal": goal, "value": None, "met": False,
                      "kind": "gain", "note": f"not computable: {name}'s mean Pearson is "
                      f"{fmt(lead['pearson'])} (<= 0 or undefined)"})
          continue
        out.append({"evaluation": key, "goal": goal, "value": value,
                    "met": bool(value >= gain), "kind": "gain", "p": lead["p_bootstrap"]})
  return out


def target_value(target: dict) -> str:
  """A target's value as the report shows it: a gain in percent, a Pearson as is."""
  if target.get("note"):
    return target["note"]
  if target.get("kind") == "gain":
    return f"{100 * target['value']:+.1f} %"
  return fmt(target["value"])
