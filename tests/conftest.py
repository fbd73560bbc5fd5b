"""Suite-wide pytest hooks: the run's header names the CPU it ran on."""

from __future__ import annotations

from edge_app import cpuinfo


def pytest_report_header(config):
    """The CPU model and the SIMD features the INT8 kernels depend on, so a failure report says which CPU failed."""
    cpu = cpuinfo.cpu()
    features = ", ".join(f"{name} {'yes' if have else 'no'}" for name, have in cpu["simd"].items())
    return f"cpu: {cpu['model']} ({features})"


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than about 10 s")
