/* Minimal JSON reading for the agent's requests (flat objects whose values are
 * strings, integers, booleans, arrays of strings and objects of strings), and a
 * growable output buffer with JSON string escaping.  Requests come from the
 * host, which is trusted more than the guest, but every read is still bounded:
 * a malformed request is an error reply, never a crash. */
#ifndef MVM_AGENT_JSON_H
#define MVM_AGENT_JSON_H

#include <stddef.h>

typedef struct {
    char *data;
    size_t len, cap;
} buf_t;

int buf_add(buf_t *b, const void *p, size_t n);
int buf_str(buf_t *b, const char *s);
/* append s as a JSON string literal (quotes included); bytes >= 0x80 pass through */
int buf_jstr(buf_t *b, const char *s, size_t n);
int buf_fmt(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_drop(buf_t *b, size_t n); /* remove n bytes from the front */

/* A value inside a JSON document: [p, end) */
typedef struct {
    const char *p, *end;
} jval;

/* top-level object member: returns 1 and sets *out if key is present */
int json_get(const char *doc, size_t len, const char *key, jval *out);
/* decode a string value into out (NUL-terminated, at most cap-1 bytes); 0 on success */
int json_string(jval v, char *out, size_t cap);
int json_int(jval v, long long *out);
int json_bool(jval v, int *out);
/* iterate an array: *it starts at NULL; returns 1 with the next element in *elem */
int json_array_next(jval arr, const char **it, jval *elem);
/* iterate an object: key (decoded) and value */
int json_object_next(jval obj, const char **it, char *key, size_t keycap, jval *val);

#endif
