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
#include <zlib.h>

#include "fast_rows_json.h"

#define MAX_DEPTH 64

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
        int more = next_item(&p, end, '}');
        if (more <= 0) return more == 0 ? p : STOP;
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
            int more = next_item(&p, end, ']');
            if (more <= 0) return more == 0 ? p : STOP;
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
        return put_json(&w->tmp, b, &p, span.end);
    default:
        scan_number(p, span.end, &kind);
        if (kind == 1) return 0;
        if (kind == 0) {
            if (span.end - p == 2 && p[0] == '-' && p[1] == '0') return buf_put(b, "0", 1) < 0 ? -1 : 1;
            return buf_put(b, p, span.end - p) < 0 ? -1 : 1;
        }
        {
            double d;
            if (!number_value(p, span.end - p, &d)) return 0;
            char *text = PyOS_double_to_string(d, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
            if (!text) return -1;
            int r = buf_put(b, text, (Py_ssize_t)strlen(text));
            PyMem_Free(text);
            return r < 0 ? -1 : 1;
        }
    }
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
    (void)kwds;
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

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fast_rows", "Native row writer for shaping.", -1,
                                    NULL, NULL, NULL, NULL, NULL};

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
