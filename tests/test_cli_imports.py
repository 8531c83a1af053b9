"""Building the ``retain`` parser imports nothing heavy: ``retain --help`` stays instant."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_building_the_parser_imports_no_torch_or_diagnostics() -> None:
    code = textwrap.dedent(
        """
        import sys
        import retain.cli
        retain.cli._parser()
        heavy = ("torch", "transformers", "datasets", "retain.diagnostics")
        print(",".join(name for name in heavy if name in sys.modules))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "", f"imported while building the parser: {done.stdout}"


def test_help_exits_cleanly_without_torch() -> None:
    code = (
        "import sys, retain.cli\ntry:\n    retain.cli.main(['--help'])\nexcept SystemExit as e:\n"
    )
    code += "    print(e.code, 'torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.split()[-2:] == ["0", "False"]


def test_diagnose_help_lists_every_diagnostic() -> None:
    from retain.cli_diagnose import DIAGNOSTIC_NAMES
    from retain.experiment.diagnose_config import DIAGNOSTICS

    assert DIAGNOSTIC_NAMES == DIAGNOSTICS
