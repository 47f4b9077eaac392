"""Elo as in the paper's App. E.1.2: expected score, K = 1, start 1000, bootstrapped over random orderings."""
import numpy as np
import pytest

from svd_core.eval.elo import (Vote, aggregate_elo, bootstrap_elo, elo_by_axis, elo_by_axis_and_aggregate,
                               elo_sequential, expected_score, format_tables, read_votes_csv, write_votes_csv)
from svd_core.eval.standins import votes_csv


def test_expected_score():
    assert expected_score(1000, 1000) == pytest.approx(0.5)
    assert expected_score(1400, 1000) == pytest.approx(10 / 11)
    assert expected_score(1000, 1400) + expected_score(1400, 1000) == pytest.approx(1.0)


def test_single_updates_with_k1():
    r = elo_sequential([Vote("A", "B", "a")])
    assert r == {"A": pytest.approx(1000.5), "B": pytest.approx(999.5)}
    r = elo_sequential([Vote("A", "B", "tie")])
    assert r == {"A": pytest.approx(1000.0), "B": pytest.approx(1000.0)}
    r = elo_sequential([Vote("A", "B", "a"), Vote("A", "B", "a")])
    e = 1 / (1 + 10 ** ((999.5 - 1000.5) / 400))
    assert r["A"] == pytest.approx(1000.5 + (1 - e)) and r["B"] == pytest.approx(999.5 - (1 - e))


def test_bootstrap_equals_mean_of_sequential_runs_over_its_orderings():
    rng = np.random.default_rng(0)
    votes = [Vote(*rng.choice(["A", "B", "C"], 2, replace=False), winner=str(rng.choice(["a", "b", "tie"])))
             for _ in range(30)]
    t = bootstrap_elo(votes, num_orderings=7, seed=3)
    perm_rng = np.random.default_rng(3)
    runs = [elo_sequential([votes[i] for i in perm_rng.permutation(len(votes))]) for _ in range(7)]
    for i, m in enumerate(t.models):
        assert t.rating[i] == pytest.approx(np.mean([r[m] for r in runs]), abs=1e-9)
        assert t.low[i] <= t.rating[i] <= t.high[i]
    # ratings are zero-sum around the initial rating
    assert t.rating.mean() == pytest.approx(1000.0)


def test_synthetic_tournament_recovers_strength_order():
    strengths = {"A": 300.0, "B": 150.0, "C": 0.0, "D": -150.0}
    rng = np.random.default_rng(1)
    votes = []
    for _ in range(3000):
        a, b = rng.choice(list(strengths), 2, replace=False)
        p = expected_score(strengths[a], strengths[b])
        votes.append(Vote(str(a), str(b), "a" if rng.random() < p else "b", "visual_quality"))
    t = bootstrap_elo(votes, num_orderings=1000, axis="visual_quality")
    ranked = t.ranked()
    assert [m for m, *_ in ranked] == ["A", "B", "C", "D"]
    # separated 95% intervals over orderings, each containing its mean
    for (m1, r1, lo1, hi1), (m2, r2, lo2, hi2) in zip(ranked, ranked[1:]):
        assert lo1 < r1 < hi1 and lo1 > hi2
    assert t.num_votes == 3000 and t.ci == 0.95
    assert bootstrap_elo(votes, num_orderings=50, seed=5).rating == pytest.approx(
        bootstrap_elo(votes, num_orderings=50, seed=5).rating)


def test_axes_are_rated_separately(tmp_path):
    votes = [Vote("A", "B", "a", "visual_quality")] * 20 + [Vote("A", "B", "b", "prompt_following")] * 20
    tables = elo_by_axis(votes, num_orderings=20)
    assert list(tables) == ["visual_quality", "prompt_following"]
    assert tables["visual_quality"].ranked()[0][0] == "A"
    assert tables["prompt_following"].ranked()[0][0] == "B"
    text = format_tables(tables)
    assert "axis: visual_quality" in text and "axis: prompt_following" in text and "[" in text


def test_csv_roundtrip_and_winner_forms(tmp_path):
    p = tmp_path / "v.csv"
    p.write_text("model_a,model_b,winner,axis\nsvd,xt,svd,visual_quality\nsvd,xt,B,visual_quality\n"
                 "svd,xt,tie,prompt_following\nsvd,xt,right,prompt_following\nsvd,xt,xt,\n")
    votes = read_votes_csv(str(p))
    assert [v.winner for v in votes] == ["a", "b", "tie", "b", "b"]
    assert votes[-1].axis == "overall"
    write_votes_csv(votes, str(tmp_path / "w.csv"))
    assert read_votes_csv(str(tmp_path / "w.csv")) == votes
    votes_csv(tmp_path / "s.csv", n=60)
    assert len(read_votes_csv(str(tmp_path / "s.csv"))) == 60


