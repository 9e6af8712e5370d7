"""The teaching notebook, as notebooks/build.py builds it, runs cell by cell in a real Jupyter kernel
against today's API (with the smaller numbers of NOTEBOOK_QUICK=1); the committed copy holds exactly
the builder's cells, carries its outputs and stays small."""
from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "diffusion_on_mnist.ipynb"


def built():
    """The notebook as its builder writes it, before execution (no outputs)."""
    pytest.importorskip("nbformat")
    from importlib.util import module_from_spec, spec_from_file_location
    spec = spec_from_file_location("notebook_build", NOTEBOOK.with_name("build.py"))
    module = module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build()


def test_the_committed_notebook_is_what_its_builder_writes():
    nbformat = pytest.importorskip("nbformat")
    committed = nbformat.read(NOTEBOOK, as_version=4)
    expected = built()
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in expected.cells], \
        "notebooks/diffusion_on_mnist.ipynb differs from notebooks/build.py: edit the builder and rebuild"


def test_the_committed_notebook_has_its_outputs_and_is_small():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 10 and all(c.get("outputs") for c in code[2:]), "rebuild it: notebooks/build.py"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
    assert sum(o.get("output_type") == "display_data" for c in code for o in c.outputs) >= 10  # the figures
    assert NOTEBOOK.stat().st_size < 3_000_000


@pytest.mark.system
def test_the_notebook_executes_in_a_kernel(tmp_path, monkeypatch, mnist):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = built()
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()  # raises on a failing cell
    texts = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "20 steps in" in texts and "FID" in texts and "label accuracy" in texts
