"""memprobe: per-rank GPU memory of process groups and communicators at LLM-engine start-up."""

__version__ = "0.1.0"
