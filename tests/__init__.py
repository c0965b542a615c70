"""The test suite; a package, so that worker processes can import ``tests.e2e.plugins``."""
