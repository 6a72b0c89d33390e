/* mvm guest agent: the guest end of the org.mvm.agent virtio-serial port.
 *
 * Protocol: docs/agent-protocol.md (version 1).  Frames are a 16-byte header
 * (magic "MVA1", type, 3 zero bytes, stream id u32 BE, length u32 BE) and a
 * payload: JSON for type 'J', raw bytes for 'O' (stdout / file data), 'E'
 * (stderr) and 'I' (stdin / file data from the host).  Streams multiplex many
 * operations over the one port; stream 0 carries only hello.
 *
 * Privileges: /init starts this binary as root with no-new-privs; it drops to
 * the agent uid at once, keeping only CAP_SETUID/CAP_SETGID/CAP_KILL (and, when the
 * entrypoint itself is root, the rest of the bounding set as permitted-only
 * capabilities so commands exec'd as root are root).  With a rootless
 * entrypoint the bounding set is cut down to those three before the drop.
 * Exec'd commands run as the entrypoint uid; an execve from a non-root uid
 * clears every capability.  File verbs use setfsuid/setfsgid so they see the
 * filesystem exactly as the entrypoint does.
 *
 * A sealed image's agent (-s) answers hello, ping and status only: exec,
 * console and the file verbs do not exist in it.
 *
 * Host connection: virtio-serial reports a disconnected host as POLLHUP and
 * reads return 0; the agent then kills every session it ran for that host,
 * drops its buffers, and sleeps until SIGIO says a host connected again.  A
 * (re)connected host sends hello; the agent scans for the magic to resync.
 *
 * Transports (the PORT argument; the stream code is the same for all three):
 *   /dev/vportNpM   the virtio-serial port (QEMU);
 *   vsock:PORT      listen on AF_VSOCK PORT (Firecracker's hybrid vsock: the host
 *                   connects through its Unix socket with "CONNECT PORT"); only
 *                   the host (CID 2) is accepted;
 *   unix:PATH       listen on a Unix socket (debug and tests: the real agent on
 *                   the host, driven by the host client over the real protocol).
 * A listening agent serves one connection at a time; when it ends (the sessions
 * it ran are killed, as for a virtio-serial disconnect) the next is accepted. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <linux/vm_sockets.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "json.h"

#define VERSION 1
#define HDR 16
#define MAX_FRAME (1u << 20)       /* host -> guest payload cap */
#define CHUNK 65536                /* guest -> host data frame size */
#define OUT_HIGH (4u << 20)        /* stop reading sessions above this much queued output */
#define IN_HIGH (8u << 20)         /* stop reading the port above this much queued stdin */
#define MAX_SESS 64
#define MAX_ARGS 256
#define MAX_ENV 128
#define MAX_FILE (1ull << 31)      /* file read/write cap: 2 GiB */
#define SVC_DIR "/run/mvm/svc"
#define READY_DIR "/etc/mvm/ready"

extern char **environ;

enum { S_FREE, S_EXEC, S_READ, S_WRITE };

typedef struct {
    int kind;
    uint32_t id;
    pid_t pid;
    int in_fd, out_fd, err_fd; /* pty: out_fd is the master, in_fd a dup of it */
    int pty, reaped, code, sig;
    int fd;                    /* S_READ / S_WRITE */
    long long size;
    buf_t inq;                 /* stdin not yet taken by the command */
    int eof_pending;           /* close stdin once inq is drained */
    char tmp[PATH_MAX], dst[PATH_MAX];
    unsigned mode;
} sess_t;

static int port = -1, connected = 0, sealed = 0;
static int listen_fd = -1; /* vsock:/unix: transports; port is then the accepted connection */
static uid_t agent_uid = 990, entry_uid = 1000;
static char home[PATH_MAX] = "/";
static buf_t in, out;
static sess_t sess[MAX_SESS];

static void logmsg(const char *fmt, const char *arg) {
    FILE *f = fopen("/run/mvm/agent.log", "a");
    if (!f) return;
    fprintf(f, fmt, arg);
    fputc('\n', f);
    fclose(f);
}

/* ---- frames out ---- */

static void frame(char type, uint32_t id, const void *p, size_t n) {
    if (!connected) return;
    unsigned char h[HDR] = {'M', 'V', 'A', '1', (unsigned char)type, 0, 0, 0};
    uint32_t be = htonl(id), ln = htonl((uint32_t)n);
    memcpy(h + 8, &be, 4);
    memcpy(h + 12, &ln, 4);
    if (buf_add(&out, h, HDR) || buf_add(&out, p, n)) {
        logmsg("out of memory queueing %s", "a frame");
        exit(1);
    }
}

