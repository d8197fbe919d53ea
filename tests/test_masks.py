"""Masks and sparsity counts (numpy only)."""

import numpy as np
import pytest

from caffe_admm.masks import sparsity_stats


def test_filter_channel_and_column_counts_of_a_convolution_and_an_inner_product():
    w = np.ones((4, 3, 2, 2))
    w[1] = 0                   # a filter
    w[:, 2] = 0                # a channel (4 columns)
    w[:, 0, 1, 1] = 0          # one more column
    s = sparsity_stats(w)
    assert (s["params"], s["nonzero"]) == (48, 3 * 2 * 4 - 3)
    assert (s["filters"], s["filters_kept"]) == (4, 3)
    assert (s["channels"], s["channels_kept"]) == (3, 2)
    assert (s["shapes"], s["shapes_kept"]) == (12, 7)
    assert s["filter_sparsity"] == 0.25 and s["shape_sparsity"] == pytest.approx(5 / 12)
    ip = np.ones((2, 5))
    ip[:, [0, 3]] = 0
    s = sparsity_stats(ip)
    assert (s["filters_kept"], s["channels_kept"], s["shapes_kept"]) == (2, 3, 3)


def test_a_grouped_convolution_counts_each_groups_own_channels():
    """Depthwise, 4 channels: filter g reads channel g alone. Filter 2 zero
    leaves channel 2 unread, though filters of other groups read index 0."""
    w = np.ones((4, 1, 3, 3))
    w[2] = 0
    w[0, 0, 0, 0] = 0
    s = sparsity_stats(w, group=4)
    assert (s["filters_kept"], s["channels"], s["channels_kept"]) == (3, 4, 3)
    assert (s["shapes"], s["shapes_kept"]) == (36, 26)
    # the weight blob alone (group 1) would say one channel, read
    assert sparsity_stats(w)["channels"] == 1
    # group 2: filters 0-1 read channels 0-1, filters 2-3 channels 2-3
    w = np.ones((4, 2, 1, 1))
    w[2:, 1] = 0   # group 1's second channel (input channel 3) unread
    s = sparsity_stats(w, group=2)
    assert (s["channels"], s["channels_kept"], s["shapes_kept"]) == (4, 3, 3)
