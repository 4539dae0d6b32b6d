"""A kernel compiled on first use: built once per process, a failed build remembered (never retried).

:class:`JitBuild` holds what :mod:`ilo_pl.ops._cuda` (the StyleGAN-2 CUDA
kernels) and :mod:`ilo_pl.ops._cpu` (the CPU l1 projection) share: the lock,
the result, the failure and its one-line reason, and the one warning a failed
build gives.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Generic, Optional, Tuple, TypeVar

T = TypeVar("T")


class JitBuild(Generic[T]):
    """The once-per-process build of one kernel.

    Args:
        logger: where the failure's warning goes.
        what: what is built, for the warning (``"the CUDA kernels"``).
        fallback: what runs instead, for the warning.
    """

    def __init__(self, logger: logging.Logger, what: str, fallback: str) -> None:
        self.logger, self.what, self.fallback = logger, what, fallback
        self._lock = threading.Lock()
        self.result: Optional[T] = None
        self.failed = False
        #: Why the build failed (``"ExcType: last line"``); ``""`` if it has not failed.
        self.error = ""

    def get(self, build: Callable[[], T]) -> Optional[T]:
        """``build()``'s result, built on the first call; ``None`` if the build failed (then or before)."""
        if self.result is not None or self.failed:
            return self.result
        with self._lock:
            if self.result is not None or self.failed:
                return self.result
            try:
                self.result = build()
            except Exception as err:  # noqa: BLE001 - any build failure means: fall back
                self.failed = True
                lines = str(err).strip().splitlines()
                last = lines[-1] if lines else ""
                self.error = f"{type(err).__name__}: {last}"
                self.logger.warning(
                    "ilo_pl.ops: could not build %s (%s); %s", self.what, self.error, self.fallback
                )
        return self.result

    def state(self) -> Tuple[Optional[T], bool, str]:
        """``(result, failed, error)``, to restore with :meth:`restore` (tests)."""
        return self.result, self.failed, self.error

    def restore(self, state: Tuple[Optional[T], bool, str]) -> None:
        """Put back a :meth:`state` (tests)."""
        self.result, self.failed, self.error = state

    def reset(self) -> None:
        """Forget the build (tests): the next :meth:`get` builds again."""
        self.restore((None, False, ""))
