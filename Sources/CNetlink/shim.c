// libnl-3 / libnl-genl-3 side of CNetlink: sockets, headers, acks, multicast.
// Attribute streams are built and parsed in Swift (NBDKernel/NetlinkAttributes.swift).
#include "CNetlink.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include <netlink/netlink.h>
#include <netlink/genl/genl.h>
#include <netlink/genl/ctrl.h>

struct lb_nbd_nl {
  struct nl_sock *sk;
  int family;
};

struct lb_nbd_monitor {
  struct nl_sock *sk;
  int family;
};

static void set_status(lb_nl_status *st, int stage, int nl_rc, int sys_errno) {
  if (!st) return;
  st->stage = stage;
  st->nl_error = nl_rc < 0 ? -nl_rc : nl_rc;
  st->sys_errno = sys_errno;
}

// Opens a NETLINK_GENERIC socket and resolves the "nbd" family id.
static struct nl_sock *open_nbd_socket(int *family, lb_nl_status *st) {
  struct nl_sock *sk = nl_socket_alloc();
  if (!sk) {
    set_status(st, LB_NL_STAGE_ALLOC, -NLE_NOMEM, ENOMEM);
    return NULL;
  }
  int rc = genl_connect(sk);
  if (rc < 0) {
    set_status(st, LB_NL_STAGE_CONNECT, rc, 0);
    nl_socket_free(sk);
    return NULL;
  }
  // Fails with -NLE_OBJ_NOTFOUND (the controller answered ENOENT) when no "nbd"
  // family is registered, i.e. the nbd module is not loaded.
  rc = genl_ctrl_resolve(sk, NBD_GENL_FAMILY_NAME);
  if (rc < 0) {
    set_status(st, LB_NL_STAGE_RESOLVE, rc, 0);
    nl_socket_free(sk);
    return NULL;
  }
  *family = rc;
  return sk;
}

lb_nbd_nl *lb_nbd_nl_open(lb_nl_status *status) {
  set_status(status, LB_NL_STAGE_NONE, 0, 0);
  lb_nbd_nl *nl = calloc(1, sizeof(*nl));
  if (!nl) {
    set_status(status, LB_NL_STAGE_ALLOC, -NLE_NOMEM, ENOMEM);
    return NULL;
  }
  nl->sk = open_nbd_socket(&nl->family, status);
  if (!nl->sk) {
    free(nl);
    return NULL;
  }
  return nl;
}

void lb_nbd_nl_close(lb_nbd_nl *nl) {
  if (!nl) return;
  nl_socket_free(nl->sk);
  free(nl);
}

int lb_nbd_nl_family_id(const lb_nbd_nl *nl) { return nl->family; }

// State of one request while its answers come in.
struct request_ctx {
  int family;
  int done;          // the ack or the error arrived
  int kernel_errno;  // positive errno from an error ack
  int alloc_failed;
  void *reply;
  size_t reply_len;
};

static int request_on_valid(struct nl_msg *msg, void *arg) {
  struct request_ctx *ctx = arg;
  struct nlmsghdr *nlh = nlmsg_hdr(msg);
  if (ctx->reply || ctx->alloc_failed) return NL_OK;
  if (nlh->nlmsg_type != ctx->family) return NL_OK;
  if (nlmsg_datalen(nlh) < GENL_HDRLEN) return NL_OK;
  struct genlmsghdr *gnlh = nlmsg_data(nlh);
  int len = genlmsg_attrlen(gnlh, 0);
  if (len < 0) len = 0;
  // One extra byte so that an empty reply still yields a non-NULL pointer.
  void *copy = malloc((size_t)len + 1);
  if (!copy) {
    ctx->alloc_failed = 1;
    return NL_OK;
  }
  memcpy(copy, genlmsg_attrdata(gnlh, 0), (size_t)len);
  ctx->reply = copy;
  ctx->reply_len = (size_t)len;
  return NL_OK;
}

static int request_on_ack(struct nl_msg *msg, void *arg) {
  (void)msg;
  struct request_ctx *ctx = arg;
  ctx->done = 1;
  return NL_STOP;
}

static int request_on_error(struct sockaddr_nl *who, struct nlmsgerr *err, void *arg) {
  (void)who;
  struct request_ctx *ctx = arg;
  ctx->done = 1;
  ctx->kernel_errno = err->error < 0 ? -err->error : err->error;
  return NL_STOP;
}

