"""torch's CUDA caching allocator, as far as memprobe's steps touch it (pure arithmetic).

The constants are c10/cuda/CUDACachingAllocator.cpp's: a request is rounded to 512 B; one of at most
1 MiB comes from the small pool, whose segments are 2 MiB; a larger one from the large pool, whose
segments are 20 MiB for requests under 10 MiB and the request rounded to 2 MiB above that. Blocks of
one stream never come from another stream's segments, and ``empty_cache`` gives back every segment
with no live block. What the GPU sees is the segments (``memory_reserved``), never the blocks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from memprobe.units import MIB as MiB
MIN_BLOCK = 512
SMALL_SIZE = 1 * MiB
SMALL_BUFFER = 2 * MiB
LARGE_BUFFER = 20 * MiB
MIN_LARGE_ALLOC = 10 * MiB
ROUND_LARGE = 2 * MiB


def _round(size: int) -> int:
    return max(MIN_BLOCK, -(-size // MIN_BLOCK) * MIN_BLOCK)


def _segment_size(size: int) -> int:
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


@dataclass
class Segment:
    stream: str
    small: bool
    size: int
    used: int = 0


@dataclass
class CachingAllocator:
    """Segments per (stream, pool); a block is a handle into its segment."""

    segments: list[Segment] = field(default_factory=list)

    @property
    def reserved(self) -> int:
        return sum(segment.size for segment in self.segments)

    def allocate(self, size: int, stream: str = "default") -> tuple[Segment, int]:
        rounded = _round(size)
        small = rounded <= SMALL_SIZE
        for segment in self.segments:
            if segment.stream == stream and segment.small == small and segment.size - segment.used >= rounded:
                segment.used += rounded
                return segment, rounded
        segment = Segment(stream=stream, small=small, size=_segment_size(rounded), used=rounded)
        self.segments.append(segment)
        return segment, rounded

    @staticmethod
    def free(block: tuple[Segment, int]) -> None:
        segment, rounded = block
        segment.used -= rounded

    def empty_cache(self) -> None:
        self.segments = [segment for segment in self.segments if segment.used > 0]
