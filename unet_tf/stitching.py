"""Joining objects cut by chunk borders, in 2-D and 3-D: each chunk is labelled on its own (with
context around it), and an object cut by a border is joined across it where both chunks agree
on the pixels (voxels) of the border lines (planes): each object is most of the other there.
Plain numpy."""

import numpy as np


def edge_lines(labels, core):
    """The lines (planes, in 3-D) at each side of a chunk's ``core`` (``(start, stop)`` per
    axis of ``labels``): per axis ``a``, the core's own first and last line (``{a}lo_in``,
    ``{a}hi_in``) and the lines just outside it as labelled with this chunk's context
    (``{a}lo_out``, ``{a}hi_out``, where the context reaches)."""
    inside = [slice(start, stop) for start, stop in core]

    def line(axis, position):
        index = list(inside)
        index[axis] = position
        return labels[tuple(index)]

    edges = {}
    for axis, (start, stop) in enumerate(core):
        edges[f"{axis}lo_in"], edges[f"{axis}hi_in"] = line(axis, start), line(axis, stop - 1)
        if start > 0:
            edges[f"{axis}lo_out"] = line(axis, start - 1)
        if stop < labels.shape[axis]:
            edges[f"{axis}hi_out"] = line(axis, stop)
    return edges


def _agreeing_pairs(mine, theirs):
    """Pairs ``(a, b)`` of labels (both > 0) that are each most of the other on one line."""
    both = (mine > 0) & (theirs > 0)
    if not both.any():
        return []
    pairs, counts = np.unique(np.stack([mine[both], theirs[both]]), axis=1, return_counts=True)
    size_a = dict(zip(*np.unique(mine[mine > 0], return_counts=True)))
    size_b = dict(zip(*np.unique(theirs[theirs > 0], return_counts=True)))
    return [(int(a), int(b)) for (a, b), n in zip(pairs.T, counts)
            if 2 * n > size_a[a] and 2 * n > size_b[b]]


def stitch(records):
    """Look-up tables ``{chunk index: array}`` from each chunk's labels to global ids
    ``1..N``, joining objects cut by chunk borders. ``records`` maps a chunk's grid index
    (``(i, j)``, or ``(i, j, k)`` in 3-D) to its record: ``top`` (its largest label),
    ``present`` (its labels in the core) and its :func:`edge_lines`."""
    offsets, total = {}, 0
    for key in sorted(records):
        offsets[key] = total
        total += int(records[key]["top"]) + 1
    parent = np.arange(total)

    def find(node):
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for key, record in records.items():
        for axis in range(len(key)):
            after = tuple(k + (a == axis) for a, k in enumerate(key))
            if after not in records:
                continue
            other = records[after]
            # the neighbour's first line, seen by both; then this chunk's last line, seen by both
            for mine, theirs in ((record[f"{axis}hi_out"], other[f"{axis}lo_in"]),
                                 (record[f"{axis}hi_in"], other[f"{axis}lo_out"])):
                for a, b in _agreeing_pairs(mine, theirs):
                    parent[find(offsets[key] + a)] = find(offsets[after] + b)
    final, tables = {}, {}
    for key in sorted(records):
        table = np.zeros(int(records[key]["top"]) + 1, np.uint32)
        for local in records[key]["present"]:
            if local:
                root = find(offsets[key] + int(local))
                table[local] = final.setdefault(root, len(final) + 1)
        tables[key] = table
    return tables