int lb_nbd_nl_request(lb_nbd_nl *nl, uint8_t cmd, const void *attrs, size_t attrs_len,
                      void **reply, size_t *reply_len, lb_nl_status *status) {
  set_status(status, LB_NL_STAGE_NONE, 0, 0);
  *reply = NULL;
  *reply_len = 0;

  size_t size = NLMSG_HDRLEN + GENL_HDRLEN + NLMSG_ALIGN(attrs_len) + NLMSG_ALIGNTO;
  struct nl_msg *msg = nlmsg_alloc_size(size);
  if (!msg) {
    set_status(status, LB_NL_STAGE_ALLOC, -NLE_NOMEM, ENOMEM);
    return -1;
  }
  if (!genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, nl->family, 0, 0, cmd, NBD_GENL_VERSION)) {
    nlmsg_free(msg);
    set_status(status, LB_NL_STAGE_ALLOC, -NLE_NOMEM, ENOMEM);
    return -1;
  }
  if (attrs_len > 0) {
    int rc = nlmsg_append(msg, (void *)attrs, attrs_len, NLMSG_ALIGNTO);
    if (rc < 0) {
      nlmsg_free(msg);
      set_status(status, LB_NL_STAGE_ALLOC, rc, ENOMEM);
      return -1;
    }
  }

  struct nl_cb *cb = nl_cb_alloc(NL_CB_DEFAULT);
  if (!cb) {
    nlmsg_free(msg);
    set_status(status, LB_NL_STAGE_ALLOC, -NLE_NOMEM, ENOMEM);
    return -1;
  }
  struct request_ctx ctx = {.family = nl->family};
  nl_cb_set(cb, NL_CB_VALID, NL_CB_CUSTOM, request_on_valid, &ctx);
  nl_cb_set(cb, NL_CB_ACK, NL_CB_CUSTOM, request_on_ack, &ctx);
  nl_cb_err(cb, NL_CB_CUSTOM, request_on_error, &ctx);

  // nl_send_auto completes the header: our port, the next sequence number,
  // NLM_F_REQUEST | NLM_F_ACK.
  int rc = nl_send_auto(nl->sk, msg);
  nlmsg_free(msg);
  if (rc < 0) {
    nl_cb_put(cb);
    set_status(status, LB_NL_STAGE_SEND, rc, 0);
    return -1;
  }

  // A reply (CONNECT's index, STATUS's list) and the ack arrive as separate
  // datagrams, and nl_recvmsgs returns after each one: read until the ack.
  int result = 0;
  while (!ctx.done) {
    rc = nl_recvmsgs(nl->sk, cb);
    if (rc < 0) {
      if (ctx.kernel_errno) {
        set_status(status, LB_NL_STAGE_RECEIVE, rc, ctx.kernel_errno);
      } else {
        set_status(status, LB_NL_STAGE_RECEIVE, rc, 0);
      }
      result = -1;
      break;
    }
  }
  if (result == 0 && ctx.kernel_errno) {
    set_status(status, LB_NL_STAGE_RECEIVE, -nl_syserr2nlerr(ctx.kernel_errno), ctx.kernel_errno);
    result = -1;
  }
  if (result == 0 && ctx.alloc_failed) {
    set_status(status, LB_NL_STAGE_ALLOC, -NLE_NOMEM, ENOMEM);
    result = -1;
  }
  nl_cb_put(cb);
  if (result == 0) {
    *reply = ctx.reply;
    *reply_len = ctx.reply_len;
  } else {
    free(ctx.reply);
  }
  return result;
}

lb_nbd_monitor *lb_nbd_monitor_open(lb_nl_status *status) {
  set_status(status, LB_NL_STAGE_NONE, 0, 0);
  lb_nbd_monitor *mon = calloc(1, sizeof(*mon));
  if (!mon) {
    set_status(status, LB_NL_STAGE_ALLOC, -NLE_NOMEM, ENOMEM);
    return NULL;
  }
  mon->sk = open_nbd_socket(&mon->family, status);
  if (!mon->sk) {
    free(mon);
    return NULL;
  }
  int group = genl_ctrl_resolve_grp(mon->sk, NBD_GENL_FAMILY_NAME, NBD_GENL_MCAST_GROUP_NAME);
  int rc = group;
  if (group >= 0) rc = nl_socket_add_membership(mon->sk, group);
  if (rc < 0) {
    set_status(status, LB_NL_STAGE_GROUP, rc, 0);
    lb_nbd_monitor_close(mon);
    return NULL;
  }
  // Notifications carry sequence number 0 and are not answers to anything.
  nl_socket_disable_seq_check(mon->sk);
  rc = nl_socket_set_nonblocking(mon->sk);
  if (rc < 0) {
    set_status(status, LB_NL_STAGE_GROUP, rc, 0);
    lb_nbd_monitor_close(mon);
    return NULL;
  }
  return mon;
}

