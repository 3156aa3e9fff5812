"""The stages of a job, from the first instance received to the results stored in the PACS.

Each job records the milliseconds it spent in every stage (``Job.stage_ms``); the API shows them
and the benchmarks print them. The names are shared here so that the workers that record them and
the API that documents them cannot drift apart.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager

STAGES: dict[str, str] = {
    "receive": "First to last instance of the study recorded by the node (0 for one image).",
    "assemble": "Last instance recorded to job committed: the quiet period or the route's "
    "expected instance count, plus the assembler's reaction time.",
    "queue_wait": "Job committed to claimed by a worker: dispatch, broker and a free worker.",
    "decode": "Stored instances read, parsed, decoded and windowed to 8 bits.",
    "preprocess": "Resize, crop and normalise to the model's input tensor.",
    "inference": "The ONNX model's run (scores and feature maps, the per-label CAM matmul); "
    "with dynamic batching, the wait for the run shared with other jobs too.",
    "cam": "Each present finding's map put back on the image and its region found.",
    "build": "Result objects built (SC, SR, ...), encoded, written and recorded; with inline "
    "delivery, each result is sent while the next is built.",
    "deliver": "After the results are recorded, the wait for the first attempt at sending every "
    "result to every destination (C-STORE) to end.",
}


class StageClock:
    """Adds up wall-clock milliseconds per stage name; ``stage()`` times a block."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    def add(self, name: str, milliseconds: float) -> None:
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}")
        self.ms[name] = round(self.ms.get(name, 0.0) + max(milliseconds, 0.0), 3)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, (time.perf_counter() - start) * 1000.0)

    def ordered(self) -> dict[str, float]:
        """The recorded stages in pipeline order."""
        return {name: self.ms[name] for name in STAGES if name in self.ms}