static void jframe(uint32_t id, buf_t *b) {
    frame('J', id, b->data, b->len);
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

static void reply_error(uint32_t id, const char *msg, const char *detail) {
    buf_t b = {0};
    char full[PATH_MAX + 256];
    snprintf(full, sizeof full, "%s%s%s", msg, detail ? ": " : "", detail ? detail : "");
    buf_str(&b, "{\"op\":\"error\",\"message\":");
    buf_jstr(&b, full, strlen(full));
    buf_str(&b, "}");
    jframe(id, &b);
}

static void simple(uint32_t id, const char *op) {
    buf_t b = {0};
    buf_fmt(&b, "{\"op\":\"%s\"}", op);
    jframe(id, &b);
}

/* nonce: echoed from the host's hello (-1: an unsolicited hello after a connect) */
static void hello(long long nonce) {
    buf_t b = {0};
    buf_fmt(&b, "{\"op\":\"hello\",\"nonce\":%lld,\"version\":%d,\"agent\":\"mvm-guest-agent\",\"sealed\":%s,"
                "\"verbs\":[\"ping\",\"status\"%s]}",
            nonce, VERSION, sealed ? "true" : "false",
            sealed ? "" : ",\"exec\",\"read\",\"write\",\"list\"");
    jframe(0, &b);
}

/* ---- sessions ---- */

static sess_t *find(uint32_t id) {
    for (int i = 0; i < MAX_SESS; i++)
        if (sess[i].kind != S_FREE && sess[i].id == id) return &sess[i];
    return NULL;
}

static sess_t *alloc_sess(uint32_t id) {
    for (int i = 0; i < MAX_SESS; i++) {
        if (sess[i].kind == S_FREE) {
            memset(&sess[i], 0, sizeof sess[i]);
            sess[i].id = id;
            sess[i].in_fd = sess[i].out_fd = sess[i].err_fd = sess[i].fd = -1;
            return &sess[i];
        }
    }
    return NULL;
}

static void as_entry(int on);

static void closefd(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

static size_t queued_stdin(void) {
    size_t n = 0;
    for (int i = 0; i < MAX_SESS; i++)
        if (sess[i].kind == S_EXEC) n += sess[i].inq.len;
    return n;
}

static void free_sess(sess_t *s) {
    free(s->inq.data);
    s->inq.data = NULL;
    s->inq.len = s->inq.cap = 0;
    closefd(&s->in_fd);
    closefd(&s->out_fd);
    closefd(&s->err_fd);
    closefd(&s->fd);
    if (s->kind == S_WRITE && s->tmp[0]) {
        as_entry(1);
        unlink(s->tmp);
        as_entry(0);
    }
    if (s->kind == S_EXEC && s->pid > 0 && !s->reaped) {
        kill(-s->pid, SIGKILL);
        kill(s->pid, SIGKILL);
        /* reaped by the SIGCHLD handler loop; nobody is waiting for its status */
    }
    s->kind = S_FREE;
}

static void drop_sessions(void) {
    for (int i = 0; i < MAX_SESS; i++)
        if (sess[i].kind != S_FREE) free_sess(&sess[i]);
}

static void drop_all(void) {
    drop_sessions();
    in.len = 0;
    out.len = 0;
}

/* write queued stdin without blocking; after an eof, close it (a pty gets ^D) */
static void flush_stdin(sess_t *s) {
    while (s->in_fd >= 0 && s->inq.len) {
        ssize_t w = write(s->in_fd, s->inq.data, s->inq.len);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) return;
        if (w <= 0) {
            s->inq.len = 0;
            closefd(&s->in_fd);
            return;
        }
        buf_drop(&s->inq, (size_t)w);
    }
    if (s->eof_pending && s->in_fd >= 0 && !s->inq.len) {
        if (s->pty) {
            char eot = 4;
            if (write(s->in_fd, &eot, 1) < 0) {}
            s->eof_pending = 0;
        } else {
            closefd(&s->in_fd);
        }
    }
}

static void maybe_finish(sess_t *s) {
    if (s->kind != S_EXEC || !s->reaped || s->out_fd >= 0 || s->err_fd >= 0) return;
    buf_t b = {0};
    buf_fmt(&b, "{\"op\":\"exit\",\"code\":%d,\"signal\":%d}", s->code, s->sig);
    jframe(s->id, &b);
    free_sess(s);
}

/* ---- privileges ---- */

static int set_caps(uint64_t effective, uint64_t permitted) {
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    memset(d, 0, sizeof d);
    d[0].effective = (uint32_t)effective;
    d[1].effective = (uint32_t)(effective >> 32);
    d[0].permitted = (uint32_t)permitted;
    d[1].permitted = (uint32_t)(permitted >> 32);
    return (int)syscall(SYS_capset, &h, d);
}

static void drop_privileges(void) {
    if (getuid() != 0) return; /* started unprivileged (tests, or an older /init) */
    setpriority(PRIO_PROCESS, 0, 0); /* /init's channel setup runs at nice 19: not us */
    /* SETUID/SETGID to run commands as the entrypoint uid; KILL to signal them once
     * they run as that uid (no more power than SETUID already gives) */
    uint64_t need = (1ull << CAP_SETUID) | (1ull << CAP_SETGID) | (1ull << CAP_KILL);
    uint64_t permitted = need;
    if (entry_uid == 0 && !sealed) {
        permitted = 0;
        for (int c = 0; c <= CAP_LAST_CAP; c++)
            if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1) permitted |= 1ull << c;
    } else {
        for (int c = 0; c <= CAP_LAST_CAP; c++)
            if (!(need & (1ull << c))) prctl(PR_CAPBSET_DROP, c, 0, 0, 0);
    }
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) || setgroups(0, NULL) ||
        setresgid(agent_uid, agent_uid, agent_uid) || setresuid(agent_uid, agent_uid, agent_uid)) {
        logmsg("cannot drop to the agent uid: %s", strerror(errno));
        exit(1);
    }
    prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
    if (set_caps(need, permitted)) {
        logmsg("capset: %s", strerror(errno));
        exit(1);
    }
}