void lb_nbd_monitor_close(lb_nbd_monitor *mon) {
  if (!mon) return;
  nl_socket_free(mon->sk);
  free(mon);
}

int lb_nbd_monitor_fd(const lb_nbd_monitor *mon) { return nl_socket_get_fd(mon->sk); }

struct drain_ctx {
  int family;
  uint32_t *indexes;
  size_t count;
  size_t capacity;
  int alloc_failed;
};

static int drain_on_valid(struct nl_msg *msg, void *arg) {
  struct drain_ctx *ctx = arg;
  struct nlmsghdr *nlh = nlmsg_hdr(msg);
  if (nlh->nlmsg_type != ctx->family) return NL_OK;
  if (nlmsg_datalen(nlh) < GENL_HDRLEN) return NL_OK;
  struct genlmsghdr *gnlh = nlmsg_data(nlh);
  if (gnlh->cmd != NBD_CMD_LINK_DEAD) return NL_OK;
  struct nlattr *attr = nla_find(genlmsg_attrdata(gnlh, 0), genlmsg_attrlen(gnlh, 0), NBD_ATTR_INDEX);
  if (!attr || nla_len(attr) < (int)sizeof(uint32_t)) return NL_OK;
  if (ctx->count == ctx->capacity) {
    size_t capacity = ctx->capacity ? ctx->capacity * 2 : 8;
    uint32_t *grown = realloc(ctx->indexes, capacity * sizeof(uint32_t));
    if (!grown) {
      ctx->alloc_failed = 1;
      return NL_OK;
    }
    ctx->indexes = grown;
    ctx->capacity = capacity;
  }
  ctx->indexes[ctx->count++] = nla_get_u32(attr);
  return NL_OK;
}

int lb_nbd_monitor_drain(lb_nbd_monitor *mon, uint32_t **indexes, size_t *count,
                         int *overrun, lb_nl_status *status) {
  set_status(status, LB_NL_STAGE_NONE, 0, 0);
  *indexes = NULL;
  *count = 0;
  *overrun = 0;
  struct nl_cb *cb = nl_cb_alloc(NL_CB_DEFAULT);
  if (!cb) {
    set_status(status, LB_NL_STAGE_ALLOC, -NLE_NOMEM, ENOMEM);
    return -1;
  }
  struct drain_ctx ctx = {.family = mon->family};
  nl_cb_set(cb, NL_CB_VALID, NL_CB_CUSTOM, drain_on_valid, &ctx);

  int result = 0;
  int fd = nl_socket_get_fd(mon->sk);
  for (;;) {
    // Ask the socket first: libnl versions differ in what nl_recvmsgs returns
    // for EAGAIN on a non-blocking socket.
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    int ready = poll(&pfd, 1, 0);
    if (ready < 0 && errno == EINTR) continue;
    if (ready <= 0) break;
    int rc = nl_recvmsgs_report(mon->sk, cb);
    if (rc > 0) continue;
    if (rc == 0 || rc == -NLE_AGAIN) break;
    if (rc == -NLE_NOMEM) {
      // recvmsg's ENOBUFS: the kernel dropped notifications for this socket.
      *overrun = 1;
      continue;
    }
    set_status(status, LB_NL_STAGE_RECEIVE, rc, 0);
    result = -1;
    break;
  }
  nl_cb_put(cb);
  if (ctx.alloc_failed) *overrun = 1;
  if (result == 0) {
    *indexes = ctx.indexes;
    *count = ctx.count;
  } else {
    free(ctx.indexes);
  }
  return result;
}

void lb_nl_free(void *p) { free(p); }

int lb_nl_syserr_to_nlerr(int sys_errno) {
  int rc = nl_syserr2nlerr(sys_errno);
  return rc < 0 ? -rc : rc;
}

const char *lb_nl_strerror(int nl_error) { return nl_geterror(nl_error); }
