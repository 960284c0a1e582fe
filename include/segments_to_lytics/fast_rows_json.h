/* JSON scanning and CSV cell writing for fast_rows.c: the parts that know JSON and RFC 4180 but
 * nothing of columns. Every scanner validates as strictly as orjson (UTF-8 as Rust's
 * str::from_utf8, no lone surrogates, no infinity) and returns the position after its token, or
 * STOP for anything it does not accept, which sends the line to the Python path.
 */
#ifndef FAST_ROWS_JSON_H
#define FAST_ROWS_JSON_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_SHORT_INT 18 /* digits: always an exact int64 in orjson, written as it is */

/* ---- growable byte buffer ---------------------------------------------------------------- */

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t more) {
    if (b->len + more <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + more) cap *= 2;
    char *data = PyMem_Realloc(b->data, cap);
    if (!data) return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline int buf_put(Buf *b, const char *s, Py_ssize_t n) {
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->len, s, n);
    b->len += n;
    return 0;
}

static inline int buf_byte(Buf *b, char c) {
    if (b->len >= b->cap && buf_reserve(b, 1) < 0) return -1;
    b->data[b->len++] = c;
    return 0;
}

/* ---- JSON scanning (validating, as strict as orjson; anything doubtful stops) ---------------- */

#define STOP NULL /* every scanner returns the position after its token, or STOP */

static inline const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

static inline int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static inline int hex4(const char *p) {
    int a = hexval(p[0]), b = hexval(p[1]), c = hexval(p[2]), d = hexval(p[3]);
    if ((a | b | c | d) < 0) return -1;
    return (a << 12) | (b << 8) | (c << 4) | d;
}

/* One UTF-8 sequence starting at p (a byte >= 0x80): its length, or 0 if invalid (overlong,
   surrogate, > U+10FFFF, truncated), the rules of Rust's str::from_utf8 that orjson applies. */
static inline int utf8_len(const unsigned char *p, const unsigned char *end) {
    unsigned char c = p[0];
    if (c >= 0xC2 && c <= 0xDF) return (end - p >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (end - p < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && p[1] < 0xA0) return 0;  /* overlong */
        if (c == 0xED && p[1] >= 0xA0) return 0; /* surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (end - p < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 0;
        if (c == 0xF0 && p[1] < 0x90) return 0; /* overlong */
        if (c == 0xF4 && p[1] >= 0x90) return 0; /* > U+10FFFF */
        return 4;
    }
    return 0;
}

/* A string at p (on its opening quote). *escaped: it holds a backslash escape. */
static const char *scan_string(const char *p, const char *end, int *escaped) {
    const unsigned char *s = (const unsigned char *)p + 1, *e = (const unsigned char *)end;
    *escaped = 0;
    while (s < e) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        while (e - s >= 8) { /* 8 bytes at a time, to the first quote, backslash, control or high-bit byte */
            uint64_t v;
            memcpy(&v, s, 8);
            uint64_t quote = v ^ 0x2222222222222222ULL, slash = v ^ 0x5C5C5C5C5C5C5C5CULL;
            uint64_t special = (((quote - 0x0101010101010101ULL) & ~quote) | ((slash - 0x0101010101010101ULL) & ~slash) |
                                (v - 0x2020202020202020ULL) | v) & 0x8080808080808080ULL;
            if (special) { /* the lowest flagged byte is a real one (borrows only run upwards) */
                s += __builtin_ctzll(special) >> 3;
                break;
            }
            s += 8;
        }
#endif
        if (s >= e) break;
        unsigned char c = *s;
        if (c == '"') return (const char *)s + 1;
        if (c < 0x20) return STOP;
        if (c < 0x80) {
            if (c == '\\') {
                *escaped = 1;
                if (s + 1 >= e) return STOP;
                unsigned char x = s[1];
                if (x == 'u') {
                    if (e - s < 6) return STOP;
                    int u = hex4((const char *)s + 2);
                    if (u < 0 || (u >= 0xDC00 && u <= 0xDFFF)) return STOP;
                    if (u >= 0xD800 && u <= 0xDBFF) { /* a pair, or orjson refuses it */
                        if (e - s < 12 || s[6] != '\\' || s[7] != 'u') return STOP;
                        int lo = hex4((const char *)s + 8);
                        if (lo < 0xDC00 || lo > 0xDFFF) return STOP;
                        s += 12;
                    } else {
                        s += 6;
                    }
                    continue;
                }
                if (!strchr("\"\\/bfnrt", x) || x == 0) return STOP;
                s += 2;
                continue;
            }
            s++;
            continue;
        }
        int n = utf8_len(s, e);
        if (!n) return STOP;
        s += n;
    }
    return STOP;
}

