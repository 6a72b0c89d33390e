/* mvm-reseed: for every line of 64-512 hex digits on stdin, credit those
 * bytes to the kernel's entropy pool (RNDADDENTROPY) and force the CRNG to
 * reseed now (RNDRESEEDCRNG), so clones restored from one snapshot diverge at
 * once, and answer the line on stdout: "0" done, "1" bad input, "2" the
 * kernel refused.  Exits at end of input with the last answer as its status.
 * Writing to /dev/urandom alone only mixes into the input pool: the output key
 * stays the snapshot's until the next periodic reseed.  /init keeps one
 * running on two FIFOs from boot, so a restore's reseed costs no fork or exec.
 * Freestanding (no libc); compiled on the host by mvm.image.guestbin with
 * -nostdlib and the flags listed there (EXTRA_FLAGS), like the agent.
 */
#define RNDADDENTROPY 0x40085203
#define RNDRESEEDCRNG 0x5207
static long sys(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}
static int hex(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}
static struct { int count; int size; unsigned char buf[256]; } e;
static long reseed(const char *in, long n) {
    long i;
    if (n < 64 || n > 512 || n % 2) return 1;
    for (i = 0; i < n; i += 2) {
        int hi = hex(in[i]), lo = hex(in[i + 1]);
        if (hi < 0 || lo < 0) return 1;
        e.buf[i / 2] = (unsigned char)(hi << 4 | lo);
    }
    long fd = sys(2, (long)"/dev/urandom", 1 /* O_WRONLY */, 0);
    if (fd < 0) return 2;
    e.count = (int)(n / 2 * 8);
    e.size = (int)(n / 2);
    long rc = sys(16, fd, RNDADDENTROPY, (long)&e) == 0 && sys(16, fd, RNDRESEEDCRNG, 0) == 0 ? 0 : 2;
    sys(3, fd, 0, 0);
    return rc;
}
static char buf[1024];
void _start(void) {
    long have = 0, r, rc = 1;
    for (;;) {
        long i, start = 0;
        r = sys(0, 0, (long)(buf + have), sizeof buf - have);
        if (r <= 0) break;
        have += r;
        for (i = 0; i < have; i++) {
            if (buf[i] != '\n') continue;
            rc = reseed(buf + start, i - start);
            char a[2] = {(char)('0' + rc), '\n'};
            sys(1, 1, (long)a, 2);
            start = i + 1;
        }
        for (i = start; i < have; i++) buf[i - start] = buf[i];
        have -= start;
        if (have == (long)sizeof buf) have = 0; /* an endless line: drop it */
    }
    sys(60, rc, 0, 0);
    for (;;) {}
}
