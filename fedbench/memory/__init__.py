"""The memory model: the peak bytes of one local training step of any sub-model, and its validation against a real allocator."""
