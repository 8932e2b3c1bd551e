/* Request-log messages (JSON object, JSON array of objects, or NDJSON) straight into Arrow column
 * buffers, for the worker's hot path.
 *
 * Why: in Python every record becomes a msgspec struct (~1 us), then one attribute read and one
 * Arrow conversion per column (~1.2 us), then the struct is freed: the event loop's thread, which runs
 * all of it, was the pipeline's bottleneck. Here a message costs one call and no Python objects.
 *
 * It accepts a strict subset of what ``records.LooseRequestLog`` accepts and yields exactly the same
 * values; anything else (an escape in a string, malformed UTF-8, a number with a fraction or exponent, an
 * unknown or repeated key, a missing field, a value out of range, odd whitespace between NDJSON lines)
 * makes ``add`` return -1 with nothing added, and the caller decodes that message with msgspec as
 * before, which also names the reason of an invalid record. tests/unit/test_fastlog.py holds the two
 * to the same result on generated and mutated messages.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <arpa/inet.h>
#if defined(__linux__)
#include <sys/random.h>
#endif
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} Buf;

static int buf_reserve(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    char *p = PyMem_RawRealloc(b->p, (size_t)cap); /* Raw: callable without the GIL */
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

/* Inline: called ~18 times per record, nearly always with room to spare (the growth is buf_reserve's). */
static inline int buf_put(Buf *b, const void *src, Py_ssize_t n) {
    /* Nothing to copy: a column whose first strings are empty ("" exception) has no buffer yet, and
     * NULL + 0 or memcpy(NULL, ..., 0) is undefined behaviour (found by tests/fuzz, UBSan). */
    if (n == 0) return 0;
    if (b->len + n > b->cap && buf_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->len, src, (size_t)n);
    b->len += n;
    return 0;
}

/* Fields of a request log, in the order the columns are returned. */
enum { F_APP, F_IFACE, F_TIME, F_IP, F_LATENCY, F_CODE, F_REGION, F_PLATFORM, F_REQID, F_EXC, N_FIELDS };
enum { S_IFACE, S_IP, S_REGION, S_PLATFORM, S_REQID, S_EXC, N_STRINGS };
static const char *const NAMES[N_FIELDS] = {"sdk_app_id", "interface", "request_time", "client_ip", "latency_ms",
                                            "error_code", "region", "platform", "request_id", "exception"};
/* string fields: which string column, and the length bounds of records.py (in code points) */
static const int STRING_OF[N_FIELDS] = {-1, S_IFACE, -1, S_IP, -1, -1, S_REGION, S_PLATFORM, S_REQID, S_EXC};
static const Py_ssize_t MIN_LEN[N_STRINGS] = {1, 0, 1, 1, 1, 0};
static const Py_ssize_t MAX_LEN[N_STRINGS] = {128, 64, 32, 32, 64, 2048};

/* What to store of the exit IP (IMTEL_PII_MODE): done here only in ``prefix`` and ``drop`` mode, for a
 * dotted-quad IPv4 address and for an IPv6 address (not IPv4-mapped) that ``inet_pton`` takes, the very
 * libc call ``privacy.prefix`` makes through Python's socket module; every other value (IPv4-mapped,
 * garbage, all values in ``hash`` mode) is flagged for ``privacy.minimise_column``. */
enum { NET_NONE, NET_PREFIX, NET_DROP };

/* The string columns ClickHouse keeps as LowCardinality and the worker sends as Arrow dictionaries:
 * interface, region and platform. They are interned here, each distinct value stored once per take()
 * with an int32 index per row, instead of every row's bytes being copied here and then hashed again
 * by Arrow's dictionary_encode before the insert (~0.045 CPU-s per million records of the worker).
 * For these columns ``offsets``/``data`` hold the dictionary (one entry per distinct value, in order
 * of first appearance), ``index`` the rows. */
static const int INTERNED[N_STRINGS] = {1, 0, 1, 1, 0, 0};
#define INTERN_SLOTS 256 /* initial (and after take) hash table size, a power of two */

typedef struct {
    uint32_t *slots; /* open addressing, linear probing: 1 + the entry's index, 0 = free */
    size_t mask;     /* slots - 1 */
    uint32_t count;  /* entries */
} Intern;

typedef struct {
    PyObject_HEAD
    Buf time, app, latency, code;            /* int64, uint32, uint32, int32 */
    Buf offsets[N_STRINGS], data[N_STRINGS]; /* int32 offsets (n + 1), UTF-8 bytes; the dictionary if INTERNED */
    Buf index[N_STRINGS];                    /* INTERNED columns: int32 per row, into the dictionary */
    Intern intern[N_STRINGS];
    Buf net_offsets, net_data, net_done;     /* the minimised address; uint8 1 = done here */
    int net_mode;
    Py_ssize_t rows;
} LogColumns;

