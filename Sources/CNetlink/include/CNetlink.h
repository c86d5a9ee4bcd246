#ifndef LUNBRIDGE_CNETLINK_H
#define LUNBRIDGE_CNETLINK_H
// The public side uses only kernel UAPI headers and plain C types, so Swift needs no
// libnl include path; shim.c talks to libnl-3 / libnl-genl-3.
#include <linux/nbd-netlink.h>
#include <linux/nbd.h>
#endif
