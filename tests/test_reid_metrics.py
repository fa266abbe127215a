"""Re-id metrics: hand-built rankings with known CMC/mAP, and a slow reference written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dmlkit.metrics.reid import (
    average_by_identity_camera,
    pairwise_distance,
    rank_queries,
    retrieval_metrics,
)


def evaluate_rank(*args, **kwargs):
    """``(cmc, mAP)`` of :func:`rank_queries` (the shape these tests were written against)."""
    res = rank_queries(*args, **kwargs)
    return res.cmc, res.mAP


def slow_reference(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """The Market-1501 protocol as written in words, one query and one gallery item at a time.

    Ties are broken by gallery index (the documented rule). Returns (cmc, mAP, valid mask).
    """
    cmc_sum = [0.0] * max_rank
    aps, valid = [], []
    for i in range(len(q_pids)):
        ranked = sorted(range(len(g_pids)), key=lambda j: (float(np.float32(dist[i][j])), j))
        ranked = [j for j in ranked if not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])]
        matches = [g_pids[j] == q_pids[i] for j in ranked]
        valid.append(any(matches))
        if not any(matches):
            continue
        first = matches.index(True)
        for k in range(first, max_rank):
            cmc_sum[k] += 1
        found, precisions = 0, []
        for position, is_match in enumerate(matches, start=1):
            if is_match:
                found += 1
                precisions.append(found / position)
        aps.append(sum(precisions) / len(precisions))
    n = len(aps)
    return [c / n for c in cmc_sum], sum(aps) / n, valid


# ---------------------------------------------------------------------------------------------
# hand-built cases


def test_junk_removed_and_first_match_rank():
    # query: identity 1, camera 1. Gallery by distance: [1 cam 1 (junk: removed), 2, 0
    # (distractor), 1 cam 2]. After removal the true match is third.
    dist = [[0.05, 0.1, 0.3, 0.5]]
    g_pids, g_cams = [1, 2, 0, 1], [1, 1, 3, 2]
    cmc, m_ap = evaluate_rank(dist, [1], g_pids, [1], g_cams, max_rank=5)
    assert cmc.tolist() == [0, 0, 1, 1, 1]
    assert m_ap == pytest.approx(1 / 3)


def test_average_precision_of_two_matches():
    # matches at ranks 1 and 3: AP = (1/1 + 2/3) / 2
    dist = [[0.1, 0.2, 0.3, 0.4]]
    cmc, m_ap = evaluate_rank(dist, [5], [5, 7, 5, 7], [1], [2, 2, 3, 3], max_rank=4)
    assert cmc.tolist() == [1, 1, 1, 1]
    assert m_ap == pytest.approx((1 + 2 / 3) / 2)


def test_distractors_count_as_negatives():
    dist = [[0.1, 0.2, 0.3]]  # two distractors (identity 0) before the match
    cmc, m_ap = evaluate_rank(dist, [3], [0, 0, 3], [1], [2, 2, 2], max_rank=3)
    assert cmc.tolist() == [0, 0, 1]
    assert m_ap == pytest.approx(1 / 3)


def test_query_without_valid_match_is_skipped():
    # query 0 has only a same-camera match (removed): skipped, counts in neither average.
    dist = [
        [0.1, 0.9, 0.5],
        [0.9, 0.1, 0.5],
    ]
    g_pids, g_cams = [1, 2, 9], [1, 1, 1]
    res = rank_queries(dist, [1, 2], g_pids, [1, 2], g_cams, max_rank=3)
    assert res.valid.tolist() == [False, True]
    assert res.num_valid == 1
    assert math.isnan(res.ap[0]) and res.ap[1] == pytest.approx(1.0)
    assert res.first_match.tolist() == [0, 1]
    assert res.mAP == pytest.approx(1.0)  # not 0.5: the skipped query is not averaged in
    assert res.cmc.tolist() == [1, 1, 1]


def test_no_valid_query_at_all_is_an_error():
    with pytest.raises(ValueError, match="no query has a true match"):
        evaluate_rank([[0.1, 0.2]], [1], [1, 2], [1], [1, 1])


@pytest.mark.parametrize("match_first", [True, False])
def test_ties_are_broken_by_gallery_order(match_first):
    # the match and a non-match at the same distance: the one earlier in the gallery wins
    g_pids = [4, 8] if match_first else [8, 4]
    cmc, m_ap = evaluate_rank([[0.5, 0.5]], [4], g_pids, [1], [2, 2], max_rank=2)
    assert cmc.tolist() == ([1, 1] if match_first else [0, 1])
    assert m_ap == pytest.approx(1.0 if match_first else 0.5)


def test_tie_with_removed_junk_does_not_shift_ranks():
    # junk (same id, same cam) tied with everything: removed, so the match is first
    dist = [[0.2, 0.2, 0.2]]
    cmc, m_ap = evaluate_rank(dist, [1], [1, 1, 2], [1], [1, 2, 2], max_rank=2)
    assert cmc.tolist() == [1, 1]
    assert m_ap == pytest.approx(1.0)


def test_negative_distances_and_signed_zero():
    # similarity-like negative "distances" order correctly; -0.0 and +0.0 tie
    dist = [[-0.0, 0.0, -1.0]]
    cmc, m_ap = evaluate_rank(dist, [1], [2, 1, 3], [1], [2, 2, 2], max_rank=3)
    # ranked: index 2 (-1.0), then the tie 0/1 by gallery order: 0 (id 2), 1 (the match)
    assert cmc.tolist() == [0, 0, 1]
    assert m_ap == pytest.approx(1 / 3)


def test_cmc_beyond_the_gallery_stays_at_one():
    cmc, _ = evaluate_rank([[0.1, 0.2]], [1], [2, 1], [1], [2, 2], max_rank=50)
    assert cmc.shape == (50,)
    assert cmc[0] == 0 and (cmc[1:] == 1).all()


# ---------------------------------------------------------------------------------------------
# against the slow reference


@pytest.mark.parametrize("seed", range(6))
def test_matches_slow_reference_on_random_data(seed):
    rng = np.random.default_rng(seed)
    nq, ng = int(rng.integers(5, 40)), int(rng.integers(10, 120))
    # integer distances on even seeds: many ties
    if seed % 2 == 0:
        dist = rng.integers(0, 5, (nq, ng)).astype(np.float32)
    else:
        dist = rng.normal(size=(nq, ng)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 6, nq), rng.integers(0, 6, ng)
    q_cams, g_cams = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
    ref_cmc, ref_map, ref_valid = slow_reference(dist, q_pids, g_pids, q_cams, g_cams, 20)
    for chunk in (1, 3, 128):
        res = rank_queries(dist, q_pids, g_pids, q_cams, g_cams, 20, chunk_size=chunk)
        np.testing.assert_allclose(res.cmc, ref_cmc, atol=1e-12)
        assert res.mAP == pytest.approx(ref_map, abs=1e-12)
        assert res.valid.tolist() == ref_valid


def test_torch_and_numpy_inputs_agree():
    rng = np.random.default_rng(7)
    dist = rng.random((12, 30)).astype(np.float32)
    args = (rng.integers(1, 4, 12), rng.integers(1, 4, 30), rng.integers(1, 3, 12))
    g_cams = rng.integers(1, 3, 30)
    a = evaluate_rank(dist, *args, g_cams)
    b = evaluate_rank(torch.from_numpy(dist), *(torch.from_numpy(x) for x in args), g_cams)
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == b[1]


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="g_camids"):
        evaluate_rank([[0.1, 0.2]], [1], [1, 2], [1], [1])
    with pytest.raises(ValueError, match="q_pids"):
        evaluate_rank([[0.1, 0.2]], [1, 2], [1, 2], [1], [1, 2])


# ---------------------------------------------------------------------------------------------
# distances, multiple query, the convenience wrapper


def test_distances_agree_with_direct_formulas():
    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(7, 16, generator=g), torch.randn(11, 16, generator=g)
    eu = pairwise_distance(q, gal, "euclidean")
    torch.testing.assert_close(eu, torch.cdist(q, gal), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        pairwise_distance(q, gal, "sqeuclidean"), eu**2, atol=1e-3, rtol=1e-4
    )
    cos = 1 - torch.nn.functional.cosine_similarity(q[:, None], gal[None], dim=2)
    torch.testing.assert_close(pairwise_distance(q, gal, "cosine"), cos, atol=1e-5, rtol=1e-5)
    qn, gn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(gal, dim=1)
    torch.testing.assert_close(
        pairwise_distance(q, gal, "euclidean", normalize=True),
        torch.cdist(qn, gn),
        atol=1e-4,
        rtol=1e-4,
    )
    # identical vectors: ~0 (the expanded square rounds to within ~1e-6 of 0, hence the sqrt's
    # ~1e-3), never NaN from a tiny negative square
    assert (pairwise_distance(q, q).diagonal() < 5e-3).all()
    assert torch.isfinite(pairwise_distance(q, q)).all()


def test_distance_errors():
    with pytest.raises(ValueError, match="unknown distance"):
        pairwise_distance(torch.zeros(2, 3), torch.zeros(2, 3), "manhattan")
    with pytest.raises(ValueError, match="features must be"):
        pairwise_distance(torch.zeros(2, 3), torch.zeros(2, 4))


def test_multiple_query_averages_each_identity_camera_group():
    feats = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0], [5.0, 5.0]])
    pids, cams = [7, 7, 7, 7, 2], [1, 1, 2, 2, 1]
    mean, g_pids, g_cams = average_by_identity_camera(feats, pids, cams)
    assert list(zip(g_pids.tolist(), g_cams.tolist())) == [(2, 1), (7, 1), (7, 2)]
    torch.testing.assert_close(mean, torch.tensor([[5.0, 5.0], [2.0, 0.0], [0.0, 3.0]]))


def test_retrieval_metrics_perfect_features():
    # each query identity's gallery images sit exactly on the query feature (other cameras)
    q = torch.eye(3)
    gal = torch.cat([torch.eye(3), torch.eye(3)])
    out = retrieval_metrics(q, gal, [1, 2, 3], [1, 2, 3, 1, 2, 3], [1, 1, 1], [2] * 6)
    assert out == {"mAP": 1.0, "rank1": 1.0, "rank5": 1.0, "rank10": 1.0, "rank20": 1.0}


# ---------------------------------------------------------------------------------------------
# property-based: random small problems (hypothesis) against the slow reference

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def _problems(draw):
    nq, ng = draw(st.integers(1, 8)), draw(st.integers(1, 15))
    values = st.integers(0, 3) if draw(st.booleans()) else st.floats(-5, 5, width=32)
    dist = np.array(
        draw(st.lists(st.lists(values, min_size=ng, max_size=ng), min_size=nq, max_size=nq)),
        dtype=np.float32,
    )
    ids = st.integers(-1, 3)
    return (
        dist,
        np.array(draw(st.lists(ids, min_size=nq, max_size=nq))),
        np.array(draw(st.lists(ids, min_size=ng, max_size=ng))),
        np.array(draw(st.lists(st.integers(1, 3), min_size=nq, max_size=nq))),
        np.array(draw(st.lists(st.integers(1, 3), min_size=ng, max_size=ng))),
    )


@settings(max_examples=200, deadline=None)
@given(_problems())
def test_evaluate_rank_property_against_reference(problem):
    dist, q_pids, g_pids, q_cams, g_cams = problem
    try:
        ref_cmc, ref_map, _ = slow_reference(dist, q_pids, g_pids, q_cams, g_cams, 5)
    except ZeroDivisionError:  # no query keeps a true match: the protocol is undefined
        with pytest.raises(ValueError):
            evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
        return
    cmc, mean_ap = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=5)
    np.testing.assert_allclose(np.asarray(cmc)[:5], ref_cmc, atol=1e-9)
    assert float(mean_ap) == pytest.approx(ref_map, abs=1e-9)