/* A seeded hash of short strings, a word at a time; the seed (random per process, see ``init_tables``)
 * keeps crafted names from all landing in one probe chain. */
static uint64_t HASH_SEED = 0x243F6A8885A308D3ULL;

static inline uint64_t hash_bytes(const char *s, Py_ssize_t n) {
    uint64_t h = HASH_SEED ^ ((uint64_t)n * 0x9E3779B97F4A7C15ULL);
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 0xFF51AFD7ED558CCDULL;
        h ^= h >> 32;
    }
    uint64_t w = 0;
    if (i < n && n >= 8) {
        memcpy(&w, s + n - 8, 8); /* the last 8 bytes, overlapping the words above: no byte loop */
    } else {
        for (int k = 0; i < n; i++, k += 8) w |= (uint64_t)(unsigned char)s[i] << k;
    }
    h = (h ^ w) * 0xC4CEB9FE1A85EC53ULL;
    return h ^ (h >> 29);
}

/* ``memcmp(a, b, n) == 0`` inline, a word at a time (names are short: a libc call per lookup cost more). */
static inline int same_bytes(const char *a, const char *b, Py_ssize_t n) {
    if (n >= 8) {
        for (Py_ssize_t i = 0; i + 8 <= n; i += 8) {
            uint64_t x, y;
            memcpy(&x, a + i, 8);
            memcpy(&y, b + i, 8);
            if (x != y) return 0;
        }
        uint64_t x, y;
        memcpy(&x, a + n - 8, 8);
        memcpy(&y, b + n - 8, 8);
        return x == y;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static inline Py_ssize_t entry_len(const Buf *offsets, uint32_t e, const char **at, const Buf *data) {
    int32_t a, b;
    memcpy(&a, offsets->p + (Py_ssize_t)e * 4, 4);
    memcpy(&b, offsets->p + (Py_ssize_t)e * 4 + 4, 4);
    *at = data->p + a;
    return b - a;
}

/* Where the probe for entry ``e``'s value starts. */
static size_t home_of(const LogColumns *c, int i, uint32_t e) {
    const char *at;
    Py_ssize_t n = entry_len(&c->offsets[i], e, &at, &c->data[i]);
    return (size_t)hash_bytes(at, n) & c->intern[i].mask;
}

/* The slot holding entry ``e`` (it is in the table). */
static size_t slot_of(const LogColumns *c, int i, uint32_t e) {
    const Intern *t = &c->intern[i];
    size_t slot = home_of(c, i, e);
    while (t->slots[slot] != e + 1) slot = (slot + 1) & t->mask;
    return slot;
}

/* Double the table: the entries go in again in index order, which leaves each one where inserting
 * them in that order would have (``unintern`` relies on it). */
static int intern_grow(LogColumns *c, int i) {
    Intern *t = &c->intern[i];
    size_t size = (t->mask + 1) * 2;
    uint32_t *slots = PyMem_RawCalloc(size, sizeof *slots);
    if (!slots) return -1;
    PyMem_RawFree(t->slots);
    t->slots = slots, t->mask = size - 1;
    for (uint32_t e = 0; e < t->count; e++) {
        size_t slot = home_of(c, i, e);
        while (slots[slot]) slot = (slot + 1) & t->mask;
        slots[slot] = e + 1;
    }
    return 0;
}

/* The dictionary index of s[0..n) in column i, added when new; -1 out of memory, -2 past 2 GiB. */
static int64_t intern(LogColumns *c, int i, const char *s, Py_ssize_t n) {
    Intern *t = &c->intern[i];
    size_t slot = (size_t)hash_bytes(s, n) & t->mask;
    for (uint32_t e; (e = t->slots[slot]) != 0; slot = (slot + 1) & t->mask) {
        const char *at;
        if (entry_len(&c->offsets[i], e - 1, &at, &c->data[i]) == n && same_bytes(at, s, n))
            return e - 1;
    }
    if (buf_put(&c->data[i], s, n) < 0) return -1;
    if (c->data[i].len > INT32_MAX) return -2;
    int32_t end = (int32_t)c->data[i].len;
    if (buf_put(&c->offsets[i], &end, 4) < 0) return -1;
    uint32_t e = t->count++;
    t->slots[slot] = e + 1;
    if ((size_t)t->count * 2 > t->mask + 1 && intern_grow(c, i) < 0) return -1;
    return e;
}

/* Forget the entries from ``keep`` on (a message that was not taken after all): cleared from the last
 * one back, each slot is freed after every entry that could have probed past it, so the table is
 * exactly as it was with ``keep`` entries. The caller restores offsets and data. */
static void unintern(LogColumns *c, int i, uint32_t keep) {
    Intern *t = &c->intern[i];
    while (t->count > keep) {
        t->count--;
        t->slots[slot_of(c, i, t->count)] = 0;
    }
}

typedef struct {
    const char *s[N_STRINGS];
    Py_ssize_t n[N_STRINGS];
    long long ints[N_FIELDS];
    unsigned seen;
} Record;

static const char *skip_ws(const char *p, const char *end, int newline_ok) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || (newline_ok && *p == '\n'))) p++;
    return p;
}

