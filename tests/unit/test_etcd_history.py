"""Noticing etcd's history going back, from reply headers alone."""

from __future__ import annotations

from dbvip.adapters.etcd_history import History


def header(revision: int, cluster: str = "cdf818194e3a8c32") -> dict[str, object]:
    return {"cluster_id": cluster, "member_id": "8e9e05c52164694d", "revision": str(revision)}


def test_revisions_going_forward_or_standing_still_are_no_reset() -> None:
    history = History()
    for revision in (5, 5, 9, 120):
        history.saw(header(revision))
    assert history.take() is None


def test_a_revision_below_one_seen_is_a_reset_told_once_and_a_new_baseline() -> None:
    history = History()
    history.saw(header(1042))
    history.saw(header(3))
    assert history.take() == "etcd revision 3 after 1042 was seen"
    assert history.take() is None
    history.saw(header(4))  # the new history goes on from there
    assert history.take() is None


def test_another_cluster_id_is_a_reset_even_with_a_higher_revision() -> None:
    history = History()
    history.saw(header(10))
    history.saw(header(50, cluster="14841639068965178418"))
    cause = history.take()
    assert cause is not None and "cluster id" in cause
