"""What the benchmark scripts share: random weights, the per-item loop, the JSON record.

The scripts import it as ``benchmarks._common`` (the repository root is on
``sys.path`` in each of them).
"""

import json
import os
import sys
import tempfile

import numpy as np

from caffe_admm.protoio import atomic_write


def random_weights(net, rng, scale=1.0, then=None):
    """Fill every parameter blob of ``net`` with standard normal x ``scale``;
    BatchNorm variances made positive (|v| + 0.5) and its scale factor 1.
    ``then(name, type, blobs)``, if given, runs after each layer's fill (so
    that what it draws from ``rng`` comes in the same order as before)."""
    types = dict(zip(net._layer_names, [l.type for l in net.layers]))
    for name, blobs in net.params.items():
        for b in blobs:
            b.data[...] = rng.standard_normal(b.data.shape) * scale
        if types[name] == "BatchNorm":
            blobs[1].data[...] = np.abs(blobs[1].data) + 0.5
            blobs[2].data[...] = 1
        if then is not None:
            then(name, types[name], blobs)


def write_json(path, obj, quiet=False):
    """Write a result as JSON (its folder made, the file written atomically)
    and, unless ``quiet``, say where."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=1)
    if not quiet:
        print("wrote", path)


def interrupted(where, out, kept):
    """Say that a Ctrl-C stopped the run ``where``, and what ``out`` holds
    (``kept``, a phrase; None where nothing was written yet); then exit with
    130, as a shell reports a Ctrl-C."""
    print("interrupted %s; %s" % (where, "%s holds %s" % (out, kept) if kept else
                                  "nothing written to %s" % out), file=sys.stderr, flush=True)
    raise SystemExit(130)


def timed_by_batch(out, run, write_partial):
    """``run(on_batch)``, a timing that calls ``on_batch(result so far)``
    after each batch size, which ``write_partial`` writes to ``out``; on
    Ctrl-C, :func:`interrupted` says which batch sizes ``out`` holds.
    Returns the timing's result."""
    done = []

    def on_batch(so_far):  # an interrupted run keeps the batch sizes it timed
        done[:] = list(so_far["batches"])
        write_partial(so_far)
    try:
        return run(on_batch)
    except KeyboardInterrupt:
        interrupted("after batch size %s" % done[-1] if done else "in the first batch size",
                    out, "batch size %s" % ", ".join(map(str, done)) if done else None)


def rows_of(items, measure, format_table, out):
    """``measure(item, tmp)`` for each item, each in a temporary folder; its
    table lines (``format_table`` of it alone, less the header) printed as
    it comes, then the whole table. The rows are written to ``out`` as JSON
    after each item, so that a run stopped by Ctrl-C keeps the items it
    measured (and exits with 130). Returns the rows."""
    rows = []
    for item in items:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(measure(item, tmp))
        except KeyboardInterrupt:
            interrupted("in %s" % item, out,
                        "the %d measured before it" % len(rows) if rows else None)
        print("\n".join(format_table(rows[-1:]).splitlines()[1:]), flush=True)
        write_json(out, rows, quiet=True)
    print(format_table(rows))
    print("wrote", out)
    return rows
