"""Accounts: names, NSS lookups, which sources to believe, the chain, provisioning.

``names`` (what a passwd entry can hold, the prefix), ``nss`` (libc's lookups, each under a
deadline), ``nsswitch`` and ``sssd`` (which sources can vouch for a "not found"),
``verified`` (lookups that only believe those), ``chain`` (the tiers), ``provision``
(groupadd/useradd plans), ``scratch`` (account files seen as the system's own, for the demo and
the tests).

May import: :mod:`qemu_depriv.errors` and :mod:`qemu_depriv.host`.
"""
