#!/usr/bin/env python3
"""Compare two directory trees entry by entry: type, permission bits, owner (with --owner),
size, mtime (ns), symlink target, device numbers, file contents (SHA-256), xattrs, sparse holes (with --holes)
and hardlink groups. Prints every difference; exits 1 if there is any.

usage: compare-trees.py [--owner] [--holes] SOURCE RESTORED
"""
import hashlib
import os
import stat
import sys


def walk(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root.encode(), followlinks=False):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, root.encode())] = p
    return out


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def xattrs(path):
    try:
        return {k: os.getxattr(path, k, follow_symlinks=False) for k in os.listxattr(path, follow_symlinks=False)}
    except OSError:
        return {}


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    owner = "--owner" in sys.argv
    holes = "--holes" in sys.argv
    a, b = args
    ea, eb = walk(a), walk(b)
    diffs = []
    for rel in sorted(set(ea) | set(eb)):
        shown = rel.decode(errors="backslashreplace")
        if rel not in eb:
            diffs.append(f"missing in restore: {shown}")
            continue
        if rel not in ea:
            diffs.append(f"extra in restore: {shown}")
            continue
        sa, sb = os.lstat(ea[rel]), os.lstat(eb[rel])
        if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
            diffs.append(f"type differs: {shown}")
            continue
        if not stat.S_ISLNK(sa.st_mode) and stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
            diffs.append(f"mode differs: {shown} {oct(sa.st_mode)} {oct(sb.st_mode)}")
        if owner and (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
            diffs.append(f"owner differs: {shown}")
        if sa.st_mtime_ns != sb.st_mtime_ns:
            diffs.append(f"mtime differs: {shown} {sa.st_mtime_ns} {sb.st_mtime_ns}")
        if (stat.S_ISCHR(sa.st_mode) or stat.S_ISBLK(sa.st_mode)) and sa.st_rdev != sb.st_rdev:
            diffs.append(f"device number differs: {shown}")
        if stat.S_ISLNK(sa.st_mode):
            if os.readlink(ea[rel]) != os.readlink(eb[rel]):
                diffs.append(f"link target differs: {shown}")
        elif stat.S_ISREG(sa.st_mode):
            if sa.st_size != sb.st_size:
                diffs.append(f"size differs: {shown} {sa.st_size} {sb.st_size}")
            elif digest(ea[rel]) != digest(eb[rel]):
                diffs.append(f"content differs: {shown}")
            if holes and sa.st_blocks < sa.st_size // 512 and sb.st_blocks > sa.st_blocks + 64:
                diffs.append(f"holes not kept: {shown} {sa.st_blocks} {sb.st_blocks} blocks")
        if xattrs(ea[rel]) != xattrs(eb[rel]):
            diffs.append(f"xattrs differ: {shown}")
    # Hardlink groups must partition the same way.
    def groups(entries):
        g = {}
        for rel, p in entries.items():
            s = os.lstat(p)
            if stat.S_ISREG(s.st_mode) and s.st_nlink > 1:
                g.setdefault((s.st_dev, s.st_ino), set()).add(rel)
        return sorted(sorted(v) for v in g.values() if len(v) > 1)
    ga, gb = groups(ea), groups(eb)
    if ga != gb:
        diffs.append(f"hardlink groups differ: {len(ga)} groups in source, {len(gb)} in restore")
    for d in diffs[:50]:
        print(d)
    print(f"compared {len(ea)} entries, {len(ga)} hardlink groups: {len(diffs)} differences")
    sys.exit(1 if diffs else 0)


main()
