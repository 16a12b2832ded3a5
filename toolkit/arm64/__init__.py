"""ARM64 under emulation: the phone's instruction set on this x86 machine. `userland` sets up a Debian arm64
userland with QEMU's user-mode emulator and PyPI's aarch64 wheels, `cpus` names the emulated CPUs and reads their
features, `inside` is the entry the userland runs (the toolkit's own runners on each file), and `scorer` is what
`toolkit verify --arch arm64` scores with. Importing the package imports none of them."""