static void as_entry(int on) {
    setfsgid(on ? entry_uid : agent_uid);
    setfsuid(on ? entry_uid : agent_uid);
}

/* ---- exec ---- */

static void child_exec(char **argv, char **envp, const char *cwd, int pty_slave, int in_fd,
                       int out_fd, int err_fd, int errpipe) {
    sigset_t all;
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
    setsid();
    if (pty_slave >= 0) {
        ioctl(pty_slave, TIOCSCTTY, 0);
        in_fd = out_fd = err_fd = pty_slave;
    }
    if (dup2(in_fd, 0) < 0 || dup2(out_fd, 1) < 0 || dup2(err_fd, 2) < 0) goto fail;
    for (int fd = 3; fd < 1024; fd++)
        if (fd != errpipe) close(fd);
    if (setgroups(0, NULL) && getuid() == 0) goto fail;
    if (setresgid(entry_uid, entry_uid, entry_uid) || setresuid(entry_uid, entry_uid, entry_uid))
        goto fail;
    if (chdir(cwd)) goto fail;
    environ = envp;
    execvp(argv[0], argv);
fail:;
    int e = errno;
    if (write(errpipe, &e, sizeof e) < 0) _exit(127);
    _exit(127);
}

static int parse_argv(jval arr, char **argv, char *store, size_t cap) {
    const char *it = NULL;
    jval v;
    int n = 0;
    size_t used = 0;
    while (json_array_next(arr, &it, &v)) {
        if (n >= MAX_ARGS - 1 || used >= cap) return -1;
        if (json_string(v, store + used, cap - used)) return -1;
        argv[n++] = store + used;
        used += strlen(store + used) + 1;
    }
    argv[n] = NULL;
    return n;
}

static void do_exec(uint32_t id, const char *doc, size_t len) {
    static char store[MAX_FRAME + 4096];
    char *argv[MAX_ARGS], *envp[MAX_ENV + 8];
    char cwd[PATH_MAX];
    jval v;
    int pty = 0, stdin_open = 0;
    long long rows = 24, cols = 80;
    size_t used = 0;
    if (!json_get(doc, len, "argv", &v)) return reply_error(id, "exec needs argv", NULL);
    int argc = parse_argv(v, argv, store, sizeof store / 2);
    if (argc <= 0) return reply_error(id, "exec: argv must be a non-empty list of strings", NULL);
    used = sizeof store / 2;
    if (json_get(doc, len, "pty", &v) && json_bool(v, &pty)) return reply_error(id, "bad pty", NULL);
    if (json_get(doc, len, "stdin", &v) && json_bool(v, &stdin_open))
        return reply_error(id, "bad stdin", NULL);
    if (json_get(doc, len, "rows", &v)) json_int(v, &rows);
    if (json_get(doc, len, "cols", &v)) json_int(v, &cols);
    snprintf(cwd, sizeof cwd, "%s", home);
    if (json_get(doc, len, "cwd", &v) && json_string(v, cwd, sizeof cwd))
        return reply_error(id, "bad cwd", NULL);
    /* environment: a fixed base, then the request's (which may override it) */
    int ne = 0;
    const char *user = entry_uid == 0 ? "root" : "app";
    char base[5][PATH_MAX + 16];
    snprintf(base[0], sizeof base[0], "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    snprintf(base[1], sizeof base[1], "HOME=%s", home);
    snprintf(base[2], sizeof base[2], "USER=%s", user);
    snprintf(base[3], sizeof base[3], "LOGNAME=%s", user);
    snprintf(base[4], sizeof base[4], "TERM=%s", pty ? "xterm" : "dumb");
    for (int i = 0; i < 5; i++) envp[ne++] = base[i];
    if (json_get(doc, len, "env", &v)) {
        const char *it = NULL;
        char key[256];
        jval val;
        while (json_object_next(v, &it, key, sizeof key, &val)) {
            size_t kl = strlen(key);
            if (!kl || strchr(key, '=') || ne >= MAX_ENV || used + kl + 2 >= sizeof store)
                return reply_error(id, "exec: bad env", NULL);
            memcpy(store + used, key, kl);
            store[used + kl] = '=';
            if (json_string(val, store + used + kl + 1, sizeof store - used - kl - 1))
                return reply_error(id, "exec: env values must be strings", NULL);
            /* a later value of the same name replaces the earlier one */
            for (int i = 0; i < ne; i++)
                if (strncmp(envp[i], key, kl) == 0 && envp[i][kl] == '=') {
                    envp[i] = envp[--ne];
                    break;
                }
            envp[ne++] = store + used;
            used += strlen(store + used) + 1;
        }
    }
    envp[ne] = NULL;
    if (find(id)) return reply_error(id, "stream already in use", NULL);
    sess_t *s = alloc_sess(id);
    if (!s) return reply_error(id, "too many sessions", NULL);
    int in_p[2] = {-1, -1}, out_p[2] = {-1, -1}, err_p[2] = {-1, -1}, ep[2] = {-1, -1};
    int master = -1, slave = -1;
    if (pipe2(ep, O_CLOEXEC)) goto fail;
    if (pty) {
        master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0 || grantpt(master) || unlockpt(master)) goto fail;
        char *name = ptsname(master);
        if (!name || (slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC)) < 0) goto fail;
        struct winsize ws = {(unsigned short)rows, (unsigned short)cols, 0, 0};
        ioctl(master, TIOCSWINSZ, &ws);
    } else {
        if (pipe2(in_p, O_CLOEXEC) || pipe2(out_p, O_CLOEXEC) || pipe2(err_p, O_CLOEXEC)) goto fail;
    }
    pid_t pid = fork();
    if (pid < 0) goto fail;
    if (pid == 0) child_exec(argv, envp, cwd, slave, in_p[0], out_p[1], err_p[1], ep[1]);
    close(ep[1]);
    int e = 0;
    ssize_t r;
    do r = read(ep[0], &e, sizeof e); while (r < 0 && errno == EINTR);
    close(ep[0]);
    s->kind = S_EXEC;
    s->pid = pid;
    if (pty) {
        close(slave);
        s->pty = 1;
        s->out_fd = master;
        s->in_fd = dup(master);
        fcntl(s->out_fd, F_SETFL, O_NONBLOCK);
    } else {
        close(in_p[0]);
        close(out_p[1]);
        close(err_p[1]);
        s->in_fd = in_p[1];
        s->out_fd = out_p[0];
        s->err_fd = err_p[0];
        fcntl(s->out_fd, F_SETFL, O_NONBLOCK);
        fcntl(s->err_fd, F_SETFL, O_NONBLOCK);
        fcntl(s->in_fd, F_SETFL, O_NONBLOCK);
        if (!stdin_open) closefd(&s->in_fd);
    }
    if (r == sizeof e) {
        /* exec failed in the child: say why; the child exits 127 and is reaped later */
        s->reaped = 0;
        reply_error(id, argv[0], strerror(e));
        s->pid = pid;
        s->reaped = 1; /* its exit is reported by nobody: the error replaced it */
        free_sess(s);
        return;
    }
    buf_t b = {0};
    buf_fmt(&b, "{\"op\":\"started\",\"pid\":%d}", (int)pid);
    jframe(id, &b);
    return;