def test_csv_errors(tmp_path):
    p = tmp_path / "bad.csv"
    p.write_text("model_a,model_b,axis\na,b,x\n")
    with pytest.raises(ValueError, match="lacks column.*winner"):
        read_votes_csv(str(p))
    p.write_text("model_a,model_b,winner\na,b,maybe\n")
    with pytest.raises(ValueError, match="line 2: winner 'maybe'"):
        read_votes_csv(str(p))
    p.write_text("model_a,model_b,winner\na,a,a\n")
    with pytest.raises(ValueError, match="compared with itself"):
        read_votes_csv(str(p))


def test_aggregated_elo_pools_the_axes_votes_hand_computed():
    """Paper App. E.1.2 (K = 1, start 1000, mean over random orderings) with the axes aggregated as one pool of
    games (the "aggregated" preference next to prompt alignment and visual quality, paper Figs. 3-4).

    Votes: visual_quality A>B twice, prompt_following B>A once. Pooled, an ordering is one of three outcome
    sequences for A (W W L, W L W, L W W), each with probability 1/3. By hand, with E = 1/(1+10^(-d/400)):
      W: 1000.5; W: E = 1/(1+10^(-1/400)) = 0.5014391, A = 1000.9985609; L: E = 0.5028741, A = 1000.4956868
      W: 1000.5; L: A = 1000.5 - 0.5014391 = 999.9985609; W: E = 0.4999959 (d = -0.0028782), A = 1000.4985650
      L:  999.5; W: E = 0.4985609, A = 1000.0014391;      W: E = 0.5000041, A = 1000.5014350
    so the aggregated rating of A is their mean 1000.4985623 (B: 2000 minus it), the interval spans the
    extremes; per axis A is 1000.9985609 (visual quality) and 999.5 (prompt following)."""
    votes = [Vote("A", "B", "a", "visual_quality"), Vote("A", "B", "a", "visual_quality"),
             Vote("A", "B", "b", "prompt_following")]
    seqs = [1000.4956868307, 1000.4985650304, 1000.5014349696]
    t = aggregate_elo(votes, num_orderings=30000, ci=1.0, seed=0)
    a = t.models.index("A")
    assert t.axis == "aggregated" and t.num_votes == 3 and t.wins == {"A": 2, "B": 1}
    assert t.rating[a] == pytest.approx(np.mean(seqs), abs=1e-4)  # sampling error of the mean: ~1e-5
    assert t.low[a] == pytest.approx(seqs[0], abs=1e-9) and t.high[a] == pytest.approx(seqs[2], abs=1e-9)
    assert t.rating.sum() == pytest.approx(2000.0)
    tables = elo_by_axis_and_aggregate(votes, num_orderings=50)
    assert list(tables) == ["visual_quality", "prompt_following", "aggregated"]
    vq, pf = tables["visual_quality"], tables["prompt_following"]
    assert vq.rating[vq.models.index("A")] == pytest.approx(1000.9985609, abs=1e-6)
    assert pf.rating[pf.models.index("A")] == pytest.approx(999.5)
    # not the mean of the per-axis ratings (1000.2492804): the axes are pooled vote by vote
    assert tables["aggregated"].rating[a] == pytest.approx(np.mean(seqs), abs=2e-3)
    # restricted to one axis, the aggregate is that axis's table
    only = aggregate_elo(votes, axes=["visual_quality"], num_orderings=10)
    assert only.rating[a] == pytest.approx(1000.9985609, abs=1e-6)
    with pytest.raises(ValueError, match="axis 'motion' has no votes"):
        aggregate_elo(votes, axes=["motion"])
    with pytest.raises(ValueError, match="already use the axis name 'aggregated'"):
        elo_by_axis_and_aggregate([Vote("A", "B", "a", "aggregated")])


def test_votes_csv_cells_cannot_run_as_spreadsheet_formulas_and_read_back_unchanged(tmp_path):
    """OWASP "CSV injection": a cell starting with = + - @ tab or CR is a formula in Excel / LibreOffice. Model
    names come from folder names, so the table guards them with a leading apostrophe and reads them back as
    written; a name that merely starts with an apostrophe is left alone."""
    from svd_core.eval.elo import Vote, read_votes_csv, write_votes_csv

    votes = [Vote("=HYPERLINK(\"http://x\")", "-neg", "a", "visual_quality"), Vote("+plus", "@at", "tie"),
             Vote("'quoted", "plain", "b", "=axis")]
    path = tmp_path / "votes.csv"
    write_votes_csv(votes, str(path))
    cells = [c for line in path.read_text().splitlines()[1:] for c in line.replace('"', "").split(",")]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@"))], cells
    assert "'=HYPERLINK(http://x)" in cells and "'quoted" in cells
    assert read_votes_csv(str(path)) == votes
