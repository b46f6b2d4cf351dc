"""Fault injection for tests: make the engine's pipeline call fail as a full GPU would.

A CPU cannot run out of GPU memory, yet the engine's out-of-memory handling (free the cache,
halve the batch, retry) must be tested on the build machines. `inject_oom` installs a hook on
one engine; the engine calls it with the batch size right before every diffusers pipeline
call, at the very point where a real `torch.cuda.OutOfMemoryError` would surface, so the
handling under test is the production code path. The hook is `None` outside the context
manager: production engines never have one.

```python
with inject_oom(engine, above=1) as fault:      # any call with more than 1 image fails
    results = engine.generate(requests)          # 4 -> 2 -> 1, then 4 single-image calls
assert fault.calls[:3] == [4, 2, 1]
```
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zengine.engine import TurboEngine


@dataclass
class OomFault:
    """Which pipeline calls fail: those with more than `above` images, and the first `first_calls`."""

    above: int | None = None
    first_calls: int = 0
    calls: list[int] = field(default_factory=list)  # batch size of every call seen, in order
    raised: int = 0

    def __call__(self, batch_size: int) -> None:
        import torch

        self.calls.append(batch_size)
        too_big = self.above is not None and batch_size > self.above
        if too_big or len(self.calls) <= self.first_calls:
            self.raised += 1
            raise torch.cuda.OutOfMemoryError(
                f"CUDA out of memory (injected by zengine.faults for a batch of {batch_size})."
            )


@contextmanager
def inject_oom(engine: TurboEngine, *, above: int | None = None,
               first_calls: int = 0) -> Iterator[OomFault]:
    """Make `engine`'s pipeline calls raise `torch.cuda.OutOfMemoryError` inside the block.

    `above`: fail every call with more images than this; `first_calls`: fail the first K calls
    whatever their size. The yielded `OomFault.calls` lists the batch size of each call tried.
    """
    if above is None and first_calls <= 0:
        raise ValueError("inject_oom needs above=N or first_calls=K (got neither): say which "
                         "pipeline calls should run out of memory.")
    if engine.fault_hook is not None:
        raise RuntimeError("This engine already has a fault hook installed; nest no injections.")
    fault = OomFault(above=above, first_calls=first_calls)
    engine.fault_hook = fault
    try:
        yield fault
    finally:
        engine.fault_hook = None
