"""The shared local-SGD loop, its optimiser and the aggregation maths every method uses."""
