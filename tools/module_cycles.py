#!/usr/bin/env python3
"""Lists module import cycles in the workspace's crates: a module that imports one that
imports it back (directly or around a longer circle). Imports through re-exports
(`pub use`) count as imports of the module that defines the item. Parent and child
modules are not counted against each other (a child sees its parent's items by
design). Exit status 1 when a cycle exists.

    python3 tools/module_cycles.py pipeline/src dataplane/src controlplane/src
"""
import os
import re
import sys


def modpath(root, f):
    parts = os.path.relpath(f, root)[:-3].split('/')
    if parts[-1] in ('lib', 'main', 'mod'):
        parts = parts[:-1]
    return '::'.join(parts)


def strip_tests(src):
    return re.sub(r'#\[cfg\(test\)\]\s*mod tests\s*\{.*', '', src, flags=re.S)


def uses(src):
    """(kind, segments) for every `crate::`/`super::` path, with braces expanded."""
    out = []
    for m in re.finditer(r'\b(crate|super)((?:::\w+)+)(::\{([^}]*)\})?', src):
        base = m.group(2).strip(':').split('::')
        if m.group(4):
            for item in m.group(4).split(','):
                item = item.strip().split(' as ')[0].split('::')[0].strip()
                if item and item != 'self':
                    out.append((m.group(1), base + [item]))
                elif item == 'self':
                    out.append((m.group(1), base))
        else:
            out.append((m.group(1), base))
    return out


def graph(root):
    files = [os.path.join(d, x) for d, _, fs in os.walk(root) for x in fs if x.endswith('.rs') and x != 'tests.rs' and '/tests/' not in d + '/']
    mods = {}
    for f in files:
        if os.path.basename(f) == 'main.rs' and os.path.exists(os.path.join(root, 'lib.rs')):
            continue  # the binary's root: its modules are its own tree
        mods[modpath(root, f)] = strip_tests(open(f).read())
    reexports = {m: {} for m in mods}
    for m, src in mods.items():
        for kind, segs in uses(' '.join(re.findall(r'pub use [^;]*;', src))):
            target = resolve(m, kind, segs[:-1], mods, {})
            if target:
                reexports[m][segs[-1]] = target
    g = {m: set() for m in mods}
    for m, src in mods.items():
        for kind, segs in uses(src):
            t = resolve(m, kind, segs, mods, reexports)
            if t and t != m and not m.startswith(t + '::') and not t.startswith(m + '::'):
                g[m].add(t)
    return g


def resolve(m, kind, segs, mods, reexports):
    cur = [] if kind == 'crate' else (m.split('::')[:-1] if m else [])
    best = None
    for s in segs:
        key = '::'.join(cur + [s])
        here = '::'.join(cur)
        if key in mods:
            cur = cur + [s]
            best = key
        elif s in reexports.get(here, {}):
            return reexports[here][s]
        else:
            break
    return best


def cycles(g):
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in g:
        if v not in index:
            visit(v)
    return out


bad = False
for root in sys.argv[1:] or ['pipeline/src', 'dataplane/src', 'controlplane/src']:
    g = graph(root)
    found = cycles(g)
    print(f"{root}: {len(g)} modules, {sum(len(e) for e in g.values())} imports, cycles: {found or 'none'}")
    bad |= bool(found)
sys.exit(1 if bad else 0)
