"""Small files with one job: no library module over 450 lines."""
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "medsynth_app"


def test_no_library_module_is_over_450_lines():
    sizes = {str(p.relative_to(LIBRARY)): len(p.read_text().splitlines()) for p in LIBRARY.rglob("*.py")}
    assert len(sizes) > 40
    assert {name: n for name, n in sizes.items() if n > 450} == {}
