"""QEMU: what a binary can do (caps), the command lines we give it (argv), QMP (qmp)."""