fail:
    e = errno;
    if (master >= 0) close(master);
    if (slave >= 0) close(slave);
    for (int i = 0; i < 2; i++) {
        if (ep[i] >= 0) close(ep[i]);
        if (in_p[i] >= 0) close(in_p[i]);
        if (out_p[i] >= 0) close(out_p[i]);
        if (err_p[i] >= 0) close(err_p[i]);
    }
    s->kind = S_FREE;
    reply_error(id, "exec", strerror(e));
}

/* ---- files ---- */

static int get_path(uint32_t id, const char *doc, size_t len, char *path) {
    jval v;
    if (!json_get(doc, len, "path", &v) || json_string(v, path, PATH_MAX) || path[0] != '/') {
        reply_error(id, "a request needs an absolute path", NULL);
        return -1;
    }
    return 0;
}

static void do_read(uint32_t id, const char *doc, size_t len) {
    char path[PATH_MAX];
    if (get_path(id, doc, len, path)) return;
    as_entry(1);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    int e = errno;
    as_entry(0);
    if (fd < 0) return reply_error(id, path, strerror(e));
    struct stat st;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        close(fd);
        return reply_error(id, path, "not a regular file");
    }
    if ((unsigned long long)st.st_size > MAX_FILE) {
        close(fd);
        return reply_error(id, path, "too large");
    }
    sess_t *s = find(id) ? NULL : alloc_sess(id);
    if (!s) {
        close(fd);
        return reply_error(id, "too many sessions", NULL);
    }
    s->kind = S_READ;
    s->fd = fd;
    buf_t b = {0};
    buf_fmt(&b, "{\"op\":\"file\",\"size\":%lld,\"mode\":%u}", (long long)st.st_size,
            (unsigned)(st.st_mode & 07777));
    jframe(id, &b);
}

static void pump_read(sess_t *s) {
    static char chunk[CHUNK];
    ssize_t n = read(s->fd, chunk, sizeof chunk);
    if (n > 0 && (unsigned long long)(s->size + n) <= MAX_FILE) {
        s->size += n;
        frame('O', s->id, chunk, (size_t)n);
        return;
    }
    if (n < 0) {
        reply_error(s->id, "read", strerror(errno));
    } else {
        buf_t b = {0};
        buf_fmt(&b, "{\"op\":\"done\",\"size\":%lld}", s->size);
        jframe(s->id, &b);
    }
    free_sess(s);
}

