"""The README's code runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_block_after(heading: str) -> str:
    """The first ```python block after ``heading`` in the README."""
    text = README.read_text()
    match = re.search(re.escape(heading) + r".*?```python\n(.*?)```", text, flags=re.S)
    assert match, f"no python block after {heading!r}"
    return match.group(1)


def test_training_loop_snippet_runs_and_ends_as_a_mosaic(capsys):
    namespace = {}
    exec(compile(python_block_after("## MoMos in your own training loop"), "README.md", "exec"), namespace)
    momos, model, projector = namespace["momos"], namespace["model"], namespace["projector"]
    assert momos.is_mosaic(model, projector.config, projector.codebooks)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert float(last.rsplit(" ", 1)[1]) > 0.5   # far above the 0.1 of guessing
