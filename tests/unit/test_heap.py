"""settle_heap: what a long-running process holds is frozen out of collection."""

from __future__ import annotations

import gc

from bisik._heap import settle_heap


def test_settle_heap_freezes_what_the_process_holds() -> None:
    gc.unfreeze()
    try:
        settle_heap()
        # At least the imported modules' objects (a server: ~300,000).
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