static void do_write(uint32_t id, const char *doc, size_t len) {
    char path[PATH_MAX];
    long long mode = 0644;
    jval v;
    if (get_path(id, doc, len, path)) return;
    if (json_get(doc, len, "mode", &v) && (json_int(v, &mode) || mode < 0 || mode > 07777))
        return reply_error(id, "bad mode", NULL);
    sess_t *s = find(id) ? NULL : alloc_sess(id);
    if (!s) return reply_error(id, "too many sessions", NULL);
    /* write a temporary file beside the target, rename over it when complete */
    char *slash = strrchr(path, '/');
    int n = snprintf(s->tmp, sizeof s->tmp, "%.*s/.mvm-cp-%u-%d", (int)(slash - path),
                     path, id, (int)getpid());
    if (n < 0 || (size_t)n >= sizeof s->tmp) {
        s->kind = S_FREE;
        return reply_error(id, path, "path too long");
    }
    snprintf(s->dst, sizeof s->dst, "%s", path);
    as_entry(1);
    int fd = open(s->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    int e = errno;
    as_entry(0);
    if (fd < 0) {
        s->tmp[0] = 0;
        s->kind = S_FREE;
        return reply_error(id, path, strerror(e));
    }
    s->kind = S_WRITE;
    s->fd = fd;
    s->mode = (unsigned)mode;
    simple(id, "ready");
}

static void write_data(sess_t *s, const char *p, size_t n) {
    if ((unsigned long long)(s->size + (long long)n) > MAX_FILE) {
        reply_error(s->id, s->dst, "too large");
        free_sess(s);
        return;
    }
    while (n) {
        ssize_t w = write(s->fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            reply_error(s->id, s->dst, strerror(errno));
            free_sess(s);
            return;
        }
        p += w;
        n -= (size_t)w;
        s->size += w;
    }
}

static void finish_write(sess_t *s) {
    int err = 0;
    as_entry(1); /* fchmod and rename are checked against the fs uid */
    if (fchmod(s->fd, s->mode) || fsync(s->fd)) err = errno;
    if (!err && rename(s->tmp, s->dst)) err = errno;
    as_entry(0);
    if (err) {
        reply_error(s->id, s->dst, strerror(err));
    } else {
        s->tmp[0] = 0;
        buf_t b = {0};
        buf_fmt(&b, "{\"op\":\"done\",\"size\":%lld}", s->size);
        jframe(s->id, &b);
    }
    free_sess(s);
}

static void do_list(uint32_t id, const char *doc, size_t len) {
    char path[PATH_MAX];
    if (get_path(id, doc, len, path)) return;
    as_entry(1);
    int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int e = errno;
    as_entry(0);
    if (dfd < 0) return reply_error(id, path, strerror(e));
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return reply_error(id, path, strerror(errno));
    }
    buf_t b = {0};
    buf_str(&b, "{\"op\":\"entries\",\"entries\":[");
    int first = 1, count = 0;
    struct dirent *de;
    while ((de = readdir(d)) && count < 10000) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        struct stat st;
        if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW)) continue;
        const char *type = S_ISDIR(st.st_mode) ? "dir" : S_ISREG(st.st_mode) ? "file"
                         : S_ISLNK(st.st_mode) ? "symlink" : "other";
        if (!first) buf_str(&b, ",");
        first = 0;
        buf_str(&b, "{\"name\":");
        buf_jstr(&b, de->d_name, strlen(de->d_name));
        buf_fmt(&b, ",\"type\":\"%s\",\"mode\":%u,\"size\":%lld}", type,
                (unsigned)(st.st_mode & 07777), (long long)st.st_size);
        count++;
    }
    closedir(d);
    buf_str(&b, "]}");
    if (b.len > MAX_FRAME) {
        free(b.data);
        return reply_error(id, path, "listing too large");
    }
    jframe(id, &b);
}

/* ---- status and health ---- */

static double uptime(void) {
    double u = 0;
    FILE *f = fopen("/proc/uptime", "r");
    if (f) {
        if (fscanf(f, "%lf", &u) != 1) u = 0;
        fclose(f);
    }
    return u;
}

static int tcp_ready(int portno) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)portno);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = 0;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        ok = 1;
    } else if (errno == EINPROGRESS) {
        struct pollfd p = {fd, POLLOUT, 0};
        int err = 0;
        socklen_t l = sizeof err;
        if (poll(&p, 1, 500) == 1 && !getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l) && !err)
            ok = 1;
    }
    close(fd);
    return ok;
}

/* run /etc/mvm/run/ready-NAME as the entrypoint uid, bounded by 5 s */
static int command_ready(const char *name) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "/etc/mvm/run/ready-%s", name);
    int ep[2];
    if (pipe2(ep, O_CLOEXEC)) return 0;
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    char *argv[] = {path, NULL};
    char *envp[] = {"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", NULL};
    pid_t pid = fork();
    if (pid == 0) child_exec(argv, envp, "/", -1, devnull, devnull, devnull, ep[1]);
    close(ep[1]);
    close(ep[0]);
    if (devnull >= 0) close(devnull);
    if (pid < 0) return 0;
    for (int i = 0; i < 500; i++) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) return WIFEXITED(st) && WEXITSTATUS(st) == 0;
        usleep(10000);
    }
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return 0;
}

static void svc_field(const char *text, const char *key, char *out, size_t cap) {
    size_t kl = strlen(key);
    out[0] = 0;
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (!strncmp(p, key, kl) && p[kl] == '=') {
            size_t n = strcspn(p + kl + 1, "\n");
            if (n >= cap) n = cap - 1;
            memcpy(out, p + kl + 1, n);
            out[n] = 0;
            return;
        }
    }
}

static int read_small(const char *path, char *out, size_t cap) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) return -1;
    ssize_t n = read(fd, out, cap - 1);
    close(fd);
    if (n < 0) return -1;
    out[n] = 0;
    return 0;
}

