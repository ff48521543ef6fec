import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.compress import digits_dataset, save_dataset_npz

PROFILE = Path(__file__).resolve().parents[1] / "deploy" / "profiles" / "raspberry-pi-4b.toml"

# Setting a module to None in sys.modules makes importing it fail as if it were not
# installed, which is what an agent-only install looks like to these commands.
SCRIPT = """
import sys
sys.modules[{module!r}] = None
sys.argv = ["edgefleet", *{args!r}]
from edgefleet.cli import main
main()
"""


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("sqlalchemy", ["controller", "serve", "--data-dir", "unused"]),
        (
            "torch",
            [
                "compress",
                "model.py:build",
                "--data",
                "d.npz",
                "--profile",
                str(PROFILE),
                "--out",
                "variants",
            ],
        ),
    ],
)
def test_missing_controller_extra_is_explained(module, args, tmp_path):
    (tmp_path / "model.py").write_text("def build():\n    raise AssertionError\n")
    save_dataset_npz(digits_dataset(), tmp_path / "d.npz")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(module=module, args=args)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )

    assert result.returncode == 2, result.stderr
    assert "pip install 'edgefleet[controller]'" in result.stderr
    assert "Traceback" not in result.stderr
