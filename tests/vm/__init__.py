"""Real-kernel tests: a throwaway QEMU VM with cgroup v2 (see docs/testing-vm.md)."""