static void do_status(uint32_t id) {
    buf_t b = {0};
    double now = uptime();
    buf_fmt(&b, "{\"op\":\"status\",\"uptime\":%.2f,\"sealed\":%s,\"services\":[", now,
            sealed ? "true" : "false");
    DIR *d = opendir(SVC_DIR);
    int first = 1;
    struct dirent *de;
    while (d && (de = readdir(d))) {
        if (de->d_name[0] == '.' || strlen(de->d_name) > 64) continue;
        char path[PATH_MAX], text[1024], state[32], pid[16], restarts[16], started[32], rc[16];
        snprintf(path, sizeof path, SVC_DIR "/%s", de->d_name);
        if (read_small(path, text, sizeof text)) continue;
        svc_field(text, "state", state, sizeof state);
        svc_field(text, "pid", pid, sizeof pid);
        svc_field(text, "restarts", restarts, sizeof restarts);
        svc_field(text, "started", started, sizeof started);
        svc_field(text, "rc", rc, sizeof rc);
        /* readiness: /etc/mvm/ready/NAME is "tcp PORT TIMEOUT" or "command TIMEOUT" */
        const char *health = "none";
        char ready[128];
        snprintf(path, sizeof path, READY_DIR "/%s", de->d_name);
        if (read_small(path, ready, sizeof ready) == 0) {
            int portno = 0;
            double timeout = 60;
            int ok;
            if (sscanf(ready, "tcp %d %lf", &portno, &timeout) >= 1) {
                ok = strcmp(state, "running") == 0 && tcp_ready(portno);
            } else {
                sscanf(ready, "command %lf", &timeout);
                ok = strcmp(state, "running") == 0 && command_ready(de->d_name);
            }
            if (ok) health = "ready";
            else if (strcmp(state, "running") != 0) health = "down";
            else health = now - atof(started) > timeout ? "unhealthy" : "starting";
        }
        if (!first) buf_str(&b, ",");
        first = 0;
        buf_str(&b, "{\"name\":");
        buf_jstr(&b, de->d_name, strlen(de->d_name));
        buf_str(&b, ",\"state\":");
        buf_jstr(&b, state, strlen(state));
        buf_fmt(&b, ",\"pid\":%d,\"restarts\":%d,\"health\":\"%s\"", atoi(pid), atoi(restarts),
                health);
        if (rc[0]) buf_fmt(&b, ",\"rc\":%d", atoi(rc));
        buf_str(&b, "}");
    }
    if (d) closedir(d);
    buf_str(&b, "]}");
    jframe(id, &b);
}

/* ---- requests ---- */

/* Seam for the root-side verbs (remount, restart, identity, reseed): they are
 * forwarded to /init's root helper on its control port; this image's /init has
 * none yet, so they are refused by name. */
static int root_verb(uint32_t id, const char *op) {
    static const char *verbs[] = {"remount", "restart", "identity", "reseed", NULL};
    for (int i = 0; verbs[i]; i++) {
        if (!strcmp(op, verbs[i])) {
            reply_error(id, op, "needs /init's root helper, which this image does not have");
            return 1;
        }
    }
    return 0;
}

static void handle_json(uint32_t id, const char *doc, size_t len) {
    char op[32];
    jval v;
    if (!json_get(doc, len, "op", &v) || json_string(v, op, sizeof op))
        return reply_error(id, "a request needs an op", NULL);
    if (id == 0) {
        if (!strcmp(op, "hello")) {
            long long nonce = -1;
            if (json_get(doc, len, "nonce", &v)) json_int(v, &nonce);
            drop_sessions(); /* a (re)connected host starts from nothing */
            return hello(nonce);
        }
        return;
    }
    sess_t *s = find(id);
    if (s) {
        if (!strcmp(op, "eof")) {
            if (s->kind == S_WRITE) return finish_write(s);
            if (s->kind == S_EXEC) {
                s->eof_pending = 1;
                flush_stdin(s);
            }
        } else if (!strcmp(op, "signal") && s->kind == S_EXEC && json_get(doc, len, "signal", &v)) {
            long long sig;
            if (!json_int(v, &sig) && sig > 0 && sig < 65 && !s->reaped) {
                kill(-s->pid, (int)sig);
                kill(s->pid, (int)sig);
            }
        } else if (!strcmp(op, "resize") && s->kind == S_EXEC && s->pty) {
            long long r = 24, c = 80;
            if (json_get(doc, len, "rows", &v)) json_int(v, &r);
            if (json_get(doc, len, "cols", &v)) json_int(v, &c);
            struct winsize ws = {(unsigned short)r, (unsigned short)c, 0, 0};
            ioctl(s->out_fd, TIOCSWINSZ, &ws);
        } else if (!strcmp(op, "cancel")) {
            free_sess(s);
        }
        return;
    }
    if (!strcmp(op, "ping")) return simple(id, "pong");
    if (!strcmp(op, "status")) return do_status(id);
    if (root_verb(id, op)) return;
    int guarded = !strcmp(op, "exec") || !strcmp(op, "read") || !strcmp(op, "write") ||
                  !strcmp(op, "list");
    if (guarded && sealed) return reply_error(id, op, "not available: the image is sealed");
    if (!strcmp(op, "exec")) return do_exec(id, doc, len);
    if (!strcmp(op, "read")) return do_read(id, doc, len);
    if (!strcmp(op, "write")) return do_write(id, doc, len);
    if (!strcmp(op, "list")) return do_list(id, doc, len);
    if (!strcmp(op, "eof") || !strcmp(op, "signal") || !strcmp(op, "resize") ||
        !strcmp(op, "cancel"))
        return; /* for a stream that already ended */
    reply_error(id, "unknown op", op);
}

