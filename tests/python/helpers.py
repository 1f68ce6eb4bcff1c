"""The CLI helpers of tests/harness.py, for the Python package tests."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from harness import kestrel_path, run_kestrel  # noqa: E402,F401