/* The length of the well-formed UTF-8 sequence at p (RFC 3629: no overlong forms, no surrogates,
 * nothing past U+10FFFF), or 0. What msgspec and Python's strict decoder accept, and no more. */
static int utf8_sequence(const unsigned char *p, const unsigned char *end) {
    unsigned char c = p[0];
    int n;
    unsigned char lo = 0x80, hi = 0xBF; /* the allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else return 0;
    if (end - p < n || p[1] < lo || p[1] > hi) return 0;
    for (int i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return n;
}

/* How many bytes from p on are plain ASCII (0x20-0x7F but '"' and '\\': one code point each, nothing
 * to check), looked at a block at a time: it stops at the first byte that needs the byte loop of
 * plain_string (a quote, a backslash, a control byte, a byte >= 0x80) or where less than a block is
 * left before ``end``, which it never reads past. Only a shortcut: the byte loop alone gives the
 * same result. */
#define SWAR_ONES 0x0101010101010101ULL
#define SWAR_HIGH 0x8080808080808080ULL
static inline Py_ssize_t ascii_run(const char *p, const char *end) {
    const char *q = p;
#if defined(__SSE2__)
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\'), space = _mm_set1_epi8(0x20);
    while (end - q >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)q);
        /* signed compare: bytes >= 0x80 are negative, so "< 0x20" takes them with the control bytes */
        __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
                                   _mm_cmplt_epi8(v, space));
        int mask = _mm_movemask_epi8(hit);
        if (mask) return (q - p) + __builtin_ctz((unsigned)mask);
        q += 16;
    }
#endif
    while (end - q >= 8) {
        uint64_t w;
        memcpy(&w, q, 8);
        /* the high bit of a byte of ``hit`` is set where the byte of w is special, and, through a
         * subtraction's borrow, perhaps at a plain byte above a special one (more significant), never
         * below it: the lowest set bit is the first special byte in memory order on little-endian */
        uint64_t quote = w ^ ('"' * SWAR_ONES), backslash = w ^ ('\\' * SWAR_ONES);
        uint64_t hit = (w | ((w - 0x20 * SWAR_ONES) & ~w) | ((quote - SWAR_ONES) & ~quote) |
                        ((backslash - SWAR_ONES) & ~backslash)) &
                       SWAR_HIGH;
        if (hit) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            return (q - p) + (__builtin_ctzll(hit) >> 3);
#else
            for (;; q++) {
                unsigned char c = (unsigned char)*q;
                if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) return q - p;
            }
#endif
        }
        q += 8;
    }
    return q - p;
}

/* A string without escapes, in well-formed UTF-8: returns the byte after the closing quote, or NULL;
 * ``*chars`` is its length in code points (msgspec's min_length / max_length count those). */
static const char *plain_string(const char *p, const char *end, const char **s, Py_ssize_t *n, Py_ssize_t *chars) {
    if (p >= end || *p != '"') return NULL;
    const char *start = ++p;
    Py_ssize_t count = 0;
    while (p < end) {
        Py_ssize_t run = ascii_run(p, end);
        p += run;
        count += run;
        if (p >= end) break;
        unsigned char c = (unsigned char)*p;
        if (c == '"') {
            *s = start;
            *n = p - start;
            *chars = count;
            return p + 1;
        }
        if (c == '\\' || c < 0x20) return NULL;
        if (c >= 0x80) {
            int len = utf8_sequence((const unsigned char *)p, (const unsigned char *)end);
            if (!len) return NULL;
            p += len;
        } else {
            p++;
        }
        count++;
    }
    return NULL;
}