static void handle_data(uint32_t id, const char *p, size_t n) {
    sess_t *s = find(id);
    if (!s) return;
    if (s->kind == S_WRITE) return write_data(s, p, n);
    if (s->kind != S_EXEC || s->in_fd < 0 || s->eof_pending) return;
    /* queued, written as the command takes it (never a blocking write: a command
     * that does not read its stdin must not stall every other session); the main
     * loop stops reading the port while too much is queued */
    if (buf_add(&s->inq, p, n)) {
        closefd(&s->in_fd);
        return;
    }
    flush_stdin(s);
}

static void parse_input(void) {
    size_t off = 0;
    while (in.len - off >= HDR) {
        const unsigned char *h = (const unsigned char *)in.data + off;
        if (memcmp(h, "MVA1", 4) != 0) {
            off++; /* resync: scan for the next magic */
            continue;
        }
        uint32_t id, n;
        memcpy(&id, h + 8, 4);
        memcpy(&n, h + 12, 4);
        id = ntohl(id);
        n = ntohl(n);
        if (n > MAX_FRAME) {
            off++;
            continue;
        }
        if (in.len - off < HDR + n) break;
        const char *p = in.data + off + HDR;
        char type = (char)h[4];
        off += HDR + n;
        if (type == 'J') handle_json(id, p, n);
        else if (type == 'I') handle_data(id, p, n);
        if (!connected) return; /* a handler may have reset the buffers */
    }
    buf_drop(&in, off);
}

/* ---- main loop ---- */

static void reap(void) {
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, WNOHANG)) > 0) {
        for (int i = 0; i < MAX_SESS; i++) {
            sess_t *s = &sess[i];
            if (s->kind == S_EXEC && s->pid == pid) {
                s->reaped = 1;
                s->code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                s->sig = WIFSIGNALED(st) ? WTERMSIG(st) : 0;
                if (s->pty) {
                    /* drain what the command wrote before it ended, then stop: a
                     * background process may keep the slave open forever */
                    char tmp[CHUNK];
                    ssize_t n;
                    while ((n = read(s->out_fd, tmp, sizeof tmp)) > 0) frame('O', s->id, tmp, (size_t)n);
                    closefd(&s->out_fd);
                    closefd(&s->in_fd);
                }
                maybe_finish(s);
            }
        }
    }
}

static int host_present(void) {
    struct pollfd p = {port, POLLIN, 0};
    if (poll(&p, 1, 0) < 0) return 0;
    return !(p.revents & POLLHUP) || (p.revents & POLLIN);
}

static void set_connected(int c) {
    if (c == connected) return;
    connected = c;
    drop_all();
    if (c) hello(-1);
}

/* ---- transports ---- */

enum { T_DEVICE, T_VSOCK, T_UNIX, T_BAD };

/* which transport PORT names, and its address (vsock port / unix path); pure */
static int transport_of(const char *spec, unsigned *vport, const char **path) {
    if (!strncmp(spec, "vsock:", 6)) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(spec + 6, &end, 10);
        if (errno || end == spec + 6 || *end || v == 0 || v >= 0xffffffffu) return T_BAD;
        *vport = (unsigned)v;
        return T_VSOCK;
    }
    if (!strncmp(spec, "unix:", 5)) {
        *path = spec + 5;
        if (!**path || strlen(*path) >= sizeof((struct sockaddr_un *)0)->sun_path) return T_BAD;
        return T_UNIX;
    }
    *path = spec;
    return *spec ? T_DEVICE : T_BAD;
}

static int open_listener(int kind, unsigned vport, const char *path) {
    int fd = socket(kind == T_VSOCK ? AF_VSOCK : AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int r;
    if (kind == T_VSOCK) {
        struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = vport};
        r = bind(fd, (struct sockaddr *)&a, sizeof a);
    } else {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
        mode_t old = umask(0077); /* the socket is the agent: its owner only */
        r = bind(fd, (struct sockaddr *)&a, sizeof a);
        umask(old);
    }
    if (r || listen(fd, 1) || fcntl(fd, F_SETFL, O_NONBLOCK)) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* a host connected to the listener: it becomes the port (vsock: only from the host) */
static void accept_host(void) {
    int c = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) return;
    struct sockaddr_storage peer;
    socklen_t l = sizeof peer;
    if (getsockname(c, (struct sockaddr *)&peer, &l) == 0 && peer.ss_family == AF_VSOCK) {
        struct sockaddr_vm *vm = (struct sockaddr_vm *)&peer;
        l = sizeof peer;
        if (getpeername(c, (struct sockaddr *)&peer, &l) || vm->svm_cid != VMADDR_CID_HOST) {
            close(c);
            return;
        }
    }
    port = c;
    set_connected(1);
}

/* the host went away: sessions end; a listener's connection is closed for the next */
static void host_gone(void) {
    set_connected(0);
    if (listen_fd >= 0 && port >= 0) {
        close(port);
        port = -1;
    }
}

