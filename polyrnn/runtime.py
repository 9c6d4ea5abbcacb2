"""How many CPU threads torch uses, and the type the inference networks compute in, chosen once per process
for every command.

Measured with ``polyrnn bench`` on a 2-core machine, idle and with one busy process per core
(``docs/performance.md``): one intra-op thread is about as fast as two when the machine is idle and stays
fast under load, while two threads fighting for busy cores are many times slower. Interactive tools run on
busy laptops, so the default is one thread; ``--threads N`` or ``POLYRNN_THREADS=N`` asks for more.

Precision (``--precision`` or ``POLYRNN_PRECISION``): on a CPU with AMX matrix units the folded mask model
and refiners run in bfloat16 about twice as fast at the same held-out accuracy (``docs/performance.md``).
"""

from __future__ import annotations

import os

THREADS_ENV = "POLYRNN_THREADS"
DEFAULT_THREADS = 1


def resolve_threads(threads: int | None = None) -> int:
    """``threads``, else ``$POLYRNN_THREADS``, else :data:`DEFAULT_THREADS`; 0 means all cores.
    ``ValueError`` naming the setting when it is not a non-negative integer."""
    if threads is None:
        raw = os.environ.get(THREADS_ENV, "").strip()
        if not raw:
            return DEFAULT_THREADS
        try:
            threads = int(raw)
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={raw!r}: expected a non-negative integer") from None
    if not 0 <= threads <= 1024:
        raise ValueError(f"threads must be >= 0 and <= 1024 (0 = all cores), got {threads}")
    return threads or (os.cpu_count() or 1)


def set_threads(threads: int | None = None) -> int:
    """Apply :func:`resolve_threads` to torch's intra-op threads; returns the count. Before torch is imported
    this only sets ``OMP_NUM_THREADS`` (which torch reads when it starts), so a command that fails its cheap
    checks never pays for importing torch."""
    import sys

    n = resolve_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    return n


PRECISION_ENV = "POLYRNN_PRECISION"
PRECISIONS = ("auto", "float32", "bfloat16")


def resolve_precision(precision: str | None = None) -> str:
    """The type the inference networks compute in (:func:`polyrnn.modeling.inference.fold_for_inference`):
    ``precision``, else ``$POLYRNN_PRECISION``, else ``"auto"``: ``"bfloat16"`` on a CPU with AMX matrix units
    (where oneDNN runs the networks about twice as fast, ``docs/performance.md``), ``"float32"`` elsewhere
    (bfloat16 without them is emulated, slower than float32). ``ValueError`` naming the setting otherwise."""
    if precision is None:
        precision = _checked(os.environ.get(PRECISION_ENV, "").strip() or "auto", PRECISION_ENV)
    if _checked(precision, "precision") != "auto":
        return precision
    import torch

    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return "bfloat16" if callable(amx) and amx() else "float32"


def set_precision(precision: str | None = None) -> None:
    """Make ``precision`` (one of :data:`PRECISIONS`; None: leave ``$POLYRNN_PRECISION`` as it is) this
    process's choice for every :func:`polyrnn.build.load_models`, its workers' too (through the
    environment). ``ValueError`` for another value."""
    if precision is not None:
        os.environ[PRECISION_ENV] = _checked(precision, "precision")


def _checked(precision: str, source: str) -> str:
    """``precision`` when it is one of :data:`PRECISIONS`; ``ValueError`` naming ``source`` otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"{source}={precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision
