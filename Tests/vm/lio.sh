#!/usr/bin/env bash
# LIO, the kernel's own iSCSI target, set up through configfs for tests in the VM (the
# host kernel has no target modules). Source it; every function works on the target IQN
# $LIO_IQN with one fileio LUN (LUN 0) on tmpfs, portal 127.0.0.1:$LIO_PORT.
#
#   . Tests/vm/lio.sh
#   lio_start [SIZE_MIB]          modules, configfs, backstore, target, TPG 1, portal; open
#                                 access (no CHAP, any initiator); prints the LUN's URL
#   lio_chap USER SECRET [MUSER MSECRET]   require CHAP (one-way, or mutual with MUSER)
#   lio_open                      back to no authentication
#   lio_stop                      removes everything lio_start made
#
# The same configuration targetcli-fb writes (it drives these configfs files too), but
# with no Python start per command, which takes seconds under emulation. Facts used:
# the fileio backstore's `control` takes fd_dev_name/fd_dev_size, `emulate_tpu` enables
# UNMAP; a TPG serves nothing until `enable` is 1; with `generate_node_acls` any initiator
# may log in, and `authentication` then decides whether CHAP (the TPG's auth/ files for
# generated ACLs) is required. With authentication=1 and no credentials offered LIO closes
# the connection without a Login Response.

LIO_IQN=${LIO_IQN:-iqn.2026-11.org.lunbridge:lio}
LIO_PORT=${LIO_PORT:-3260}
LIO_CFS=/sys/kernel/config/target
LIO_BACKING=${LIO_BACKING:-/dev/shm/lunbridge-lio.img}
LIO_DBROOT=${LIO_DBROOT:-/dev/shm/lunbridge-lio-db}

lio_tpg() { echo "$LIO_CFS/iscsi/$LIO_IQN/tpgt_1"; }

lio_start() {
  local size_mib=${1:-64}
  modprobe configfs 2>/dev/null
  mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config || return 1
  modprobe target_core_mod && modprobe target_core_file && modprobe iscsi_target_mod || return 1
  # Where LIO writes persistent reservation state (DB_ROOT/pr/aptpl_*): it writes there on
  # every REGISTER, APTPL or not, and answers NOT READY 08/00 when it cannot (the guest's
  # /var/target does not exist). Settable only while no backstore is configured.
  mkdir -p "$LIO_DBROOT/pr" || return 1
  [ "$(cat "$LIO_CFS/dbroot" 2>/dev/null)" = "$LIO_DBROOT" ] || echo "$LIO_DBROOT" >"$LIO_CFS/dbroot" || return 1
  ip link set lo up
  local so=$LIO_CFS/core/fileio_0/lun0
  mkdir -p "$so" || return 1
  truncate -s "${size_mib}M" "$LIO_BACKING" || return 1
  echo "fd_dev_name=$LIO_BACKING,fd_dev_size=$((size_mib << 20))" >"$so/control" || return 1
  # A unit serial, as targetcli gives every backstore: without one LIO lists no VPD
  # pages at all (no identifier, no block limits, no thin provisioning page).
  cat /proc/sys/kernel/random/uuid >"$so/wwn/vpd_unit_serial" || return 1
  echo 1 >"$so/enable" || return 1
  echo 1 >"$so/attrib/emulate_tpu" || return 1
  local tpg
  tpg=$(lio_tpg)
  mkdir -p "$tpg/lun/lun_0" || return 1
  ln -s "$so" "$tpg/lun/lun_0/lunbridge" || return 1
  mkdir "$tpg/np/127.0.0.1:$LIO_PORT" || return 1
  lio_open || return 1
  echo 1 >"$tpg/attrib/generate_node_acls"
  echo 1 >"$tpg/attrib/cache_dynamic_acls"
  echo 0 >"$tpg/attrib/demo_mode_write_protect"
  echo 1 >"$tpg/enable" || return 1
  echo "iscsi://127.0.0.1:$LIO_PORT/$LIO_IQN/0"
}

