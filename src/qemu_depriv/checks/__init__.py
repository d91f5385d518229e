"""Looking at a host: the audit of every QEMU on it, the doctor, the Prometheus export.

May import: everything below it (errors, settings, host, accounts, xl, qemu, isolation, vms);
nothing of cli.
"""
