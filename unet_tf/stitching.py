"""Joining objects cut by chunk borders: each chunk is labelled on its own (with context around
it), and an object cut by a border is joined across it where both chunks agree on the pixels of
the border lines (each object is most of the other). Plain numpy."""

import numpy as np


def edge_lines(labels, core):
    """The lines at each side of a chunk's core: its own edge line (``in``) and the line just
    outside it as labelled with this chunk's context (``out``, where the halo reaches)."""
    (t, b), (l, r) = core
    edges = {"top_in": labels[t, l:r], "bottom_in": labels[b - 1, l:r],
             "left_in": labels[t:b, l], "right_in": labels[t:b, r - 1]}
    if t > 0:
        edges["top_out"] = labels[t - 1, l:r]
    if b < labels.shape[0]:
        edges["bottom_out"] = labels[b, l:r]
    if l > 0:
        edges["left_out"] = labels[t:b, l - 1]
    if r < labels.shape[1]:
        edges["right_out"] = labels[t:b, r]
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


def stitch(records, grid_shape):
    """Look-up tables ``{chunk index: array}`` from each chunk's labels to global ids
    ``1..N``, joining objects cut by chunk borders. ``records`` maps ``(i, j)`` to a chunk's
    edge record (see :func:`_segment_chunk`)."""
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

    rows, cols = grid_shape
    for (i, j), record in records.items():
        for below, mine_out, their_in, mine_in, their_out in (
                ((i + 1, j), "bottom_out", "top_in", "bottom_in", "top_out"),
                ((i, j + 1), "right_out", "left_in", "right_in", "left_out")):
            if below not in records:
                continue
            other = records[below]
            # the neighbour's first line, seen by both; then this chunk's last line, seen by both
            for mine, theirs in ((record[mine_out], other[their_in]),
                                 (record[mine_in], other[their_out])):
                for a, b in _agreeing_pairs(mine, theirs):
                    parent[find(offsets[(i, j)] + a)] = find(offsets[below] + b)
    final, tables = {}, {}
    for key in sorted(records):
        table = np.zeros(int(records[key]["top"]) + 1, np.uint32)
        for local in records[key]["present"]:
            if local:
                root = find(offsets[key] + int(local))
                table[local] = final.setdefault(root, len(final) + 1)
        tables[key] = table
    return tables
