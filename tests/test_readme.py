"""The README cannot drift: its support table is regenerated and compared, and its Python quick start runs."""

from __future__ import annotations

import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_support_table_is_current() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import support_table
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert support_table.replace_table(README, support_table.render()) == README, (
        "README.md's support table is stale: run `python scripts/support_table.py`."
    )


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_quick_start_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's first Python block, executed verbatim in an empty folder (pulls smollm2-135m if needed)."""
    quick_start = python_blocks(README)[0]
    script = tmp_path / "quick_start.py"
    script.write_text(quick_start)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    assert (tmp_path / "out/lora/adapter_config.json").is_file()
    assert (tmp_path / "out/lora/adapter.safetensors").is_file()
    assert (tmp_path / "out/lora-peft/adapter_model.safetensors").is_file()
