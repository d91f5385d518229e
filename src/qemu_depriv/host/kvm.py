"""Whether KVM really works here: /dev/kvm may open on a machine whose CPU cannot run it."""

from __future__ import annotations

import fcntl
import os


def kvm_works() -> bool:
    """Whether /dev/kvm opens and answers KVM_GET_API_VERSION with 12 and creates a VM."""
    kvm_get_api_version, kvm_create_vm = 0xAE00, 0xAE01
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, kvm_get_api_version, 0) != 12:
            return False
        os.close(fcntl.ioctl(fd, kvm_create_vm, 0))
    except OSError:
        return False
    else:
        return True
    finally:
        os.close(fd)
