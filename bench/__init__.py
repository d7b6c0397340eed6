"""Benchmarks of the jtcse project (quality, speed, GPU check); see docs/benchmarks.md. Not part of the package."""
