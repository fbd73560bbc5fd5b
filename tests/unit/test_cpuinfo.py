"""CPU model and SIMD features from /proc/cpuinfo text (x86 and an ARM Jetson's), and this machine's."""

from __future__ import annotations

from edge_app import cpuinfo

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx avx2 fma bmi2

processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx avx2 fma bmi2 avx512f avx512_vnni
"""
ARM = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm dcpop asimddp
CPU implementer\t: 0x41

Hardware\t: NVIDIA Orin Nano
"""


def test_x86_first_processor_only():
    got = cpuinfo.parse(X86)
    assert got["model"] == "AMD EPYC 7B13"
    assert got["simd"] == {"avx2": True, "avx512f": False, "avx512_vnni": False, "avx_vnni": False, "neon": False}


def test_arm_asimd_is_neon():
    got = cpuinfo.parse(ARM)
    assert got["simd"]["neon"] and not got["simd"]["avx2"]
    assert got["model"]  # no "model name" line: falls back to the platform's name


def test_this_machine_names_its_cpu():
    got = cpuinfo.cpu()
    assert isinstance(got["model"], str) and got["model"]
    assert set(got["simd"]) == set(cpuinfo.SIMD)
