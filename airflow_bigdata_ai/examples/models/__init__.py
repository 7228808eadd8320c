"""Model factories of the examples (digits CNN, traffic ResNet); importable as ``module:function`` paths."""
