/* Native row writer for the shaping hot loop (optional; csv_shape.py falls back to Python).
 *
 * RowWriter(paths, timestamp_cell, id_index).rows(payloads, start) shapes NDJSON lines
 * payloads[start:] into CSV rows, exactly as the Python path does (orjson.loads, then
 * csv_cells.compile_row, then duplicate_ids.id_digest), and stops at the first line it does not
 * handle itself: a line that is not bytes, blank, not valid JSON, not an object, without a plain
 * string id, or holding anything whose Python shaping it does not reproduce byte for byte
 * (floats inside lists/objects, integers over 18 digits where they are written, duplicate keys
 * inside a written object, escaped keys on the way to a column, very deep nesting). That line
 * goes to the Python path, which quarantines it or shapes it; then the native writer goes on.
 * Stopping is always safe; writing a row that Python would write differently is the one thing
 * this file must never do (tests/unit/segments_to_lytics/test_fast_rows.py compares them).
 *
 * Returns (stop, rows, digests, lengths): payloads[start:stop] are all written, `rows` their CSV
 * lines each ending in CR LF, `digests` the u64 id digests (CRC-32 << 32 | Adler-32 of the id
 * cell), `lengths` the u32 byte length of each row with its CR LF.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <zlib.h>

#define MAX_DEPTH 64
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

/* ---- the column tree ----------------------------------------------------------------------- */

typedef struct Node {
    char *key; /* UTF-8 */
    Py_ssize_t keylen;
    int column; /* the CSV column this path ends at, or -1 */
    struct Node *children;
    int nchildren;
    int *below; /* the columns at or below this node, cleared when its key comes again */
    int nbelow;
} Node;

typedef struct {
    const char *start, *end; /* raw JSON of the value; start == NULL: missing */
    int escaped;             /* a string with backslash escapes */
} Span;

typedef struct {
    PyObject_HEAD
    Node root;
    int ncolumns;
    int id_index;
    char *ts;
    Py_ssize_t tslen;
    Span *spans;
    Buf cell, tmp;
} RowWriter;

static void node_free(Node *n) {
    for (int i = 0; i < n->nchildren; i++) node_free(&n->children[i]);
    PyMem_Free(n->children);
    PyMem_Free(n->below);
    PyMem_Free(n->key);
}

static Node *node_child(Node *n, const char *key, Py_ssize_t len, int create) {
    for (int i = 0; i < n->nchildren; i++)
        if (n->children[i].keylen == len && memcmp(n->children[i].key, key, len) == 0) return &n->children[i];
    if (!create) return NULL;
    Node *children = PyMem_Realloc(n->children, sizeof(Node) * (n->nchildren + 1));
    if (!children) return NULL;
    n->children = children;
    Node *c = &children[n->nchildren++];
    memset(c, 0, sizeof(Node));
    c->column = -1;
    c->key = PyMem_Malloc(len ? len : 1);
    if (!c->key) return NULL;
    memcpy(c->key, key, len);
    c->keylen = len;
    return c;
}

/* Collect the columns at or below n into n->below (and its children's). 0 ok, -1 no memory. */
static int node_columns(Node *n, int ncolumns) {
    n->below = PyMem_Malloc(sizeof(int) * (ncolumns ? ncolumns : 1));
    if (!n->below) return -1;
    n->nbelow = 0;
    if (n->column >= 0) n->below[n->nbelow++] = n->column;
    for (int i = 0; i < n->nchildren; i++) {
        Node *c = &n->children[i];
        if (node_columns(c, ncolumns) < 0) return -1;
        for (int k = 0; k < c->nbelow; k++) n->below[n->nbelow++] = c->below[k];
    }
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
    if (exponent || ndigits > 300) { /* could overflow to infinity, which orjson refuses */
        char small[64];
        Py_ssize_t len = s - p;
        if (len >= (Py_ssize_t)sizeof(small)) return STOP;
        memcpy(small, p, len);
        small[len] = 0;
        double d = PyOS_string_to_double(small, NULL, NULL);
        if (d == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return STOP;
        }
        if (!isfinite(d)) return STOP;
    }
    *kind = (exponent || fraction) ? 2 : ndigits > MAX_SHORT_INT ? 1 : 0;
    return s;
}

