"""Where the tests find the repository's own files, wherever in tests/ they sit."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "adaptformer"
FIXTURES = ROOT / "tests" / "fixtures"  # files written by older versions, and expected outputs
