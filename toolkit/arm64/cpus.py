"""The emulated ARM64 CPUs and their features: which `-cpu` QEMU runs, the feature names of the auxiliary vector
(what the kernel tells a program the CPU can do, and what runtimes pick their kernels by), and the arm64-format
`/proc/cpuinfo` the userland sees.

The cpuinfo exists because QEMU's user mode passes the x86 host's `/proc/cpuinfo` through, and ONNX Runtime's CPU
detection (pytorch `cpuinfo`) segfaults on it; the file written here says what the emulated CPU really has, as read
from its own auxiliary vector. Standard library only: `inside` imports this module in the userland too.
"""

from __future__ import annotations

import ctypes
import platform

DEFAULT_CPU = "neoverse-n1"
# QEMU's -cpu: what a person means by it, and the MIDR (implementer, part) a kernel would report in /proc/cpuinfo
CPUS: dict[str, tuple[str, int, int]] = {
    "neoverse-n1": ("a recent phone's big core (Cortex-A76 class): dot product, fp16, no i8mm", 0x41, 0xD0C),
    "cortex-a53": ("the oldest phones' core: baseline NEON, no dot product", 0x41, 0xD03),
    "max": ("every feature QEMU emulates (i8mm, bf16, SVE2, SME): newer than any phone", 0x00, 0x000),
}

# Linux arm64 hwcap bits (arch/arm64/include/uapi/asm/hwcap.h), in bit order, by their /proc/cpuinfo names
HWCAP = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop sha3 sm3 "
    "sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg"
).split()
HWCAP2 = (
    "dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 i8mm bf16 "
    "dgh rng bti mte ecv afp rpres mte3 sme sme_i16i64 sme_f64f64 sme_i8i32 sme_f16f32 sme_b16f32 sme_f32f32 "
    "sme_fa64 wfxt ebf16 sve_ebf16 cssc rprfm sve2p1 sme2 sme2p1 sme_i16i32 sme_bi32i32 sme_b16b16 sme_f16f16"
).split()
AT_HWCAP, AT_HWCAP2 = 16, 26
# the features that decide a phone's int8 and float16 kernels, shown first wherever features are listed
KEY_FEATURES = ("asimddp", "i8mm", "fphp", "asimdhp", "bf16", "sve", "sve2", "sme")


def names_of(bits: int, table: tuple[str, ...] | list[str]) -> list[str]:
    """The feature names of the set bits of one hwcap word."""
    return [name for i, name in enumerate(table) if bits >> i & 1]


def features() -> list[str]:
    """This process's CPU features from the auxiliary vector (getauxval), as /proc/cpuinfo names them; [] where
    the machine is not aarch64 (the bits mean other things elsewhere)."""
    if platform.machine() != "aarch64":
        return []
    getauxval = ctypes.CDLL(None).getauxval
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    return names_of(getauxval(AT_HWCAP), HWCAP) + names_of(getauxval(AT_HWCAP2), HWCAP2)


def key_features(found: list[str]) -> list[str]:
    """The features that matter for the kernels a runtime takes, of those found."""
    return [name for name in KEY_FEATURES if name in found]


def cpuinfo_text(cpu: str, found: list[str], processors: int) -> str:
    """An arm64-format /proc/cpuinfo for `processors` cores of `cpu` with the features `found` inside."""
    _, implementer, part = CPUS[cpu]
    block = (
        "processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x{implementer:02x}\n"
        "CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0x{part:03x}\nCPU revision\t: 0\n\n"
    )
    return "".join(
        block.format(i=i, features=" ".join(found), implementer=implementer, part=part) for i in range(processors)
    )