static const char *scan_value(RowWriter *w, const char *p, const char *end, Node *level, int depth);

/* An object at p ('{'); `level` (NULL: nothing below is written) says which keys to record. */
static const char *scan_object(RowWriter *w, const char *p, const char *end, Node *level, int depth) {
    if (depth > MAX_DEPTH) return STOP;
    p = skip_ws(p + 1, end);
    if (p < end && *p == '}') return p + 1;
    for (;;) {
        if (p >= end || *p != '"') return STOP;
        int escaped;
        const char *key = p + 1, *after = scan_string(p, end, &escaped);
        if (after == STOP) return STOP;
        Node *child = NULL;
        if (level) {
            if (escaped) return STOP; /* an escaped key could spell a column's name */
            child = node_child(level, key, after - 1 - key, 0);
        }
        p = skip_ws(after, end);
        if (p >= end || *p != ':') return STOP;
        p = skip_ws(p + 1, end);
        if (p >= end) return STOP;
        const char *value = p;
        if (child) { /* this key again: the last one wins, as in a dict */
            for (int k = 0; k < child->nbelow; k++) w->spans[child->below[k]].start = NULL;
            escaped = 0;
            if (*p == '"')
                p = scan_string(p, end, &escaped);
            else
                p = scan_value(w, p, end, (child->nchildren && *p == '{') ? child : NULL, depth + 1);
            if (p == STOP) return STOP;
            if (child->column >= 0) {
                Span *span = &w->spans[child->column];
                span->start = value;
                span->end = p;
                span->escaped = escaped;
            }
        } else {
            p = scan_value(w, p, end, NULL, depth + 1);
            if (p == STOP) return STOP;
        }
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p = skip_ws(p + 1, end);
            continue;
        }
        if (p < end && *p == '}') return p + 1;
        return STOP;
    }
}

static const char *scan_value(RowWriter *w, const char *p, const char *end, Node *level, int depth) {
    int escaped, kind;
    switch (*p) {
    case '"':
        return scan_string(p, end, &escaped);
    case '{':
        return scan_object(w, p, end, level, depth);
    case '[':
        if (depth > MAX_DEPTH) return STOP;
        p = skip_ws(p + 1, end);
        if (p < end && *p == ']') return p + 1;
        for (;;) {
            if (p >= end) return STOP;
            p = scan_value(w, p, end, NULL, depth + 1);
            if (p == STOP) return STOP;
            p = skip_ws(p, end);
            if (p < end && *p == ',') {
                p = skip_ws(p + 1, end);
                continue;
            }
            if (p < end && *p == ']') return p + 1;
            return STOP;
        }
    case 't':
        return (end - p >= 4 && memcmp(p, "true", 4) == 0) ? p + 4 : STOP;
    case 'f':
        return (end - p >= 5 && memcmp(p, "false", 5) == 0) ? p + 5 : STOP;
    case 'n':
        return (end - p >= 4 && memcmp(p, "null", 4) == 0) ? p + 4 : STOP;
    default:
        return scan_number(p, end, &kind);
    }
}