/* A JSON integer (no fraction, no exponent, at most 18 digits): the byte after it, or NULL. */
static const char *integer(const char *p, const char *end, long long *out) {
    int negative = 0;
    if (p < end && *p == '-') {
        negative = 1;
        p++;
    }
    if (p >= end || *p < '0' || *p > '9') return NULL;
    const char *digits = p;
    long long v = 0;
    while (p < end && *p >= '0' && *p <= '9') {
        if (p - digits >= 18) return NULL;
        v = v * 10 + (*p - '0');
        p++;
    }
    if (*digits == '0' && p - digits > 1) return NULL; /* leading zero: not JSON */
    if (p < end && (*p == '.' || *p == 'e' || *p == 'E')) return NULL;
    *out = negative ? -v : v;
    return p;
}

static Py_ssize_t NAME_LEN[N_FIELDS];

/* The field a key names, or -1. Producers write keys in one order, so the field after the previous
 * one is tried first: one comparison per key instead of five on average. */
static int field_of(const char *s, Py_ssize_t n, int hint) {
    if (hint < N_FIELDS && NAME_LEN[hint] == n && memcmp(NAMES[hint], s, (size_t)n) == 0) return hint;
    for (int f = 0; f < N_FIELDS; f++) {
        if (NAME_LEN[f] == n && memcmp(NAMES[f], s, (size_t)n) == 0) return f;
    }
    return -1;
}

/* The bytes ``records.INTERFACE_PATTERN_RE2`` (``^[A-Za-z0-9_./-]+$``) allows in an interface name. A
 * message with any other interface is not taken: through msgspec, its record is dead-lettered with the
 * pattern's reason, as it was when the pattern was checked per batch after decoding (Arrow ``unique``
 * of the column, then RE2 on the distinct names: ~0.027 CPU-s per million records). Checked while the
 * string is scanned (``iface_string``), it costs next to nothing: a separate pass over the parsed
 * name cost ~0.025, as much as the per-batch check it would have replaced. */
static unsigned char IFACE_OK[256];

static void init_iface_ok(void) {
    for (int c = 'A'; c <= 'Z'; c++) IFACE_OK[c] = 1;
    for (int c = 'a'; c <= 'z'; c++) IFACE_OK[c] = 1;
    for (int c = '0'; c <= '9'; c++) IFACE_OK[c] = 1;
    IFACE_OK['_'] = IFACE_OK['.'] = IFACE_OK['/'] = IFACE_OK['-'] = 1;
}

/* ``plain_string`` for the interface name: the scan stops at the first byte outside the pattern's
 * class, which must be the closing quote (a backslash, a control or non-ASCII byte is outside it too,
 * so what ``plain_string`` refuses this refuses). All bytes are ASCII: the length in code points is
 * the length in bytes. */
static const char *iface_string(const char *p, const char *end, const char **s, Py_ssize_t *n) {
    if (p >= end || *p != '"') return NULL;
    const char *start = ++p;
#if defined(__SSE2__)
    /* 16 bytes at a time: '-' '.' '/' and the digits are one range (0x2d-0x39), the letters another
     * once folded to lowercase (| 0x20 maps nothing else into 'a'-'z'), and '_'. Signed compares:
     * bytes >= 0x80 are negative and fall outside every range. */
    const __m128i dash = _mm_set1_epi8(0x2c), nine = _mm_set1_epi8(0x3a), fold = _mm_set1_epi8(0x20),
                  a = _mm_set1_epi8(0x60), z = _mm_set1_epi8(0x7b), under = _mm_set1_epi8('_');
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)(const void *)p), low = _mm_or_si128(v, fold);
        __m128i ok = _mm_or_si128(_mm_and_si128(_mm_cmpgt_epi8(v, dash), _mm_cmplt_epi8(v, nine)),
                                  _mm_or_si128(_mm_and_si128(_mm_cmpgt_epi8(low, a), _mm_cmplt_epi8(low, z)),
                                               _mm_cmpeq_epi8(v, under)));
        unsigned outside = ~(unsigned)_mm_movemask_epi8(ok) & 0xFFFFu;
        if (outside) {
            p += __builtin_ctz(outside);
            goto stop;
        }
        p += 16;
    }
#endif
    while (p < end && IFACE_OK[(unsigned char)*p]) p++;
#if defined(__SSE2__)
stop:
#endif
    if (p >= end || *p != '"') return NULL;
    *s = start;
    *n = p - start;
    return p + 1;
}

static int in_range(int f, long long v) {
    switch (f) {
    case F_APP: return v >= 1 && v <= 4294967295LL;
    case F_TIME: return v >= 0 && v <= 253402300799999LL;
    case F_LATENCY: return v >= 0 && v <= 3600000;
    case F_CODE: return v >= -2147483648LL && v <= 2147483647LL;
    default: return 0;
    }
}