/* The number token p[0:len] as Python's float() reads it: 1 (*d set), or 0 for a token it does not
   take here (longer than 63 characters). */
static int number_value(const char *p, Py_ssize_t len, double *d) {
    char small[64];
    if (len >= (Py_ssize_t)sizeof(small)) return 0;
    memcpy(small, p, len);
    small[len] = 0;
    *d = PyOS_string_to_double(small, NULL, NULL);
    if (*d == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* A number at p. *kind: 0 an integer of <= 18 digits, 1 a longer integer, 2 a fraction/exponent. */
static const char *scan_number(const char *p, const char *end, int *kind) {
    const char *s = p;
    if (s < end && *s == '-') s++;
    if (s >= end) return STOP;
    const char *digits = s;
    if (*s == '0') {
        s++;
    } else if (*s >= '1' && *s <= '9') {
        while (s < end && *s >= '0' && *s <= '9') s++;
    } else {
        return STOP;
    }
    Py_ssize_t ndigits = s - digits;
    int exponent = 0, fraction = 0;
    if (s < end && *s == '.') {
        s++;
        const char *f = s;
        while (s < end && *s >= '0' && *s <= '9') s++;
        if (s == f) return STOP;
        fraction = 1;
    }
    if (s < end && (*s == 'e' || *s == 'E')) {
        s++;
        if (s < end && (*s == '+' || *s == '-')) s++;
        const char *x = s;
        while (s < end && *s >= '0' && *s <= '9') s++;
        if (s == x) return STOP;
        exponent = 1;
    }
    double d;
    if ((exponent || ndigits > 300) && /* could overflow to infinity, which orjson refuses */
        (!number_value(p, s - p, &d) || !isfinite(d)))
        return STOP;
    *kind = (exponent || fraction) ? 2 : ndigits > MAX_SHORT_INT ? 1 : 0;
    return s;
}

/* After an item of an object or array (p just past it): 1 and p on the next item after a comma,
   0 and p past `close`, or -1 for anything else. */
static inline int next_item(const char **pp, const char *end, char close) {
    const char *p = skip_ws(*pp, end);
    if (p < end && *p == ',') {
        *pp = skip_ws(p + 1, end);
        return 1;
    }
    if (p < end && *p == close) {
        *pp = p + 1;
        return 0;
    }
    return -1;
}

/* ---- writing cells ---------------------------------------------------------------------- */

/* The text of a (valid) JSON string at p, unescaped, appended to b. */
static int put_unescaped(Buf *b, const char *p, const char *end_quote) {
    const char *s = p + 1;
    while (s < end_quote) {
        const char *run = s;
        while (s < end_quote && *s != '\\') s++;
        if (s > run && buf_put(b, run, s - run) < 0) return -1;
        if (s >= end_quote) break;
        char x = s[1], c;
        if (x == 'u') {
            unsigned u = (unsigned)hex4(s + 2);
            s += 6;
            if (u >= 0xD800 && u <= 0xDBFF) {
                unsigned lo = (unsigned)hex4(s + 2);
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                s += 6;
            }
            char enc[4];
            int n;
            if (u < 0x80) { enc[0] = (char)u; n = 1; }
            else if (u < 0x800) { enc[0] = (char)(0xC0 | (u >> 6)); enc[1] = (char)(0x80 | (u & 0x3F)); n = 2; }
            else if (u < 0x10000) {
                enc[0] = (char)(0xE0 | (u >> 12)); enc[1] = (char)(0x80 | ((u >> 6) & 0x3F));
                enc[2] = (char)(0x80 | (u & 0x3F)); n = 3;
            } else {
                enc[0] = (char)(0xF0 | (u >> 18)); enc[1] = (char)(0x80 | ((u >> 12) & 0x3F));
                enc[2] = (char)(0x80 | ((u >> 6) & 0x3F)); enc[3] = (char)(0x80 | (u & 0x3F)); n = 4;
            }
            if (buf_put(b, enc, n) < 0) return -1;
            continue;
        }
        switch (x) {
        case 'b': c = '\b'; break;
        case 'f': c = '\f'; break;
        case 'n': c = '\n'; break;
        case 'r': c = '\r'; break;
        case 't': c = '\t'; break;
        default: c = x; /* " \ / */
        }
        if (buf_byte(b, c) < 0) return -1;
        s += 2;
    }
    return 0;
}

/* A string as orjson.dumps writes it: " \ and controls escaped, everything else as is. */
static int put_json_string(Buf *tmp, Buf *b, const char *p, const char *end_quote) {
    tmp->len = 0;
    if (put_unescaped(tmp, p, end_quote) < 0) return -1;
    if (buf_byte(b, '"') < 0) return -1;
    for (Py_ssize_t i = 0; i < tmp->len; i++) {
        unsigned char c = (unsigned char)tmp->data[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            if (buf_byte(b, (char)c) < 0) return -1;
            continue;
        }
        char esc[7];
        int n = 2;
        esc[0] = '\\';
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            n = 6;
        }
        if (buf_put(b, esc, n) < 0) return -1;
    }
    return buf_byte(b, '"');
}

/* A list or object as orjson.dumps writes it (compact). 1: done, 0: not reproduced here, -1: error. */
static int put_json(Buf *tmp, Buf *b, const char **pp, const char *end) {
    const char *p = *pp;
    int escaped, kind;
    if (*p == '"') {
        const char *after = scan_string(p, end, &escaped);
        if (escaped) {
            /* put_json_string unescapes into tmp: nested strings are written one at a time */
            if (put_json_string(tmp, b, p, after - 1) < 0) return -1;
        } else if (buf_put(b, p, after - p) < 0) {
            return -1;
        }
        *pp = after;
        return 1;
    }
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        const char *keys[32];
        Py_ssize_t keylens[32];
        int nkeys = 0;
        if (buf_byte(b, *p) < 0) return -1;
        p = skip_ws(p + 1, end);
        int first = 1;
        while (*p != close) {
            if (!first) {
                if (buf_byte(b, ',') < 0) return -1;
                p = skip_ws(p + 1, end); /* the comma */
            }
            first = 0;
            if (close == '}') {
                const char *after = scan_string(p, end, &escaped);
                if (escaped || nkeys == 32) return 0; /* duplicate keys could hide behind escapes */
                for (int k = 0; k < nkeys; k++)
                    if (keylens[k] == after - p && memcmp(keys[k], p, after - p) == 0) return 0;
                keys[nkeys] = p;
                keylens[nkeys++] = after - p;
                if (buf_put(b, p, after - p) < 0 || buf_byte(b, ':') < 0) return -1;
                p = skip_ws(skip_ws(after, end) + 1, end); /* the colon */
            }
            int r = put_json(tmp, b, &p, end);
            if (r <= 0) return r;
            p = skip_ws(p, end);
        }
        if (buf_byte(b, close) < 0) return -1;
        *pp = p + 1;
        return 1;
    }
    if (*p == 't' || *p == 'n') {
        if (buf_put(b, p, 4) < 0) return -1;
        *pp = p + 4;
        return 1;
    }
    if (*p == 'f') {
        if (buf_put(b, p, 5) < 0) return -1;
        *pp = p + 5;
        return 1;
    }
    const char *after = scan_number(p, end, &kind);
    if (kind != 0 || (after - p == 2 && p[0] == '-' && p[1] == '0')) return 0; /* floats: orjson's own format */
    if (buf_put(b, p, after - p) < 0) return -1;
    *pp = after;
    return 1;
}

/* A cell onto the row, quoted as csv.writer's QUOTE_MINIMAL would. */
static int put_quoted(Buf *row, const Buf *cell) {
    const char *s = cell->data;
    Py_ssize_t n = cell->len;
    int quote = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (s[i] == '"' || s[i] == ',' || s[i] == '\r' || s[i] == '\n') {
            quote = 1;
            break;
        }
    if (!quote) return n ? buf_put(row, s, n) : 0;
    if (buf_reserve(row, 2 * n + 2) < 0) return -1;
    char *o = row->data + row->len;
    *o++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] == '"') *o++ = '"';
        *o++ = s[i];
    }
    *o++ = '"';
    row->len = o - row->data;
    return 0;
}

#endif
