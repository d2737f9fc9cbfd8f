"""notebooks/colab_finetune.ipynb executed headless (nbclient, a real Jupyter kernel) on CPU.

A local folder stands in for Drive and this checkout for the cloned repository; the
parameters cell is overridden as papermill would (a cell after it). The first run
kills training after its first checkpoint (what a runtime reset does), then reruns the
training command, which must resume from that checkpoint and finish; a second run of
the whole notebook (a new session, everything on "Drive") must redo nothing and score
again.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "colab_finetune.ipynb"


def _execute(drive: pathlib.Path, simulate_disconnect: bool) -> str:
  """Runs the notebook with test parameters; returns the text of every output."""
  import nbclient
  import nbformat
  nb = nbformat.read(NOTEBOOK, as_version=4)
  drive.mkdir(exist_ok=True)  # the kernel starts in it
  (where,) = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
  params = {"REPO_DIR": str(REPO), "DRIVE_DIR": str(drive), "MOUNT_DRIVE": False,
            "INSTALL": False, "NUM_STEPS": 6, "BATCH_SIZE": 8, "CHECKPOINT_EVERY": 2,
            "SIMULATE_DISCONNECT": simulate_disconnect}
  nb.cells.insert(where + 1, nbformat.v4.new_code_cell(
      "\n".join(f"{k} = {v!r}" for k, v in params.items())))
  client = nbclient.NotebookClient(nb, kernel_name="ppt-test", timeout=1200,
                                   resources={"metadata": {"path": str(drive)}})
  client.execute()
  text = []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      text.append(out.get("text", "") or json.dumps(out.get("data", {})))
  return "\n".join(text)


@pytest.mark.slow  # a Beam job, three trainer starts, two predictions: 1-2 min on 2 cores
def test_the_notebook_survives_a_runtime_reset_and_scores_a_recording(tmp_path, monkeypatch):
  # A kernel running this interpreter (the venv), wherever `python` points on PATH.
  kernels = tmp_path / "jupyter"
  spec = kernels / "kernels" / "ppt-test"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "ppt test", "language": "python"}))
  monkeypatch.setenv("JUPYTER_PATH", str(kernels))
  drive = tmp_path / "drive"
  first = _execute(drive, simulate_disconnect=True)
  killed = re.search(r"runtime reset simulated: training killed with checkpoints \[([\d, ]+)\]",
                     first)
  assert killed, first[-3000:]
  saved = [int(s) for s in killed.group(1).split(",")]
  assert "finished at step 6 of 6" in first
  result = json.loads((drive / "run" / "result.json").read_text())
  assert result["status"] == "finished" and result["step"] == 6
  # The rerun started from the newest checkpoint the killed process left, not from scratch.
  assert result["restored_from"].endswith(f"/{saved[-1]}") and result["first_step"] == saved[-1]
  prediction = json.loads((drive / "prediction.json").read_text())
  (scored,) = prediction["files"]
  assert len(scored["ratings"]) == 19 and all(1 <= v <= 7 for v in scored["ratings"].values())
  shards = (drive / "shards" / "metadata.json").stat().st_mtime

  second = _execute(drive, simulate_disconnect=True)
  assert "runtime reset simulated" not in second  # checkpoints exist: nothing to kill
  assert (drive / "shards" / "metadata.json").stat().st_mtime == shards  # not redone
  assert "finished at step 6 of 6" in second
