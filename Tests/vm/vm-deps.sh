#!/usr/bin/env bash
# Install what the NBD test VM needs (idempotent; a fast no-op when all is there).
#
#   Tests/vm/vm-deps.sh            # as root
#
# Debian packages:
#   qemu-system-x86    qemu-system-x86_64 (the VM; no KVM here, so TCG emulation)
#   linux-image-amd64  the guest kernel + its modules (nbd, sch_netem, iscsi_tcp, ...)
#                      in /boot/vmlinuz-*-amd64 and /lib/modules/<ver>
#   busybox-static     virtme-ng builds its initramfs from a *static* busybox; without it
#                      `vng` stops with "a statically linked busybox could not be found".
#                      It replaces the dynamic `busybox` package (apt removes it; the
#                      host's initramfs-tools is content with either).
#   tgt fio iproute2 e2fsprogs mount iputils-ping bc   what the VM
#                      tests use in the guest (ping is not on this image by default),
#                      and bc for vm-run.sh's timings
#   systemd-sysv udev  the boot test (Tests/vm/boot) boots this filesystem with systemd
#                      as /sbin/init and needs udev for /dev/lunbridge/NAME
#   debootstrap        the boot-from-SAN test (Tests/vm/sanboot) builds the guest's root
#                      filesystem with it (cached under .build/sanboot-cache)
#   initramfs-tools    lsinitramfs, to look into the initramfs the guest's
#                      update-initramfs built
# PyPI:
#   virtme-ng          the `vng` command. pip installs it for the `python3` first on PATH
#                      (here a pyenv build: /root/.pyenv/versions/X/bin/vng, reached
#                      through the pyenv shim). So that `vng` does not depend on the
#                      pyenv shims being on PATH, it is also linked as /usr/local/bin/vng.
#
# Environment: VNG_VERSION (default: the newest virtme-ng), PYTHON (default python3).
set -euo pipefail

die() { echo "vm-deps: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (apt-get, pip)"

PYTHON=${PYTHON:-python3}
VNG_LINK=/usr/local/bin/vng

# --- Debian packages ---------------------------------------------------------------
pkgs=(qemu-system-x86 linux-image-amd64 busybox-static tgt fio iproute2 e2fsprogs kmod mount
  iputils-ping bc systemd-sysv udev debootstrap initramfs-tools)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
    missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "vm-deps: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq || die "apt-get update failed"
  apt-get -o DPkg::Lock::Timeout=600 install -y -q "${missing[@]}" ||
    die "apt-get install ${missing[*]} failed"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 missing after install"
ls /boot/vmlinuz-*-amd64 >/dev/null 2>&1 ||
  die "no /boot/vmlinuz-*-amd64 after installing linux-image-amd64"
# busybox-static's binary must really be static (virtme-ng checks this).
file_out=$(LC_ALL=C ldd /bin/busybox 2>&1 || true)
case "$file_out" in
  *"not a dynamic executable"*|*"statically linked"*) ;;
  *) die "/bin/busybox is not statically linked: install busybox-static" ;;
esac

# --- virtme-ng (PyPI) ----------------------------------------------------------------
vng_ok() { # a vng that runs
  local v
  v=$(command -v vng 2>/dev/null) || return 1
  "$v" --version >/dev/null 2>&1
}
if ! "$PYTHON" -c 'import virtme_ng' 2>/dev/null; then
  echo "vm-deps: pip installing virtme-ng for $($PYTHON -c 'import sys; print(sys.executable)')"
  spec="virtme-ng${VNG_VERSION:+==$VNG_VERSION}"
  if ! out=$("$PYTHON" -m pip install -q --disable-pip-version-check "$spec" 2>&1); then
    # Debian's own python3 (no pyenv on PATH) refuses with PEP 668; the vng script then
    # lands in /usr/local/bin, which is what we want anyway.
    case "$out" in
      *externally-managed*)
        "$PYTHON" -m pip install -q --disable-pip-version-check --break-system-packages \
          "$spec" || die "pip install virtme-ng failed" ;;
      *) echo "$out" >&2; die "pip install virtme-ng failed" ;;
    esac
  fi
  command -v pyenv >/dev/null 2>&1 && pyenv rehash 2>/dev/null || true
fi
scripts=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
[ -x "$scripts/vng" ] || die "virtme-ng is installed but $scripts/vng is missing"
if [ "$scripts/vng" != "$VNG_LINK" ] &&
  [ "$(readlink "$VNG_LINK" 2>/dev/null)" != "$scripts/vng" ]; then
  ln -sfn "$scripts/vng" "$VNG_LINK" || die "cannot link $VNG_LINK"
fi
PATH="/usr/local/bin:$PATH" vng_ok || die "vng does not run (try: $scripts/vng --version)"
echo "vm-deps: ok: vng $("$VNG_LINK" --version 2>&1 | head -1) at $VNG_LINK -> $scripts/vng;" \
  "kernel $(ls /boot/vmlinuz-*-amd64 | sort -V | tail -1)"
