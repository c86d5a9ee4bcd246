# shellcheck shell=bash
# The one way lunbridge's tests boot a VM with virtme-ng (sourced, bash): Debian's kernel
# under QEMU (TCG: no KVM on these machines) over this machine's own filesystem.
# Tests/vm/vm-run.sh (a script in the guest: vm-test, the VM benches) and the boot test
# (systemd as PID 1) both boot through it.
#
#   vm_tools                      sets VM_VNG and VM_KERNEL_IMAGE, or prints what is missing
#                                 and returns 1 (VNG, VM_KERNEL override)
#   vm_start CONSOLE VNG-ARG...   boots `vng --run KERNEL --disable-kvm --memory M --cpus N
#                                 VNG-ARG...` from /, in a session of its own, its output in
#                                 CONSOLE; sets VM_PID and VM_T0 (VM_MEMORY 2G, VM_CPUS 2)
#   vm_wait LIMIT [TICK]          waits for the VM to power off, calling TICK every 0.25 s;
#                                 after LIMIT s kills vng, virtme-run and QEMU together.
#                                 Sets VM_TIMED_OUT (0/1), VM_RC (vng's status), VM_SECONDS.

vm_tools() {
  # /usr/local/bin/vng first (vm-deps.sh links it there): the pyenv shim on PATH does not
  # find its Python once the boot test points HOME elsewhere.
  VM_VNG=${VNG:-$([ -x /usr/local/bin/vng ] && echo /usr/local/bin/vng || command -v vng)}
  VM_KERNEL_IMAGE=${VM_KERNEL:-$(ls /boot/vmlinuz-*-amd64 2>/dev/null | sort -V | tail -1)}
  local missing=""
  [ -x "$VM_VNG" ] || missing="vng (virtme-ng: Tests/vm/vm-deps.sh)"
  [ -n "$VM_KERNEL_IMAGE" ] && [ -r "$VM_KERNEL_IMAGE" ] ||
    missing="$missing${missing:+, }/boot/vmlinuz-*-amd64 (Debian package linux-image-amd64: Tests/vm/vm-deps.sh)"
  [ -z "$missing" ] || { echo "missing for the VM: $missing" >&2; return 1; }
}

vm_start() {
  local console=$1
  shift
  VM_T0=$(date +%s.%N)
  # Run from / so vng does not take a kernel source tree in the cwd for the kernel to use.
  (cd / && exec setsid "$VM_VNG" --run "$VM_KERNEL_IMAGE" --disable-kvm --memory "${VM_MEMORY:-2G}" \
    --cpus "${VM_CPUS:-2}" "$@") </dev/null >"$console" 2>&1 &
  VM_PID=$!
}

vm_wait() {
  local limit=$1 tick=${2:-}
  VM_TIMED_OUT=0
  while kill -0 "$VM_PID" 2>/dev/null; do
    [ -z "$tick" ] || "$tick"
    if [ "$(echo "$(date +%s.%N) - $VM_T0 > $limit" | bc)" = 1 ]; then
      VM_TIMED_OUT=1
      kill -TERM -- "-$VM_PID" 2>/dev/null
      for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$VM_PID" 2>/dev/null || break; sleep 0.5; done
      kill -KILL -- "-$VM_PID" 2>/dev/null
      break
    fi
    sleep 0.25
  done
  wait "$VM_PID"
  VM_RC=$?
  VM_SECONDS=$(echo "$(date +%s.%N) - $VM_T0" | bc)
}
