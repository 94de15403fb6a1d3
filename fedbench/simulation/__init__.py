"""The simulated clients' hardware: the device fleet (memory, speed, bandwidth), the virtual clock, FLOPs."""
