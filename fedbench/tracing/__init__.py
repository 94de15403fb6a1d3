"""Running models on torch's meta device (shapes, bytes and FLOPs without data), cached on disk; the speed-ups that touch private torch APIs are fenced in tracing/_speedups."""