/* One object; ``newline_ok`` is 0 inside an NDJSON line. Returns the byte after it, or NULL. */
static const char *object(const char *p, const char *end, int newline_ok, Record *r) {
    if (p >= end || *p != '{') return NULL;
    p = skip_ws(p + 1, end, newline_ok);
    r->seen = 0;
    r->s[S_EXC] = "";
    r->n[S_EXC] = 0;
    int f = -1;
    for (;;) {
        const char *key;
        Py_ssize_t key_len, chars;
        int hint = f + 1;
        if (hint < N_FIELDS && end - p > NAME_LEN[hint] + 1 && p[0] == '"' && p[1 + NAME_LEN[hint]] == '"' &&
            same_bytes(p + 1, NAMES[hint], NAME_LEN[hint])) {
            /* The key producers write next, quoted: what plain_string and field_of would find (a name
             * is plain ASCII, so the scan stops at that quote), without the scan. */
            f = hint;
            p += NAME_LEN[hint] + 2;
        } else {
            p = plain_string(p, end, &key, &key_len, &chars);
            if (!p) return NULL;
            f = field_of(key, key_len, hint);
        }
        if (f < 0 || (r->seen & (1u << f))) return NULL;
        r->seen |= 1u << f;
        p = skip_ws(p, end, newline_ok);
        if (p >= end || *p != ':') return NULL;
        p = skip_ws(p + 1, end, newline_ok);
        int sc = STRING_OF[f];
        if (sc >= 0) {
            if (f == F_EXC && end - p >= 4 && memcmp(p, "null", 4) == 0) {
                p += 4;
            } else {
                if (f == F_IFACE) {
                    p = iface_string(p, end, &r->s[sc], &r->n[sc]);
                    chars = r->n[sc];
                } else {
                    p = plain_string(p, end, &r->s[sc], &r->n[sc], &chars);
                }
                if (!p || chars < MIN_LEN[sc] || chars > MAX_LEN[sc]) return NULL;
            }
        } else {
            p = integer(p, end, &r->ints[f]);
            if (!p || !in_range(f, r->ints[f])) return NULL;
        }
        p = skip_ws(p, end, newline_ok);
        if (p >= end) return NULL;
        if (*p == '}') break;
        if (*p != ',') return NULL;
        p = skip_ws(p + 1, end, newline_ok);
    }
    if ((r->seen | (1u << F_EXC)) != (1u << N_FIELDS) - 1) return NULL; /* a required field is missing */
    return p + 1;
}

/* The length of ``a.b.c.`` when the text is a dotted quad as ``inet_pton`` takes it (four decimal
 * octets 0-255 without leading zeros, nothing else: ``privacy.IPV4_RE2``), else -1. */
static Py_ssize_t v4_head(const char *s, Py_ssize_t n) {
    Py_ssize_t i = 0, head = -1;
    for (int part = 0; part < 4; part++) {
        Py_ssize_t start = i;
        int value = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9' && i - start < 3) value = value * 10 + (s[i++] - '0');
        if (i == start || (i - start > 1 && s[start] == '0') || value > 255) return -1;
        if (part < 3) {
            if (i >= n || s[i] != '.') return -1;
            i++;
            if (part == 2) head = i;
        }
    }
    return i == n ? head : -1;
}

/* The /48 network of an IPv6 address as ``privacy.prefix`` writes it (``inet_ntop`` of the first six
 * bytes and ten zero bytes, then ``/48``) into ``out``: its length, or -1 when the text is not an IPv6
 * address ``inet_pton`` takes, or is IPv4-mapped (privacy.prefix gives those a /24: left to it). */
