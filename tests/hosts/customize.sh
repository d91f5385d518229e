#!/bin/sh
# mmdebstrap --customize-hook for the qemu-depriv test hosts: run on the build machine, as root,
# after every package is installed. $1 is the root filesystem, $2 the distribution's name.
# Part of the image's cache key: editing this file rebuilds the images.
set -eu
root="$1"
name="$2"

# The booted guest's identity, not the build machine's (mmdebstrap copies /etc/hostname).
echo "qdh-$name" > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tqdh-%s\n' "$name" > "$root/etc/hosts"
# The guests have no network; a resolver copied from the build machine would only mislead.
rm -f "$root/etc/resolv.conf"

# The harness boots with root=/dev/vda; systemd remounts it by this line.
printf '/dev/vda\t/\text4\trw,errors=remount-ro\t0\t1\n' > "$root/etc/fstab"

# A root login on the serial console without a password, for a developer debugging a guest by
# hand (the harness itself talks to qemu-ga). The guests have no network to log in from.
chroot "$root" passwd --delete root >/dev/null

# Timers that would start apt, fstrim or e2scrub in the middle of a test run, and the one unit
# that waits for a network the guests do not have.
chroot "$root" systemctl mask --quiet \
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer \
    systemd-networkd-wait-online.service
