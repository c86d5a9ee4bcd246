#ifndef LUNBRIDGE_CNETLINK_H
#define LUNBRIDGE_CNETLINK_H
// The public side uses only kernel UAPI headers and plain C types, so Swift needs no
// libnl include path; shim.c talks to libnl-3 / libnl-genl-3.
//
// Division of labour: Swift (NBDKernel) encodes and decodes the attribute stream of
// a generic netlink message (pure, testable without the module); this shim owns the
// sockets, the nlmsghdr + genlmsghdr, sequence numbers, acks and multicast groups.
#include <stddef.h>
#include <stdint.h>
#include <linux/nbd-netlink.h>
#include <linux/nbd.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Where a call failed.
enum {
  LB_NL_STAGE_NONE = 0,
  LB_NL_STAGE_ALLOC = 1,    // nl_socket_alloc / nlmsg_alloc / malloc
  LB_NL_STAGE_CONNECT = 2,  // genl_connect: opening the NETLINK_GENERIC socket
  LB_NL_STAGE_RESOLVE = 3,  // genl_ctrl_resolve("nbd"): the family is not registered
  LB_NL_STAGE_GROUP = 4,    // genl_ctrl_resolve_grp / nl_socket_add_membership
  LB_NL_STAGE_SEND = 5,     // nl_send_auto
  LB_NL_STAGE_RECEIVE = 6,  // nl_recvmsgs: includes the kernel's error in the ack
};

/// What went wrong: libnl's code and, when known, the errno behind it.
typedef struct {
  int stage;      // LB_NL_STAGE_*
  int nl_error;   // positive NLE_* code from libnl, 0 if none
  int sys_errno;  // positive errno from the kernel's ack (exact), 0 if not known
} lb_nl_status;

/// One generic netlink socket bound to the "nbd" family (resolved at open).
typedef struct lb_nbd_nl lb_nbd_nl;

/// Opens a NETLINK_GENERIC socket and resolves the "nbd" family. NULL on failure,
/// with *status filled (stage RESOLVE + NLE_OBJ_NOTFOUND: the module is not loaded).
lb_nbd_nl *lb_nbd_nl_open(lb_nl_status *status);
void lb_nbd_nl_close(lb_nbd_nl *nl);
int lb_nbd_nl_family_id(const lb_nbd_nl *nl);

/// Sends one request (command `cmd`, NBD_GENL_VERSION, attribute stream `attrs`,
/// already 4-byte aligned) with NLM_F_ACK and waits for the ack. The attribute stream
/// of the first reply message of the family is returned in *reply (malloc'd, release
/// with lb_nl_free; NULL and *reply_len 0 if there was none). Returns 0, or -1 with
/// *status filled (sys_errno is the kernel's errno when it refused the request).
int lb_nbd_nl_request(lb_nbd_nl *nl, uint8_t cmd, const void *attrs, size_t attrs_len,
                      void **reply, size_t *reply_len, lb_nl_status *status);

/// A socket subscribed to the "nbd_mc_group" multicast group, non-blocking.
typedef struct lb_nbd_monitor lb_nbd_monitor;

lb_nbd_monitor *lb_nbd_monitor_open(lb_nl_status *status);
void lb_nbd_monitor_close(lb_nbd_monitor *mon);
/// The socket's fd, for poll/epoll (readable = notifications queued).
int lb_nbd_monitor_fd(const lb_nbd_monitor *mon);

/// Reads every notification queued without blocking. Device indexes from
/// NBD_CMD_LINK_DEAD messages are returned in *indexes (malloc'd, lb_nl_free;
/// *count may be 0). *overrun is set to 1 if the kernel dropped notifications
/// (ENOBUFS: the receive buffer overflowed). Returns 0, or -1 with *status filled.
int lb_nbd_monitor_drain(lb_nbd_monitor *mon, uint32_t **indexes, size_t *count,
                         int *overrun, lb_nl_status *status);

void lb_nl_free(void *p);

/// libnl's errno → NLE_* mapping (nl_syserr2nlerr), positive both ways.
int lb_nl_syserr_to_nlerr(int sys_errno);
/// libnl's text for a positive NLE_* code.
const char *lb_nl_strerror(int nl_error);

#ifdef __cplusplus
}
#endif
#endif