static Py_ssize_t v6_network(const char *s, Py_ssize_t n, char out[INET6_ADDRSTRLEN + 3]) {
    char text[64];
    unsigned char packed[16];
    static const unsigned char v4_mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    /* Python refuses text with a NUL inside; inet_pton would stop at it */
    if (n <= 0 || n >= (Py_ssize_t)sizeof text || !memchr(s, ':', (size_t)n) || memchr(s, 0, (size_t)n)) return -1;
    memcpy(text, s, (size_t)n);
    text[n] = 0;
    if (inet_pton(AF_INET6, text, packed) != 1 || memcmp(packed, v4_mapped, 12) == 0) return -1;
    /* What glibc's inet_ntop writes for the 16 bytes packed[0..6) + ten zero bytes, without its
     * sprintf per group. Its rules: groups in lowercase hex without leading zeros; the longest run of
     * at least two zero groups (the first of equal ones) as "::"; the last 32 bits as a dotted quad
     * when that run starts at group 0 and is 6 long, or 5 long with group 5 0xffff (::a.b.c.d and
     * ::ffff:a.b.c.d). Here groups 3..7 are zero: their run, 5 or more long, takes in the zero groups
     * just before it, so it is the one written as "::" (any other run lies within groups 0..1: at most
     * 2 long). It starts at group 0 only when all eight are zero, a run of 8: never 5 or 6, so no
     * dotted quad. Hence: the groups up to the last nonzero one of 0..2 (zeros among them as "0"),
     * then "::"; "::" alone when all are zero. Python's ipaddress writes the same (the /48 text
     * ``privacy.prefix`` gives). */
    static const char hex[] = "0123456789abcdef";
    unsigned words[3];
    int last = -1;
    for (int i = 0; i < 3; i++) {
        words[i] = (unsigned)packed[2 * i] << 8 | packed[2 * i + 1];
        if (words[i]) last = i;
    }
    char *o = out;
    for (int i = 0; i <= last; i++) {
        unsigned w = words[i];
        if (i) *o++ = ':';
        if (w >= 0x1000) *o++ = hex[w >> 12];
        if (w >= 0x100) *o++ = hex[(w >> 8) & 15];
        if (w >= 0x10) *o++ = hex[(w >> 4) & 15];
        *o++ = hex[w & 15];
    }
    memcpy(o, "::/48", 5);
    return (Py_ssize_t)(o - out) + 5;
}

/* 0, or -1 out of memory, or -2 a string column would pass 2 GiB (Arrow's int32 offsets). */
static int append(LogColumns *c, const Record *r) {
    int64_t t = r->ints[F_TIME];
    uint32_t app = (uint32_t)r->ints[F_APP], latency = (uint32_t)r->ints[F_LATENCY];
    int32_t code = (int32_t)r->ints[F_CODE];
    if (buf_put(&c->time, &t, 8) < 0 || buf_put(&c->app, &app, 4) < 0 || buf_put(&c->latency, &latency, 4) < 0 ||
        buf_put(&c->code, &code, 4) < 0)
        return -1;
    for (int i = 0; i < N_STRINGS; i++) {
        if (INTERNED[i]) {
            int64_t e = intern(c, i, r->s[i], r->n[i]);
            if (e < 0) return (int)e;
            int32_t index = (int32_t)e;
            if (buf_put(&c->index[i], &index, 4) < 0) return -1;
            continue;
        }
        if (buf_put(&c->data[i], r->s[i], r->n[i]) < 0) return -1;
        if (c->data[i].len > INT32_MAX) return -2;
        int32_t end = (int32_t)c->data[i].len;
        if (buf_put(&c->offsets[i], &end, 4) < 0) return -1;
    }
    Py_ssize_t head = c->net_mode == NET_NONE ? -1 : v4_head(r->s[S_IP], r->n[S_IP]);
    uint8_t done = head >= 0;
    if (done && c->net_mode == NET_PREFIX &&
        (buf_put(&c->net_data, r->s[S_IP], head) < 0 || buf_put(&c->net_data, "0/24", 4) < 0))
        return -1;
    char net[INET6_ADDRSTRLEN + 3];
    Py_ssize_t net_len = done || c->net_mode == NET_NONE ? -1 : v6_network(r->s[S_IP], r->n[S_IP], net);
    if (net_len >= 0) {
        done = 1;
        if (c->net_mode == NET_PREFIX && buf_put(&c->net_data, net, net_len) < 0) return -1;
    }
    if (c->net_data.len > INT32_MAX) return -2;
    int32_t net_end = (int32_t)c->net_data.len;
    if (buf_put(&c->net_offsets, &net_end, 4) < 0 || buf_put(&c->net_done, &done, 1) < 0) return -1;
    c->rows++;
    return 0;
}

typedef struct {
    Py_ssize_t time, app, latency, code, offsets[N_STRINGS], data[N_STRINGS], index[N_STRINGS], entries[N_STRINGS],
        net_offsets, net_data, net_done, rows;
} Mark;

static void mark(LogColumns *c, Mark *m) {
    m->time = c->time.len, m->app = c->app.len, m->latency = c->latency.len, m->code = c->code.len;
    for (int i = 0; i < N_STRINGS; i++) {
        m->offsets[i] = c->offsets[i].len, m->data[i] = c->data[i].len;
        m->index[i] = c->index[i].len, m->entries[i] = c->intern[i].count;
    }
    m->net_offsets = c->net_offsets.len, m->net_data = c->net_data.len, m->net_done = c->net_done.len;
    m->rows = c->rows;
}

