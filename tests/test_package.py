"""The installed package: light import, typing files, public names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nucseg


def test_import_does_not_import_torch():
    code = "import sys, nucseg; nucseg.watershed_dynamics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"


def test_typing_files_ship_with_the_package():
    root = Path(nucseg.__file__).parent
    assert (root / "py.typed").is_file()
    assert (root / "_core.pyi").is_file()


def test_public_names():
    assert set(nucseg.__all__) >= {"watershed_dynamics", "segment", "load_model", "__version__"}
    assert nucseg.__version__ != "0.0.0+unknown"
    assert callable(nucseg.watershed_dynamics)
