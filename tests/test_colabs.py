"""Executes the notebooks so they never rot."""
import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT


# (notebook, text its last markdown table must contain)
NOTEBOOKS = [("mae_quickstart.ipynb", "MAE-pretrained"),
             ("token_merging.ipynb", "| tome |"),
             ("mim_zoo.ipynb", "| ColorMAE |"),
             ("scale_to_a_pod.ipynb", "| vit_b16 | v5e:16x16 |"),
             ("sequences.ipynb", "| in a predicted gene |")]


@pytest.mark.parametrize("name,table_text", NOTEBOOKS)
def test_notebook_runs(name, table_text, tmp_path, monkeypatch):
  monkeypatch.setenv("MASKMODEL_NOTEBOOK_QUICK", "1")
  nb = nbformat.read(os.path.join(ROOT, "colabs", name), as_version=4)
  NotebookClient(nb, timeout=600, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert images, "the notebook shows no image"
  tables = [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]
  assert tables and table_text in tables[-1]
