"""Paper-reproduction studies: ``python -m benchmarks.studies.<script> --help``."""
