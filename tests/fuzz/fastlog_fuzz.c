/* libFuzzer target for the request-log parser of pipeline/ingest/_fastlog.c (Kafka bytes are untrusted).
 *
 * Built with -fsanitize=fuzzer,address,undefined by tests/fuzz/fastlog.py: the parser file is
 * included whole so its static functions are reachable, and ``message`` runs exactly as
 * ``LogColumns.add`` runs it (mark, parse, roll back when not taken), on one long-lived set of
 * columns so buffer growth, rollback and reset are exercised across inputs. libFuzzer hands each
 * input in an allocation of its exact size, so ASan catches a read one byte past the message.
 *
 * Besides memory safety, every input is checked against invariants written independently of the
 * parser: a message not taken leaves no trace; a taken one appends ``n`` rows of well-formed columns
 * (offsets monotonic, strings valid UTF-8 without quote, backslash or control bytes, within the
 * bounds of records.py, integers within their ranges, minimised addresses as privacy.py writes them).
 * Value-for-value agreement with msgspec is tests/unit/test_fastlog.py's job (it needs Python).
 */
#include "../../pipeline/ingest/_fastlog.c"

#include <stdio.h>
#include <stdlib.h>

#define CHECK(cond)                                                                                       \
    do {                                                                                                  \
        if (!(cond)) {                                                                                    \
            fprintf(stderr, "invariant broken: %s (%s:%d)\n", #cond, __FILE__, __LINE__);                 \
            abort();                                                                                      \
        }                                                                                                 \
    } while (0)

static LogColumns cols; /* static: zeroed, as PyType_GenericNew leaves a new object */

/* Code points in s[0..n), or -1 when not well-formed UTF-8 (decoded, then judged by value: a
 * different formulation from _fastlog.c's byte-range table, so the two can catch each other). */
static long utf8_chars(const unsigned char *s, Py_ssize_t n) {
    long chars = 0;
    for (Py_ssize_t i = 0; i < n; chars++) {
        unsigned c = s[i], need, cp;
        if (c < 0x80) need = 0, cp = c;
        else if ((c & 0xE0) == 0xC0) need = 1, cp = c & 0x1F;
        else if ((c & 0xF0) == 0xE0) need = 2, cp = c & 0x0F;
        else if ((c & 0xF8) == 0xF0) need = 3, cp = c & 0x07;
        else return -1;
        if (i + 1 + (Py_ssize_t)need > n) return -1;
        for (unsigned k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return -1;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        static const unsigned smallest[4] = {0, 0x80, 0x800, 0x10000};
        if (cp < smallest[need] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return -1;
        i += 1 + need;
    }
    return chars;
}

static int32_t offset_at(const Buf *b, Py_ssize_t row) {
    int32_t v;
    memcpy(&v, b->p + row * 4, 4);
    return v;
}

static void check_untouched(const Mark *m) {
    Mark now;
    mark(&cols, &now);
    CHECK(memcmp(&now, m, sizeof now) == 0);
}

static void check_rows(const Mark *m, Py_ssize_t n) {
    Py_ssize_t rows = cols.rows;
    CHECK(rows == m->rows + n);
    CHECK(cols.time.len == rows * 8 && cols.app.len == rows * 4 && cols.latency.len == rows * 4);
    CHECK(cols.code.len == rows * 4 && cols.net_done.len == rows && cols.net_offsets.len == (rows + 1) * 4);
    for (Py_ssize_t r = m->rows; r < rows; r++) {
        int64_t t;
        uint32_t app, latency;
        memcpy(&t, cols.time.p + r * 8, 8);
        memcpy(&app, cols.app.p + r * 4, 4);
        memcpy(&latency, cols.latency.p + r * 4, 4);
        CHECK(t >= 0 && t <= 253402300799999LL && app >= 1 && latency <= 3600000);
        for (int i = 0; i < N_STRINGS; i++) {
            const Buf *off = &cols.offsets[i];
            Py_ssize_t at = r; /* the row's string, or its dictionary entry */
            if (INTERNED[i]) {
                CHECK(cols.index[i].len == rows * 4 && off->len == ((Py_ssize_t)cols.intern[i].count + 1) * 4);
                at = offset_at(&cols.index[i], r);
                CHECK(at >= 0 && at < (Py_ssize_t)cols.intern[i].count);
            } else {
                CHECK(off->len == (rows + 1) * 4);
            }
            int32_t a = offset_at(off, at), b = offset_at(off, at + 1);
            CHECK(a >= 0 && a <= b && b <= cols.data[i].len);
            /* a column of empty strings has no buffer yet (NULL + 0 is undefined, UBSan says so) */
            const unsigned char *s = b > a ? (const unsigned char *)cols.data[i].p + a : (const unsigned char *)"";
            for (int32_t k = 0; k < b - a; k++) CHECK(s[k] >= 0x20 && s[k] != '"' && s[k] != '\\');
            long chars = utf8_chars(s, b - a);
            CHECK(chars >= 0 && chars >= MIN_LEN[i] && chars <= MAX_LEN[i]);
        }
        uint8_t done = (uint8_t)cols.net_done.p[r];
        int32_t a = offset_at(&cols.net_offsets, r), b = offset_at(&cols.net_offsets, r + 1);
        CHECK(done <= 1 && a <= b && b <= cols.net_data.len);
        if (cols.net_mode == NET_NONE) CHECK(!done);
        if (!done || cols.net_mode == NET_DROP) CHECK(a == b);
        /* a /24 of a dotted quad, or a /48 that inet_pton takes back (its last 80 bits zero) */
        if (done && cols.net_mode == NET_PREFIX) {
            int v4 = b - a >= 9 && memcmp(cols.net_data.p + b - 5, ".0/24", 5) == 0;
            char net[64];
            unsigned char packed[16];
            int v6 = b - a > 3 && b - a < 64 && memcmp(cols.net_data.p + b - 3, "/48", 3) == 0;
            if (v6) {
                memcpy(net, cols.net_data.p + a, (size_t)(b - a - 3));
                net[b - a - 3] = 0;
                v6 = inet_pton(AF_INET6, net, packed) == 1;
                for (int k = 6; v6 && k < 16; k++) v6 = packed[k] == 0;
            }
            CHECK(v4 || v6);
        }
    }
    CHECK(offset_at(&cols.net_offsets, rows) == cols.net_data.len);
    for (int i = 0; i < N_STRINGS; i++)
        CHECK(offset_at(&cols.offsets[i], INTERNED[i] ? (Py_ssize_t)cols.intern[i].count : rows) == cols.data[i].len);
}

/* Every dictionary entry is found at its own index (so the entries are distinct and the hash table,
 * after any rollback, still holds each of them), and looking them up adds nothing. */
static void check_dictionaries(void) {
    for (int i = 0; i < N_STRINGS; i++) {
        if (!INTERNED[i]) continue;
        uint32_t count = cols.intern[i].count;
        for (uint32_t e = 0; e < count; e++) {
            const char *at;
            Py_ssize_t n = entry_len(&cols.offsets[i], e, &at, &cols.data[i]);
            CHECK(intern(&cols, i, at, n) == (int64_t)e && cols.intern[i].count == count);
        }
        Py_ssize_t used = 0;
        for (size_t k = 0; k <= cols.intern[i].mask; k++) used += cols.intern[i].slots[k] != 0;
        CHECK(used == (Py_ssize_t)count);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) {
        init_tables();
        CHECK(reset(&cols) == 0);
        ready = 1;
    }
    /* the PII mode from the size: every mode gets inputs without a prefix byte in the corpus */
    cols.net_mode = (int)(size % 3) == 0 ? NET_NONE : size % 3 == 1 ? NET_PREFIX : NET_DROP;
    Mark m;
    mark(&cols, &m);
    int failed = 0;
    Py_ssize_t n = message(&cols, (const char *)data, (const char *)data + size, &failed);
    CHECK(failed == 0 && n >= 0); /* -1 / -2 only on out of memory or a 2 GiB column */
    if (n == 0) {
        rollback(&cols, &m);
        check_untouched(&m);
    } else {
        check_rows(&m, n);
    }
    check_dictionaries();
    if (cols.rows > 4096) CHECK(reset(&cols) == 0); /* as take() does; keeps memory flat */
    return 0;
}
