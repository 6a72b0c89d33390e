/* See json.h.  A value is located by skipping over it (skip_value); nothing is
 * allocated while reading. */
#include "json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 16

int buf_add(buf_t *b, const void *p, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n) cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) return -1;
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int buf_str(buf_t *b, const char *s) { return buf_add(b, s, strlen(s)); }

int buf_jstr(buf_t *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    if (buf_add(b, "\"", 1)) return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        char esc[7];
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            if (buf_add(b, esc, 2)) return -1;
        } else if (c < 0x20 || c == 0x7f) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            if (buf_add(b, esc, 6)) return -1;
        } else if (buf_add(b, &s[i], 1)) {
            return -1;
        }
    }
    return buf_add(b, "\"", 1);
}

int buf_fmt(buf_t *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) return -1;
    return buf_add(b, tmp, (size_t)n);
}

void buf_drop(buf_t *b, size_t n) {
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

static const char *ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static const char *skip_string(const char *p, const char *end) {
    if (p >= end || *p != '"') return NULL;
    for (p++; p < end; p++) {
        if (*p == '\\') {
            p++;
        } else if (*p == '"') {
            return p + 1;
        }
    }
    return NULL;
}

static const char *skip_value(const char *p, const char *end, int depth) {
    p = ws(p, end);
    if (p >= end || depth > MAX_DEPTH) return NULL;
    if (*p == '"') return skip_string(p, end);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = ws(p + 1, end);
        if (p < end && *p == close) return p + 1;
        for (;;) {
            if (close == '}') {
                p = skip_string(ws(p, end), end);
                if (!p) return NULL;
                p = ws(p, end);
                if (p >= end || *p != ':') return NULL;
                p++;
            }
            p = skip_value(p, end, depth + 1);
            if (!p) return NULL;
            p = ws(p, end);
            if (p >= end) return NULL;
            if (*p == close) return p + 1;
            if (*p != ',') return NULL;
            p++;
        }
    }
    /* number, true, false, null */
    const char *s = p;
    while (p < end && (strchr("+-.eE", *p) || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z')))
        p++;
    return p > s ? p : NULL;
}

int json_object_next(jval obj, const char **it, char *key, size_t keycap, jval *val) {
    const char *p = *it ? *it : obj.p;
    const char *end = obj.end;
    p = ws(p, end);
    if (!*it) {
        if (p >= end || *p != '{') return 0;
        p = ws(p + 1, end);
    } else {
        if (p >= end || *p != ',') return 0;
        p = ws(p + 1, end);
    }
    if (p >= end || *p != '"') return 0;
    const char *kend = skip_string(p, end);
    if (!kend) return 0;
    jval k = {p, kend};
    if (json_string(k, key, keycap)) return 0;
    p = ws(kend, end);
    if (p >= end || *p != ':') return 0;
    const char *vs = ws(p + 1, end);
    const char *ve = skip_value(vs, end, 1);
    if (!ve) return 0;
    val->p = vs;
    val->end = ve;
    *it = ve;
    return 1;
}

int json_get(const char *doc, size_t len, const char *key, jval *out) {
    jval obj = {doc, doc + len};
    const char *it = NULL;
    char k[64];
    jval v;
    while (json_object_next(obj, &it, k, sizeof k, &v)) {
        if (strcmp(k, key) == 0) {
            *out = v;
            return 1;
        }
    }
    return 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int json_string(jval v, char *out, size_t cap) {
    const char *p = v.p, *end = v.end;
    size_t n = 0;
    if (p >= end || *p != '"' || cap == 0) return -1;
    for (p++; p < end && *p != '"'; p++) {
        unsigned cp;
        if (*p == '\\') {
            if (++p >= end) return -1;
            switch (*p) {
                case 'n': cp = '\n'; break;
                case 't': cp = '\t'; break;
                case 'r': cp = '\r'; break;
                case 'b': cp = '\b'; break;
                case 'f': cp = '\f'; break;
                case 'u': {
                    if (end - p < 5) return -1;
                    cp = 0;
                    for (int i = 1; i <= 4; i++) {
                        int h = hexval(p[i]);
                        if (h < 0) return -1;
                        cp = cp * 16 + (unsigned)h;
                    }
                    p += 4;
                    break;
                }
                default: cp = (unsigned char)*p;
            }
        } else {
            cp = (unsigned char)*p;
            if (n + 1 >= cap) return -1;
            out[n++] = (char)cp;
            continue;
        }
        /* encode escaped code point as UTF-8 (surrogates passed through as-is) */
        char u[4];
        size_t k;
        if (cp < 0x80) { u[0] = (char)cp; k = 1; }
        else if (cp < 0x800) { u[0] = (char)(0xc0 | cp >> 6); u[1] = (char)(0x80 | (cp & 63)); k = 2; }
        else { u[0] = (char)(0xe0 | cp >> 12); u[1] = (char)(0x80 | ((cp >> 6) & 63)); u[2] = (char)(0x80 | (cp & 63)); k = 3; }
        if (cp == 0) return -1; /* no NUL inside paths or argv */
        if (n + k >= cap) return -1;
        memcpy(out + n, u, k);
        n += k;
    }
    if (p >= end) return -1;
    out[n] = 0;
    return 0;
}

int json_int(jval v, long long *out) {
    char tmp[32];
    size_t n = (size_t)(v.end - v.p);
    if (n == 0 || n >= sizeof tmp) return -1;
    memcpy(tmp, v.p, n);
    tmp[n] = 0;
    char *e;
    long long x = strtoll(tmp, &e, 10);
    if (*e) return -1;
    *out = x;
    return 0;
}

int json_bool(jval v, int *out) {
    size_t n = (size_t)(v.end - v.p);
    if (n == 4 && memcmp(v.p, "true", 4) == 0) { *out = 1; return 0; }
    if (n == 5 && memcmp(v.p, "false", 5) == 0) { *out = 0; return 0; }
    return -1;
}

int json_array_next(jval arr, const char **it, jval *elem) {
    const char *p = *it ? *it : arr.p;
    const char *end = arr.end;
    p = ws(p, end);
    if (!*it) {
        if (p >= end || *p != '[') return 0;
        p = ws(p + 1, end);
        if (p < end && *p == ']') return 0;
    } else {
        if (p >= end || *p != ',') return 0;
        p = ws(p + 1, end);
    }
    const char *e = skip_value(p, end, 1);
    if (!e) return 0;
    elem->p = p;
    elem->end = e;
    *it = e;
    return 1;
}