int main(int argc, char **argv) {
    int opt;
    while ((opt = getopt(argc, argv, "a:e:h:s")) != -1) {
        switch (opt) {
            case 'a': agent_uid = (uid_t)atoi(optarg); break;
            case 'e': entry_uid = (uid_t)atoi(optarg); break;
            case 'h': snprintf(home, sizeof home, "%s", optarg); break;
            case 's': sealed = 1; break;
            default: return 2;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "usage: mvm-guest-agent [-s] [-a UID] [-e UID] [-h HOME] "
                        "DEVICE|vsock:PORT|unix:PATH\n");
        return 2;
    }
    unsigned vport = 0;
    const char *path = NULL;
    int kind = transport_of(argv[optind], &vport, &path);
    if (kind == T_BAD) {
        fprintf(stderr, "mvm-guest-agent: bad port %s\n", argv[optind]);
        return 2;
    }
    /* a listener is bound before the privileges go (its address is set up as root) */
    if (kind != T_DEVICE) listen_fd = open_listener(kind, vport, path);
    drop_privileges();
    signal(SIGPIPE, SIG_IGN);
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGCHLD);
    sigaddset(&mask, SIGIO);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    if (kind == T_DEVICE) {
        port = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (port >= 0) {
            fcntl(port, F_SETOWN, getpid());
            fcntl(port, F_SETFL, O_NONBLOCK | O_ASYNC);
        }
    }
    if ((kind == T_DEVICE && port < 0) || (kind != T_DEVICE && listen_fd < 0) || sfd < 0) {
        logmsg("cannot open the agent port: %s", strerror(errno));
        return 1;
    }
    {
        char msg[64];
        snprintf(msg, sizeof msg, "%d%s", (int)getuid(), sealed ? " (sealed)" : "");
        logmsg("mvm-agent: started as uid %s", msg);
    }
    if (listen_fd < 0) set_connected(host_present());
    struct pollfd pf[2 + 3 * MAX_SESS];
    sess_t *owner[2 + 3 * MAX_SESS];
    for (;;) {
        int n = 0;
        pf[n++] = (struct pollfd){sfd, POLLIN, 0};
        if (!connected && listen_fd >= 0) pf[n++] = (struct pollfd){listen_fd, POLLIN, 0};
        if (connected) {
            short want = (short)((queued_stdin() < IN_HIGH ? POLLIN : 0) | (out.len ? POLLOUT : 0));
            pf[n++] = (struct pollfd){port, want, 0};
            int room = out.len < OUT_HIGH;
            for (int i = 0; i < MAX_SESS; i++) {
                sess_t *s = &sess[i];
                if (s->kind != S_EXEC) continue;
                if (room && s->out_fd >= 0) { owner[n] = s; pf[n++] = (struct pollfd){s->out_fd, POLLIN, 0}; }
                if (room && s->err_fd >= 0) { owner[n] = s; pf[n++] = (struct pollfd){s->err_fd, POLLIN, 0}; }
                if (s->inq.len && s->in_fd >= 0 && s->in_fd != s->out_fd) {
                    owner[n] = s;
                    pf[n++] = (struct pollfd){s->in_fd, POLLOUT, 0};
                }
            }
        }
        int reading = 0;
        for (int i = 0; i < MAX_SESS && connected; i++)
            if (sess[i].kind == S_READ) reading = 1;
        int timeout = !connected ? (listen_fd >= 0 ? -1 : 1000) : (reading && out.len < OUT_HIGH) ? 0 : -1;
        int r = poll(pf, (nfds_t)n, timeout);
        if (r < 0 && errno != EINTR) return 1;
        if (pf[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == sizeof si) {}
            reap();
        }
        if (!connected) {
            if (listen_fd < 0) set_connected(host_present());
            else if (pf[1].revents & POLLIN) accept_host();
            continue;
        }
        struct pollfd *pp = &pf[1];
        if (pp->revents & POLLIN) {
            char tmp[CHUNK];
            ssize_t k = read(port, tmp, sizeof tmp);
            if (k > 0) {
                if (in.len + (size_t)k > 2 * (MAX_FRAME + HDR)) in.len = 0; /* garbage: resync */
                buf_add(&in, tmp, (size_t)k);
                parse_input();
            } else if (k == 0 || (k < 0 && listen_fd >= 0 && errno != EAGAIN && errno != EINTR)) {
                host_gone();
                continue;
            }
        } else if (pp->revents & (POLLHUP | POLLERR)) {
            host_gone();
            continue;
        }
        if (out.len && connected) {
            ssize_t w = write(port, out.data, out.len);
            if (w > 0) buf_drop(&out, (size_t)w);
        }
        for (int i = 2; i < n; i++) {
            sess_t *s = owner[i];
            if (s->kind != S_EXEC) continue;
            if (pf[i].events == POLLOUT) {
                if (pf[i].revents && pf[i].fd == s->in_fd) flush_stdin(s);
                continue;
            }
            if (!(pf[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            int is_err = pf[i].fd == s->err_fd;
            int *fdp = is_err ? &s->err_fd : &s->out_fd;
            if (*fdp != pf[i].fd) continue;
            char tmp[CHUNK];
            ssize_t k = read(*fdp, tmp, sizeof tmp);
            if (k > 0) {
                frame(is_err ? 'E' : 'O', s->id, tmp, (size_t)k);
            } else if (k == 0 || (errno != EAGAIN && errno != EINTR)) {
                closefd(fdp);
                if (s->pty) closefd(&s->in_fd);
                maybe_finish(s);
            }
        }
        for (int i = 0; i < MAX_SESS && out.len < OUT_HIGH; i++)
            if (sess[i].kind == S_READ) pump_read(&sess[i]);
    }
}