/* Back to ``m``: nothing of a message that was not taken stays, not even a dictionary entry (a value of
 * a record sent to dead letters must not travel to the server in an insert body's dictionary). */
static void rollback(LogColumns *c, const Mark *m) {
    c->time.len = m->time, c->app.len = m->app, c->latency.len = m->latency, c->code.len = m->code;
    for (int i = 0; i < N_STRINGS; i++) {
        if (INTERNED[i]) unintern(c, i, (uint32_t)m->entries[i]);
        c->offsets[i].len = m->offsets[i], c->data[i].len = m->data[i], c->index[i].len = m->index[i];
    }
    c->net_offsets.len = m->net_offsets, c->net_data.len = m->net_data, c->net_done.len = m->net_done;
    c->rows = m->rows;
}

/* The whole message, appended; the number of records, 0 when it is not one this parser takes (or
 * ``*failed`` is set to append's error). Touches no Python object: it runs without the GIL. */
static Py_ssize_t message(LogColumns *c, const char *p, const char *end, int *failed) {
    Record r;
    Py_ssize_t n = 0;
    int rc;
    p = skip_ws(p, end, 1);
    if (p >= end) return 0;
    if (*p == '[') {
        p = skip_ws(p + 1, end, 1);
        for (;;) {
            p = object(p, end, 1, &r);
            if (!p) return 0;
            if ((rc = append(c, &r)) < 0) goto error;
            n++;
            p = skip_ws(p, end, 1);
            if (p >= end) return 0;
            if (*p == ']') break;
            if (*p != ',') return 0;
            p = skip_ws(p + 1, end, 1);
        }
        p = skip_ws(p + 1, end, 1);
        return p == end ? n : 0;
    }
    /* one object, or NDJSON: exactly one object per line, lines ended by a single \n */
    for (;;) {
        p = object(p, end, 0, &r);
        if (!p) return 0;
        if ((rc = append(c, &r)) < 0) goto error;
        n++;
        p = skip_ws(p, end, 0);
        if (p == end) return n;
        if (*p != '\n') return 0;
        p = skip_ws(p + 1, end, 0);
        if (p == end) return n;
    }
error:
    *failed = rc;
    return 0;
}

static PyObject *LogColumns_add(LogColumns *self, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    Mark m;
    mark(self, &m);
    int failed = 0;
    Py_ssize_t n;
    const char *start = (const char *)view.buf, *end = start + view.len;
    if (view.len >= 4096) { /* a batch: worth letting the engine's I/O thread run meanwhile */
        Py_BEGIN_ALLOW_THREADS
        n = message(self, start, end, &failed);
        Py_END_ALLOW_THREADS
    } else {
        n = message(self, start, end, &failed);
    }
    PyBuffer_Release(&view);
    if (failed) {
        rollback(self, &m);
        if (failed == -2) PyErr_SetString(PyExc_OverflowError, "a string column would pass 2 GiB");
        else PyErr_NoMemory();
        return NULL;
    }
    if (n == 0) {
        rollback(self, &m);
        return PyLong_FromLong(-1);
    }
    return PyLong_FromSsize_t(n);
}

static PyObject *bytes_of(Buf *b) { return PyBytes_FromStringAndSize(b->p ? b->p : "", b->len); }

/* Empty columns (capacity kept): offsets start with a 0. */
static int reset(LogColumns *c) {
    int32_t zero = 0;
    c->time.len = c->app.len = c->latency.len = c->code.len = 0;
    for (int i = 0; i < N_STRINGS; i++) {
        c->data[i].len = c->offsets[i].len = c->index[i].len = 0;
        if (buf_put(&c->offsets[i], &zero, 4) < 0) return -1;
        if (INTERNED[i]) { /* a new dictionary per take; a table grown by one take is not kept */
            Intern *t = &c->intern[i];
            t->count = 0;
            if (t->slots && t->mask + 1 == INTERN_SLOTS) {
                memset(t->slots, 0, INTERN_SLOTS * sizeof *t->slots);
            } else {
                PyMem_RawFree(t->slots);
                t->slots = PyMem_RawCalloc(INTERN_SLOTS, sizeof *t->slots);
                t->mask = INTERN_SLOTS - 1;
                if (!t->slots) return -1;
            }
        }
    }
    c->net_data.len = c->net_offsets.len = c->net_done.len = 0;
    if (buf_put(&c->net_offsets, &zero, 4) < 0) return -1;
    c->rows = 0;
    return 0;
}

