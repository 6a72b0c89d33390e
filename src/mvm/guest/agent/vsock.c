/* mvm-vsock: /init's status and control channels over vsock (busybox has no vsock).
 *
 *   mvm-vsock connect ADDR   connect, copy stdin to the connection and the
 *                            connection to stdout; at end of stdin the write side
 *                            is shut down and the answer drained (at most 0.5 s);
 *                            exit 0, or 1 when the connection failed (5 s cap)
 *   mvm-vsock listen ADDR    accept one connection at a time (vsock: from the host,
 *                            CID 2, only) and relay it to stdin/stdout; when it ends
 *                            accept the next; exits at end of stdin
 *
 * ADDR is vsock:PORT (connect: the host, CID 2, which Firecracker's hybrid vsock
 * hands to the host socket <uds_path>_PORT; listen: any CID, port PORT) or
 * unix:PATH (the test seam: the same relay over a Unix socket on the host).
 * /init reports "exit N" with `connect vsock:1026` and serves the control
 * protocol with `listen vsock:1025` on two FIFOs (docs/agent-protocol.md).
 * Static, compiled on the host by mvm.image.guestbin like the agent. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CONNECT_MS 5000
#define DRAIN_MS 500 /* the host usually closes first: it only reads "exit N" */

typedef union {
    struct sockaddr sa;
    struct sockaddr_vm vm;
    struct sockaddr_un un;
} addr_t;

/* ADDR -> socket address (listen: any CID; connect: the host); 0 or -1 (pure) */
static int parse_addr(const char *s, int listening, addr_t *a, socklen_t *len) {
    memset(a, 0, sizeof *a);
    if (!strncmp(s, "vsock:", 6)) {
        char *end;
        errno = 0;
        unsigned long p = strtoul(s + 6, &end, 10);
        if (errno || end == s + 6 || *end || p == 0 || p >= 0xffffffffu) return -1;
        a->vm.svm_family = AF_VSOCK;
        a->vm.svm_cid = listening ? VMADDR_CID_ANY : VMADDR_CID_HOST;
        a->vm.svm_port = (unsigned)p;
        *len = sizeof a->vm;
        return 0;
    }
    if (!strncmp(s, "unix:", 5) && s[5] && strlen(s + 5) < sizeof a->un.sun_path) {
        a->un.sun_family = AF_UNIX;
        memcpy(a->un.sun_path, s + 5, strlen(s + 5));
        *len = sizeof a->un;
        return 0;
    }
    return -1;
}

static long long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* relay stdin <-> sock until sock ends; returns 1 when stdin ended (connect: after
 * the drain), 0 when the connection ended first */
static int relay(int sock, int connecting) {
    char buf[65536];
    int in_open = 1;
    long long drain_until = 0;
    for (;;) {
        struct pollfd p[2] = {{sock, POLLIN, 0}, {in_open ? 0 : -1, POLLIN, 0}};
        int timeout = drain_until ? (int)(drain_until - now_ms()) : -1;
        if (drain_until && timeout <= 0) return 1;
        int r = poll(p, 2, timeout);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return 0;
        if (r == 0) return 1;
        if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t k = read(sock, buf, sizeof buf);
            if (k <= 0) return !in_open;
            if (write_all(1, buf, (size_t)k)) return 1; /* nobody reads us any more */
        }
        if (in_open && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t k = read(0, buf, sizeof buf);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) {
                in_open = 0;
                if (!connecting) return 1;
                shutdown(sock, SHUT_WR);
                drain_until = now_ms() + DRAIN_MS;
                continue;
            }
            if (write_all(sock, buf, (size_t)k)) return 0;
        }
    }
}

static int do_connect(const addr_t *a, socklen_t len) {
    int s = socket(a->sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0) return 1;
    if (connect(s, &a->sa, len) && errno != EINPROGRESS) return 1;
    struct pollfd p = {s, POLLOUT, 0};
    int err = 0;
    socklen_t l = sizeof err;
    if (poll(&p, 1, CONNECT_MS) != 1 || getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &l) || err)
        return 1;
    fcntl(s, F_SETFL, 0);
    relay(s, 1);
    return 0;
}

static int do_listen(const addr_t *a, socklen_t len) {
    int s = socket(a->sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return 1;
    mode_t old = umask(0077);
    int r = bind(s, &a->sa, len);
    umask(old);
    if (r || listen(s, 1)) return 1;
    for (;;) {
        struct pollfd p[2] = {{s, POLLIN, 0}, {0, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        if (p[1].revents) { /* no host connected: what is written for one is dropped */
            char buf[4096];
            ssize_t k = read(0, buf, sizeof buf);
            if (k == 0 || (k < 0 && errno != EINTR && errno != EAGAIN)) return 0; /* stdin gone */
        }
        if (!(p[0].revents & POLLIN)) continue;
        int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) continue;
        if (a->sa.sa_family == AF_VSOCK) {
            addr_t peer;
            socklen_t pl = sizeof peer;
            if (getpeername(c, &peer.sa, &pl) || peer.vm.svm_cid != VMADDR_CID_HOST) {
                close(c);
                continue;
            }
        }
        int ended = relay(c, 0);
        close(c);
        if (ended) return 0;
    }
}

int main(int argc, char **argv) {
    addr_t a;
    socklen_t len;
    int listening = argc == 3 && !strcmp(argv[1], "listen");
    if (argc != 3 || (!listening && strcmp(argv[1], "connect")) ||
        parse_addr(argv[2], listening, &a, &len)) {
        fprintf(stderr, "usage: mvm-vsock connect|listen vsock:PORT|unix:PATH\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    return listening ? do_listen(&a, len) : do_connect(&a, len);
}
