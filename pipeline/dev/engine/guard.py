"""The SQL guard of ``imtel engine``: refuses statements that reach past the engine's own store (local
files, the network, other processes), multi-statements and writes over GET.

It reads tokens, not the parsed statement: where its lexer could disagree with ClickHouse's it sees
more code rather than less, so a disagreement refuses a statement instead of letting one through.
"""

from __future__ import annotations

import re

from pipeline.dev.engine.protocol import EngineError

# Tokens of ClickHouse SQL, with whitespace and comments. Where this lexer could disagree with
# ClickHouse's it errs towards seeing *more* code: /* */ is not nested, # and heredocs ($$) are not
# comments or strings here, digits never glue onto a following word.
_SQL_TOKEN = re.compile(r"""\s+|--[^\n]*|/\*.*?\*/|'(?:[^'\\]|\\.|'')*'|`(?:[^`\\]|\\.|``)*`|"(?:[^"\\]|\\.|"")*"
                        |[A-Za-z_][A-Za-z0-9_]*|[0-9]+|.""", re.S | re.X)
READ_STATEMENTS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "("})
WRITE_STATEMENTS = frozenset({"INSERT", "CREATE", "ALTER", "DROP", "TRUNCATE", "OPTIMIZE", "RENAME", "EXCHANGE",
                              "DELETE", "UPDATE", "SYSTEM", "CHECK"})
CREATE_OBJECTS = frozenset({"TABLE", "DATABASE", "VIEW", "MATERIALIZED"})  # no DICTIONARY (SOURCE(FILE ...)),
SYSTEM_COMMANDS = frozenset({"FLUSH", "START", "STOP", "SYNC"})  # USER, FUNCTION, NAMED COLLECTION, ...
# Table functions that read only the engine's own data (or none). Every other table function the
# engine knows (file, url, s3, remote, mysql, executable, input, python, ...) is refused.
TABLE_FUNCTIONS_ALLOWED = frozenset({"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "null", "view",
                                     "merge", "format", "generaterandom", "generateseries", "generate_series",
                                     "loop", "primes"})
# Known to reach outside even when the engine cannot list them (unit tests, other builds); plus the
# scalar functions that do: file() reads a file, disk() mounts a path, catboostEvaluate() loads one.
KNOWN_OUTSIDE = frozenset({
    "file", "filecluster", "url", "urlcluster", "s3", "s3cluster", "gcs", "oss", "cosn", "hdfs", "hdfscluster",
    "azureblobstorage", "azureblobstoragecluster", "remote", "remotesecure", "cluster", "clusterallreplicas",
    "mysql", "postgresql", "sqlite", "mongodb", "redis", "jdbc", "odbc", "executable", "input", "python", "eval",
    "filesystem", "dictionary", "iceberg", "deltalake", "hudi", "paimon", "ytsaurus", "bigquery", "arrowstream",
    "disk", "catboostevaluate"})
# Engines (tables and databases) that keep data in the engine's own store.
ENGINES_ALLOWED = frozenset({"memory", "null", "log", "tinylog", "stripelog", "set", "join", "buffer", "distributed",
                             "merge", "view", "materializedview", "atomic", "ordinary", "lazy", "replicated"})
DATABASE_ENGINES = frozenset({"atomic", "ordinary", "lazy", "replicated", "memory", "filesystem", "s3", "hdfs",
                              "mysql", "materializedmysql", "postgresql", "materializedpostgresql", "sqlite",
                              "backup", "datalakecatalog"})
DENIED_WORDS = frozenset({"INFILE", "OUTFILE"})


def sql_tokens(sql: str) -> list[str]:
    """The tokens of ``sql`` without whitespace and comments (strings keep their quotes)."""
    return [t for t in _SQL_TOKEN.findall(sql) if not (t[0].isspace() or t.startswith(("--", "/*")))]


def _name(token: str) -> str | None:
    """A word or quoted identifier as a lower-case name; None for other tokens. A quoted name with
    a backslash escape could spell any name: it is returned with its quotes and never allowed."""
    if token[0].isalpha() or token[0] == "_":
        return token.lower()
    if token[0] in "`\"" and len(token) > 1:
        return token if "\\" in token else token[1:-1].replace(token[0] * 2, token[0]).lower()
    return None


def _refuse(reason: str) -> EngineError:
    return EngineError.of(497, f"Not allowed by imtel engine: {reason} (see docs/security.md)")


class SqlGuard:
    """Refuses statements that would reach past the engine's own store (local files, the network,
    other processes) and writes over GET. Table functions and engines are allow-listed: anything the
    engine names in ``system.table_functions`` and that is not known to stay inside is refused."""

    def __init__(self, table_functions: frozenset[str] = frozenset(), engines: frozenset[str] = frozenset()) -> None:
        self.outside = (frozenset(n.lower() for n in table_functions) | KNOWN_OUTSIDE) - TABLE_FUNCTIONS_ALLOWED
        self.engines = frozenset(n.lower() for n in engines) | DATABASE_ENGINES

    def check(self, sql: str, *, read_only: bool) -> None:
        """EngineError (164 READONLY, 497 ACCESS_DENIED) unless ``sql`` may run."""
        tokens = sql_tokens(sql)
        if not tokens:
            return  # the engine answers an empty query with its own syntax error
        self._check_kind(tokens, read_only)
        if ";" in tokens and any(t != ";" for t in tokens[tokens.index(";"):]):
            raise _refuse("one statement per request (multi-statements are refused, as ClickHouse does)")
        for token, following in zip(tokens, [*tokens[1:], ""], strict=True):
            if token.upper() in DENIED_WORDS:
                raise _refuse(f"{token.upper()} reads or writes local files")
            name = _name(token)
            if following == "(" and name is not None and (name in self.outside or "\\" in name):
                raise _refuse(f"{name}() reaches outside the engine's store")
        if tokens[0].upper() == "CREATE":
            self._check_engines(tokens)

    @staticmethod
    def _check_kind(tokens: list[str], read_only: bool) -> None:
        kind = tokens[0].upper()
        if read_only and kind not in READ_STATEMENTS:
            raise EngineError.of(164, f"Cannot execute {kind} in readonly mode: a GET request may only read, "
                                      "send statements that change data with POST")
        if kind not in READ_STATEMENTS | WRITE_STATEMENTS:
            raise _refuse(f"{kind} statements")
        words = [t.upper() for t in tokens[1:] if t.upper() not in ("OR", "REPLACE", "TEMPORARY")]
        if kind == "CREATE" and (not words or words[0] not in CREATE_OBJECTS):
            raise _refuse(f"CREATE {words[0] if words else ''}".strip())
        if kind == "SYSTEM" and (not words or words[0] not in SYSTEM_COMMANDS):
            raise _refuse(f"SYSTEM {tokens[1] if len(tokens) > 1 else ''}".strip())

    def _check_engines(self, tokens: list[str]) -> None:
        """``ENGINE = X``: X must keep its data in the store (not File, URL, S3, MySQL, FileLog, ...)."""
        for i, token in enumerate(tokens[:-1]):
            if token.upper() != "ENGINE":
                continue
            equals = tokens[i + 1] == "="
            name = _name(tokens[i + 2]) if equals and i + 2 < len(tokens) else _name(tokens[i + 1])
            if name is None or not (equals or name in self.engines):
                continue  # a column called engine
            if not (name.endswith("mergetree") or name in ENGINES_ALLOWED):
                raise _refuse(f"ENGINE {name} keeps data outside the engine's store")
