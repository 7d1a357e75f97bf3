"""The README's notebook lines, as printed there, read a store that a writer in this
process holds open: plain duckdb and the extension wheels, no spend-ledger import."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ledger.store.schema import open_store
from tests.stores import lake_at
from tests.unit.store_rows import at, build_store, entry

README = Path(__file__).resolve().parents[2] / "README.md"


def notebook_lines() -> str:
    """The ``python notebook`` block under "From a notebook", unindented."""
    section = README.read_text().split("- **From a notebook**", 1)[1]
    block = section.split("```python notebook\n", 1)[1].split("  ```", 1)[0]
    return "\n".join(line.removeprefix("  ") for line in block.splitlines())


def test_the_readme_notebook_lines_read_the_store_while_its_writer_holds_it(tmp_path: Path) -> None:
    store = build_store(lake_at(tmp_path), entries=[entry(1_000_000_001, "user:a", model="o3", occurred_at=at(9))])
    code = notebook_lines()
    assert "import ledger" not in code
    assert "from ledger" not in code
    code, replaced = re.subn(r'^CATALOG = ".*"$', f"CATALOG = {store.catalog!r}", code, flags=re.M)
    assert replaced == 1
    with open_store(store):  # the writer, as the api holds it
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert re.search(r"│ o3 +│ +1000000001 │", done.stdout), done.stdout