static PyObject *LogColumns_take(LogColumns *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *strings = PyTuple_New(N_STRINGS);
    if (!strings) return NULL;
    for (int i = 0; i < N_STRINGS; i++) {
        PyObject *pair = INTERNED[i] ? Py_BuildValue("(NNN)", bytes_of(&self->offsets[i]), bytes_of(&self->data[i]),
                                                     bytes_of(&self->index[i]))
                                     : Py_BuildValue("(NN)", bytes_of(&self->offsets[i]), bytes_of(&self->data[i]));
        if (!pair) {
            Py_DECREF(strings);
            return NULL;
        }
        PyTuple_SET_ITEM(strings, i, pair);
    }
    PyObject *out = Py_BuildValue("(nNNNNN(NNN))", self->rows, bytes_of(&self->time), bytes_of(&self->app),
                                  bytes_of(&self->latency), bytes_of(&self->code), strings,
                                  bytes_of(&self->net_offsets), bytes_of(&self->net_data), bytes_of(&self->net_done));
    if (!out) return NULL;
    if (reset(self) < 0) {
        Py_DECREF(out);
        return PyErr_NoMemory();
    }
    return out;
}

static int LogColumns_init(LogColumns *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"pii_mode", NULL};
    const char *mode = "";
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|s", kwlist, &mode)) return -1;
    self->net_mode = strcmp(mode, "prefix") == 0 ? NET_PREFIX : strcmp(mode, "drop") == 0 ? NET_DROP : NET_NONE;
    if (reset(self) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void LogColumns_dealloc(LogColumns *self) {
    PyMem_RawFree(self->time.p), PyMem_RawFree(self->app.p), PyMem_RawFree(self->latency.p);
    PyMem_RawFree(self->code.p);
    for (int i = 0; i < N_STRINGS; i++) {
        PyMem_RawFree(self->offsets[i].p), PyMem_RawFree(self->data[i].p);
        PyMem_RawFree(self->index[i].p), PyMem_RawFree(self->intern[i].slots);
    }
    PyMem_RawFree(self->net_offsets.p), PyMem_RawFree(self->net_data.p), PyMem_RawFree(self->net_done.p);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *LogColumns_rows(LogColumns *self, void *Py_UNUSED(closure)) { return PyLong_FromSsize_t(self->rows); }

static PyMethodDef LogColumns_methods[] = {
    {"add", (PyCFunction)LogColumns_add, METH_O,
     "add(message: bytes) -> int: append the message's records and return how many; -1 (nothing appended) "
     "when the message is not one this parser takes."},
    {"take", (PyCFunction)LogColumns_take, METH_NOARGS,
     "take() -> (rows, request_time int64, sdk_app_id uint32, latency_ms uint32, error_code int32, "
     "((offsets int32, data) for client_ip, request_id, exception; (dictionary offsets int32, dictionary data, "
     "index int32) for interface, region, platform; in that column order), "
     "(client_net offsets int32, data, done uint8)); then empty."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef LogColumns_getset[] = {
    {"rows", (getter)LogColumns_rows, NULL, "rows appended since the last take()", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LogColumnsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "pipeline.ingest._fastlog.LogColumns",
    .tp_basicsize = sizeof(LogColumns),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "LogColumns(pii_mode=''): request-log messages appended as Arrow column buffers (see the module "
              "docstring); with pii_mode 'prefix' or 'drop', dotted-quad IPv4 and IPv6 addresses are minimised too.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)LogColumns_init,
    .tp_dealloc = (destructor)LogColumns_dealloc,
    .tp_methods = LogColumns_methods,
    .tp_getset = LogColumns_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pipeline.ingest._fastlog",
    "Request-log messages straight into Arrow column buffers (a strict subset of the msgspec decoder).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

/* Constant tables and the hash seed: once per process (the fuzz target calls it too). */
static void init_tables(void) {
    for (int f = 0; f < N_FIELDS; f++) NAME_LEN[f] = (Py_ssize_t)strlen(NAMES[f]);
    init_iface_ok();
#if defined(__linux__)
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) == (ssize_t)sizeof seed) HASH_SEED ^= seed;
#else /* elsewhere a per-process value at least: where the module was loaded (ASLR) */
    HASH_SEED ^= (uint64_t)(uintptr_t)&HASH_SEED * 0x9E3779B97F4A7C15ULL ^ (uint64_t)(uintptr_t)&init_tables;
#endif
}

PyMODINIT_FUNC PyInit__fastlog(void) {
    init_tables();
    if (PyType_Ready(&LogColumnsType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&LogColumnsType);
    if (PyModule_AddObject(m, "LogColumns", (PyObject *)&LogColumnsType) < 0) {
        Py_DECREF(&LogColumnsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
