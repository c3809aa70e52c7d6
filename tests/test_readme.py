"""The README's runnable examples run: each ```python block after an `<!-- example: run` comment,
each saved to a file and run with ``python file.py``, with the built-in model swapped for a tiny one."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.store import Store
from autotune.store import tables as m

README = Path(__file__).parent.parent / "README.md"


def runnable_examples() -> list[str]:
    return re.findall(r"<!-- example: run[^>]*-->\s*```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_runnable_examples():
    blocks = runnable_examples()
    assert blocks and any("autotune.search(" in b for b in blocks)


@pytest.mark.parametrize("index", range(len(runnable_examples())))
def test_readme_example_runs(index, tiny_model, tmp_path):
    code = runnable_examples()[index].replace('"smollm2-135m"', repr(tiny_model))
    script = tmp_path / "example.py"  # saved to a file and run, as a user would
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=dict(os.environ), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if "autotune.search(" in code:  # the search landed in the default database (the user data dir)
        db = Path(os.environ["AUTOTUNE_DATA_DIR"]) / "autotune.db"
        with Store(f"sqlite:///{db}").session() as s:
            study = s.query(m.Study).one()
            assert study.best_measurement_id is not None
            recipe = s.get(m.Measurement, study.best_measurement_id).recipe.recipe
        assert str(recipe) in proc.stdout  # it printed the winner it then loaded