lio_chap() {
  local tpg
  tpg=$(lio_tpg)
  echo -n "$1" >"$tpg/auth/userid" && echo -n "$2" >"$tpg/auth/password" || return 1
  if [ $# -ge 4 ]; then
    echo -n "$3" >"$tpg/auth/userid_mutual" && echo -n "$4" >"$tpg/auth/password_mutual" || return 1
  else
    : >"$tpg/auth/userid_mutual" 2>/dev/null; : >"$tpg/auth/password_mutual" 2>/dev/null
  fi
  echo 1 >"$tpg/attrib/authentication"
}

lio_open() {
  echo 0 >"$(lio_tpg)/attrib/authentication"
}

lio_stop() {
  local tpg
  tpg=$(lio_tpg)
  [ -d "$tpg" ] || return 0
  lio_alua_stop
  echo 0 >"$tpg/enable" 2>/dev/null
  rmdir "$tpg/np/"* 2>/dev/null
  rm -f "$tpg/lun/lun_0/lunbridge"
  rmdir "$tpg/lun/lun_0" "$tpg" "$LIO_CFS/iscsi/$LIO_IQN" 2>/dev/null
  rmdir "$LIO_CFS/core/fileio_0/lun0" "$LIO_CFS/core/fileio_0" 2>/dev/null
  rm -f "$LIO_BACKING"
}

# ALUA: a second TPG (TPG 2, portal 127.0.0.2:$LIO_PORT) for the same LUN, and two
# implicit ALUA target port groups, lb_a (id 10, TPG 1's port) and lb_b (id 20, TPG 2's).
# lio_alua_two_groups STATE_A STATE_B, then lio_alua_set GROUP STATE to move them
# (0 active/optimized, 1 active/non-optimized, 2 standby, 3 unavailable). Prints the
# second path's URL.
lio_alua_two_groups() {
  local so=$LIO_CFS/core/fileio_0/lun0 tpg2=$LIO_CFS/iscsi/$LIO_IQN/tpgt_2 g id
  for g in lb_a lb_b; do
    mkdir -p "$so/alua/$g" || return 1
  done
  echo 10 >"$so/alua/lb_a/tg_pt_gp_id" && echo 20 >"$so/alua/lb_b/tg_pt_gp_id" || return 1
  for g in lb_a lb_b; do
    echo 1 >"$so/alua/$g/alua_access_type" || return 1  # implicit
  done
  mkdir -p "$tpg2/lun/lun_0" || return 1
  ln -s "$so" "$tpg2/lun/lun_0/lunbridge" || return 1
  mkdir "$tpg2/np/127.0.0.2:$LIO_PORT" || return 1
  echo 0 >"$tpg2/attrib/authentication"
  echo 1 >"$tpg2/attrib/generate_node_acls"
  echo 1 >"$tpg2/attrib/cache_dynamic_acls"
  echo 0 >"$tpg2/attrib/demo_mode_write_protect"
  echo lb_a >"$(lio_tpg)/lun/lun_0/alua_tg_pt_gp" || return 1
  echo lb_b >"$tpg2/lun/lun_0/alua_tg_pt_gp" || return 1
  lio_alua_set lb_a "$1" && lio_alua_set lb_b "$2" || return 1
  echo 1 >"$tpg2/enable" || return 1
  echo "iscsi://127.0.0.2:$LIO_PORT/$LIO_IQN/0"
}

lio_alua_set() {
  echo "$2" >"$LIO_CFS/core/fileio_0/lun0/alua/$1/alua_access_state"
}

lio_alua_stop() {
  local so=$LIO_CFS/core/fileio_0/lun0 tpg2=$LIO_CFS/iscsi/$LIO_IQN/tpgt_2
  [ -d "$tpg2" ] || return 0
  echo 0 >"$tpg2/enable" 2>/dev/null
  rmdir "$tpg2/np/"* 2>/dev/null
  rm -f "$tpg2/lun/lun_0/lunbridge"
  rmdir "$tpg2/lun/lun_0" "$tpg2" 2>/dev/null
  echo default_tg_pt_gp >"$(lio_tpg)/lun/lun_0/alua_tg_pt_gp" 2>/dev/null
  rmdir "$so/alua/lb_a" "$so/alua/lb_b" 2>/dev/null
}
