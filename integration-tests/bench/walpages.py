"""Which tables and indexes a SQLite database's commits write, from its write-ahead log.

Usage:
  python3 walpages.py DIR/orchestrator.db [DIR/order.db ...]

Reads the frames of the WAL's current generation (DB-wal, those carrying the salt of its header),
counts the commits among them (a frame with a database size is the last of its commit), and
names each frame's page by the `dbstat` table of the database: pages written per commit, by the
table or index that owns the page. `sqlite_schema` is page 1 (the header, rewritten whenever the
file grows); `free/new` a page that no table owns now.

While `sagactl bench` runs, its databases are in a temporary directory (`/tmp/.tmp*/`): copy each
`NAME.db` and `NAME.db-wal` side by side elsewhere while the run goes on, then run this on the
copies. Opening a copy lets SQLite replay its WAL into it, so run this once per copy. Needs
Python's sqlite3 built with dbstat (Debian's is).
"""
import collections
import sqlite3
import struct
import sys

HEADER = struct.Struct(">IIIIIIII")
FRAME = struct.Struct(">IIIIII")


def frames(wal_path):
    """(page number, database size or 0) of each frame of the current generation."""
    data = open(wal_path, "rb").read()
    if len(data) < HEADER.size:
        return []
    _magic, _version, page_size, _checkpoint, salt1, salt2, _c1, _c2 = HEADER.unpack_from(data)
    out, at = [], HEADER.size
    while at + FRAME.size + page_size <= len(data):
        page, size_after, s1, s2, _k1, _k2 = FRAME.unpack_from(data, at)
        if (s1, s2) != (salt1, salt2):
            break
        out.append((page, size_after))
        at += FRAME.size + page_size
    return out


def report(db_path):
    written = frames(db_path + "-wal")
    owner = dict(sqlite3.connect(db_path).execute("SELECT pageno, name FROM dbstat").fetchall())
    commits = sum(1 for _, size_after in written if size_after)
    by_owner = collections.Counter(owner.get(page, "free/new") for page, _ in written)
    print(f"{db_path}: frames={len(written)} commits={commits} pages_per_commit={len(written) / max(commits, 1):.1f}")
    for name, n in by_owner.most_common():
        print(f"  {name:34s} {n / max(commits, 1):7.2f} per commit")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for path in sys.argv[1:]:
        report(path)
