"""Speed benchmarks: ``python -m benchmarks.speed.<script> --help``."""
