/* mvm-reseed: read up to 256 bytes from stdin, add them to the kernel's
 * entropy pool (RNDADDENTROPY, credited) and force the CRNG to reseed now
 * (RNDRESEEDCRNG), so clones restored from one snapshot diverge at once.
 * Writing to /dev/urandom alone only mixes into the input pool: the output
 * key stays the snapshot's until the next periodic reseed.
 * Built freestanding (no libc): cc -Os -static -nostdlib -fno-pie -no-pie
 *   -fno-asynchronous-unwind-tables -Wl,--build-id=none -s -o mvm-reseed mvm-reseed.c
 */
#define RNDADDENTROPY 0x40085203
#define RNDRESEEDCRNG 0x5207
static long sys(long n, long a, long b, long c) {
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return r;
}
static struct { int count; int size; unsigned char buf[256]; } e;
void _start(void) {
    long n = 0, r;
    while (n < (long)sizeof e.buf && (r = sys(0, 0, (long)(e.buf + n), sizeof e.buf - n)) > 0) n += r;
    long fd = sys(2, (long)"/dev/urandom", 1 /* O_WRONLY */, 0);
    long rc = 1;
    if (fd >= 0 && n > 0) {
        e.count = (int)(n * 8);
        e.size = (int)n;
        rc = sys(16, fd, RNDADDENTROPY, (long)&e) == 0 && sys(16, fd, RNDRESEEDCRNG, 0) == 0 ? 0 : 2;
    }
    sys(60, rc, 0, 0);
    for (;;) {}
}
