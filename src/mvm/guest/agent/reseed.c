/* mvm-reseed: read 64-512 hex digits from stdin, credit those bytes to the
 * kernel's entropy pool (RNDADDENTROPY) and force the CRNG to reseed now
 * (RNDRESEEDCRNG), so clones restored from one snapshot diverge at once.
 * Writing to /dev/urandom alone only mixes into the input pool: the output
 * key stays the snapshot's until the next periodic reseed.  Exit 0 on
 * success, 1 on bad input, 2 if the kernel refused.
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
static char in[520];
static struct { int count; int size; unsigned char buf[256]; } e;
void _start(void) {
    long n = 0, r, rc = 1;
    while (n < (long)sizeof in && (r = sys(0, 0, (long)(in + n), sizeof in - n)) > 0) n += r;
    while (n > 0 && (in[n - 1] == '\n' || in[n - 1] == ' ')) n--;
    if (n >= 64 && n <= 512 && n % 2 == 0) {
        long i;
        for (i = 0; i < n; i += 2) {
            int hi = hex(in[i]), lo = hex(in[i + 1]);
            if (hi < 0 || lo < 0) break;
            e.buf[i / 2] = (unsigned char)(hi << 4 | lo);
        }
        if (i == n) {
            long fd = sys(2, (long)"/dev/urandom", 1 /* O_WRONLY */, 0);
            e.count = (int)(n / 2 * 8);
            e.size = (int)(n / 2);
            rc = fd >= 0 && sys(16, fd, RNDADDENTROPY, (long)&e) == 0 &&
                 sys(16, fd, RNDRESEEDCRNG, 0) == 0 ? 0 : 2;
        }
    }
    sys(60, rc, 0, 0);
    for (;;) {}
}
