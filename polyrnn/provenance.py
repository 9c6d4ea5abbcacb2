"""Where a result came from: the git commit and the library versions, written into checkpoints and reports."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path


def git_sha() -> str:
    """The commit of the polyrnn source tree, or "unknown" outside a git checkout."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def versions() -> dict[str, str]:
    """polyrnn, torch, numpy and Python versions."""
    import numpy as np
    import torch

    from polyrnn import __version__

    return {
        "polyrnn": __version__,
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "python": platform.python_version(),
    }
