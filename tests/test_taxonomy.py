"""The label taxonomy matches REFERENCE.md: 19 dimensions, three disjoint groups."""

from pipelines.datasets import taxonomy


def test_nineteen_dimensions_in_release_order():
  assert taxonomy.NUM_DIMENSIONS == 19
  assert taxonomy.DIMENSIONS[0].describe() == "Timing: Stable <-> Unstable"
  assert taxonomy.DIMENSIONS[8].describe() == "Timbre: Soft <-> Loud"
  assert taxonomy.DIMENSIONS[10].high == "Large dynamic range"
  assert taxonomy.DIMENSIONS[11].describe() == "Music making: Fast paced <-> Slow paced"
  assert taxonomy.DIMENSIONS[18].category == "Interpretation"
  assert len(set(taxonomy.DIMENSION_NAMES)) == 19


def test_groups_partition_the_dimensions():
  assert taxonomy.GROUPS == {
      "timing": (0,),
      "dynamics": tuple(range(1, 11)),
      "expression": tuple(range(11, 19)),
  }
  members = [i for g in taxonomy.GROUPS.values() for i in g]
  assert sorted(members) == list(range(19))
