"""The action's real install path (no test hook): a private venv from the pinned requirements."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import REPO


def test_install_sh_builds_a_private_venv_from_the_pins(tmp_path: Path) -> None:
    output = tmp_path / "output"
    path_file = tmp_path / "path"
    env = {
        "PATH": os.environ["PATH"], "HOME": str(tmp_path), "RUNNER_TEMP": str(tmp_path),
        "GITHUB_OUTPUT": str(output), "GITHUB_PATH": str(path_file), "IN_COMMAND": "setup",
        "ACTION_PATH": str(REPO / "actions" / "db-backup"),
        # the package registry only; pip's own index settings on this machine are kept
        **{k: v for k, v in os.environ.items() if k.startswith("PIP_")},
    }
    result = subprocess.run(["bash", str(REPO / "actions" / "db-backup" / "install.sh")], env=env,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    python = Path(outputs["python"])
    assert python == tmp_path / "db-backup-venv" / "bin" / "python"
    assert path_file.read_text().strip() == str(python.parent)
    version = subprocess.run([str(python.parent / "db-backup"), "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert version.returncode == 0 and "restore" in version.stdout
    frozen = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, timeout=60, check=True).stdout
    pins = {line.split("==")[0].lower() for line in (REPO / "actions" / "db-backup" / "requirements.txt").read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    installed = {line.split("==")[0].lower() for line in frozen.splitlines() if "==" in line}
    assert pins - {"setuptools", "pip", "wheel"} <= installed
