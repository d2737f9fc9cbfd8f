"""pipelines.shards.layout: the shard names, and that readers never import Beam."""

import pathlib
import subprocess
import sys

from pipelines.beam import writer
from pipelines.shards import layout

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_shard_names_follow_tfds_and_the_writer_uses_them(tmp_path):
  assert layout.shard_name("ds", "train", "array_record", 3, 12) == \
      "ds-train.array_record-00003-of-00012"
  rows = writer.write_shard(str(tmp_path), "ds", "train", ("array_record",), 3, 12, [b"a"],
                            "window")
  assert [r["file"] for r in rows] == ["ds-train.array_record-00003-of-00012"]
  assert layout.read_array_record(str(tmp_path / rows[0]["file"])) == [b"a"]


def test_readers_do_not_import_beam():
  # The trainer, the Grain input pipeline and evaluation read shards; importing Beam
  # costs them a second of start-up and Beam's own dependency set.
  code = ("import sys\n"
          "import eval.report.build, train.crossval, pipelines.input_pipeline, train.main\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] == 'apache_beam')[:3])\n")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                        text=True, timeout=300, check=True)
  assert proc.stdout.strip() == "[]", proc.stdout
