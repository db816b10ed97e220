"""bench/mesh: requests/s and latency through two sidecars with mTLS against the same app called directly, and
the sidecars' idle RSS and CPU. Run `python -m bench.mesh --help`."""