/* ---- writing cells ------------------------------------------------------------------------- */

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
static int put_json_string(RowWriter *w, Buf *b, const char *p, const char *end_quote) {
    w->tmp.len = 0;
    if (put_unescaped(&w->tmp, p, end_quote) < 0) return -1;
    if (buf_byte(b, '"') < 0) return -1;
    for (Py_ssize_t i = 0; i < w->tmp.len; i++) {
        unsigned char c = (unsigned char)w->tmp.data[i];
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
static int put_json(RowWriter *w, Buf *b, const char **pp, const char *end) {
    const char *p = *pp;
    int escaped, kind;
    if (*p == '"') {
        const char *after = scan_string(p, end, &escaped);
        if (escaped) {
            /* put_json_string unescapes into w->tmp: nested strings are written one at a time */
            if (put_json_string(w, b, p, after - 1) < 0) return -1;
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
            int r = put_json(w, b, &p, end);
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

/* The cell of one value into w->cell, unquoted. 1: done, 0: not reproduced here, -1: error. */
static int put_cell(RowWriter *w, Span span) {
    Buf *b = &w->cell;
    b->len = 0;
    if (!span.start) return 1;
    const char *p = span.start;
    int kind;
    switch (*p) {
    case 'n':
        return 1;
    case 't':
        return buf_put(b, "true", 4) < 0 ? -1 : 1;
    case 'f':
        return buf_put(b, "false", 5) < 0 ? -1 : 1;
    case '"':
        if (!span.escaped) return buf_put(b, p + 1, span.end - p - 2) < 0 ? -1 : 1;
        return put_unescaped(b, p, span.end - 1) < 0 ? -1 : 1;
    case '{':
    case '[':
        return put_json(w, b, &p, span.end);
    default:
        scan_number(p, span.end, &kind);
        if (kind == 1) return 0;
        if (kind == 0) {
            if (span.end - p == 2 && p[0] == '-' && p[1] == '0') return buf_put(b, "0", 1) < 0 ? -1 : 1;
            return buf_put(b, p, span.end - p) < 0 ? -1 : 1;
        }
        {
            char small[64];
            Py_ssize_t len = span.end - p;
            if (len >= (Py_ssize_t)sizeof(small)) return 0;
            memcpy(small, p, len);
            small[len] = 0;
            double d = PyOS_string_to_double(small, NULL, NULL);
            if (d == -1.0 && PyErr_Occurred()) {
                PyErr_Clear();
                return 0;
            }
            char *text = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
            if (!text) return -1;
            int r = buf_put(b, text, (Py_ssize_t)strlen(text));
            PyMem_Free(text);
            return r < 0 ? -1 : 1;
        }
    }
}

/* w->cell onto the row, quoted as csv.writer's QUOTE_MINIMAL would. */
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

/* One line into rows: 1 written, 0 not handled here, -1 error. */
static int write_line(RowWriter *w, const char *line, Py_ssize_t size, Buf *rows, uint64_t *digest) {
    const char *end = line + size, *p = skip_ws(line, end);
    if (p >= end || *p != '{') return 0;
    for (int c = 0; c < w->ncolumns; c++) w->spans[c].start = NULL;
    p = scan_object(w, p, end, &w->root, 1);
    if (p == STOP || skip_ws(p, end) != end) return 0;
    Span id = w->spans[w->id_index];
    if (!id.start || *id.start != '"') return 0; /* missing, null, a number: Python decides */
    Py_ssize_t mark = rows->len;
    for (int c = 0; c < w->ncolumns; c++) {
        int r = put_cell(w, w->spans[c]);
        if (r <= 0) {
            rows->len = mark;
            return r;
        }
        if (c == w->id_index) {
            int visible = 0; /* a character that is not whitespace, else Python rules on it */
            for (Py_ssize_t i = 0; i < w->cell.len && !visible; i++)
                visible = w->cell.data[i] > 0x20 && w->cell.data[i] < 0x7F;
            if (!visible) {
                rows->len = mark;
                return 0;
            }
        }
        Py_ssize_t cell_at = rows->len;
        if (put_quoted(rows, &w->cell) < 0 || buf_byte(rows, ',') < 0) return -1;
        if (c == w->id_index) {
            const Bytef *cell = (const Bytef *)rows->data + cell_at;
            uInt n = (uInt)(rows->len - 1 - cell_at);
            *digest = ((uint64_t)crc32(0, cell, n) << 32) | (uint64_t)adler32(1, cell, n);
        }
    }
    if (buf_put(rows, w->ts, w->tslen) < 0 || buf_put(rows, "\r\n", 2) < 0) return -1;
    return 1;
}

/* ---- the Python type ----------------------------------------------------------------------- */

static PyObject *RowWriter_rows(RowWriter *w, PyObject *args) {
    PyObject *payloads;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!n", &PyList_Type, &payloads, &start)) return NULL;
    Py_ssize_t count = PyList_GET_SIZE(payloads), i = start < 0 ? 0 : start;
    Buf rows = {0}, digests = {0}, lengths = {0};
    PyObject *result = NULL;
    for (; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(payloads, i);
        if (!PyBytes_CheckExact(item)) break;
        Py_ssize_t size = PyBytes_GET_SIZE(item);
        if (size <= 1) break; /* blank lines are counted by the Python path */
        Py_ssize_t before = rows.len;
        uint64_t digest = 0;
        int r = write_line(w, PyBytes_AS_STRING(item), size, &rows, &digest);
        if (r < 0) goto error;
        if (r == 0) break;
        uint32_t length = (uint32_t)(rows.len - before);
        if (buf_put(&digests, (const char *)&digest, 8) < 0 || buf_put(&lengths, (const char *)&length, 4) < 0)
            goto error;
    }
    result = Py_BuildValue("ny#y#y#", i, rows.data ? rows.data : "", rows.len, digests.data ? digests.data : "",
                           digests.len, lengths.data ? lengths.data : "", lengths.len);
error:
    if (!result && !PyErr_Occurred()) PyErr_NoMemory();
    PyMem_Free(rows.data);
    PyMem_Free(digests.data);
    PyMem_Free(lengths.data);
    return result;
}

static int RowWriter_init(RowWriter *w, PyObject *args, PyObject *kwds) {
    PyObject *paths;
    const char *ts;
    Py_ssize_t tslen;
    if (!PyArg_ParseTuple(args, "O!y#i", &PyList_Type, &paths, &ts, &tslen, &w->id_index)) return -1;
    w->ncolumns = (int)PyList_GET_SIZE(paths);
    if (w->id_index < 0 || w->id_index >= w->ncolumns) {
        PyErr_SetString(PyExc_ValueError, "id_index out of range");
        return -1;
    }
    w->root.column = -1;
    for (int c = 0; c < w->ncolumns; c++) {
        PyObject *path = PyList_GET_ITEM(paths, c);
        if (!PyTuple_Check(path) || PyTuple_GET_SIZE(path) == 0) {
            PyErr_SetString(PyExc_TypeError, "paths must be non-empty tuples of str");
            return -1;
        }
        Node *n = &w->root;
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(path); k++) {
            Py_ssize_t len;
            const char *key = PyUnicode_AsUTF8AndSize(PyTuple_GET_ITEM(path, k), &len);
            if (!key) return -1;
            n = node_child(n, key, len, 1);
            if (!n) {
                PyErr_NoMemory();
                return -1;
            }
        }
        if (n->column >= 0) {
            PyErr_SetString(PyExc_ValueError, "two columns read the same field");
            return -1;
        }
        n->column = c;
    }
    if (node_columns(&w->root, w->ncolumns) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    w->spans = PyMem_Calloc(w->ncolumns, sizeof(Span));
    w->ts = PyMem_Malloc(tslen + 1);
    if (!w->spans || !w->ts) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(w->ts, ts, tslen);
    w->tslen = tslen;
    return 0;
}

static void RowWriter_dealloc(RowWriter *w) {
    node_free(&w->root);
    PyMem_Free(w->spans);
    PyMem_Free(w->ts);
    PyMem_Free(w->cell.data);
    PyMem_Free(w->tmp.data);
    PyTypeObject *type = Py_TYPE(w);
    type->tp_free((PyObject *)w);
    Py_DECREF(type);
}

static PyMethodDef RowWriter_methods[] = {
    {"rows", (PyCFunction)RowWriter_rows, METH_VARARGS,
     "rows(payloads, start) -> (stop, rows, digests, lengths): payloads[start:stop] shaped"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot RowWriter_slots[] = {
    {Py_tp_doc, "RowWriter(paths, timestamp_cell, id_index): NDJSON lines -> CSV rows"},
    {Py_tp_new, PyType_GenericNew},
    {Py_tp_init, RowWriter_init},
    {Py_tp_dealloc, RowWriter_dealloc},
    {Py_tp_methods, RowWriter_methods},
    {0, NULL},
};

static PyType_Spec RowWriter_spec = {
    "include.segments_to_lytics._fast_rows.RowWriter", sizeof(RowWriter), 0, Py_TPFLAGS_DEFAULT,
    RowWriter_slots,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fast_rows", "Native row writer for shaping.", -1};

PyMODINIT_FUNC PyInit__fast_rows(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyObject *type = PyType_FromSpec(&RowWriter_spec);
    if (!type || PyModule_AddObject(m, "RowWriter", type) < 0) {
        Py_XDECREF(type);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
