"""Transferability scores (tlsweep/features/measures.py), each against an independent computation: LogME against its evidence
maximised by brute force, k-NN and nearest-class-mean against scikit-learn, the rank statistics against scipy."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.neighbors import KNeighborsClassifier, NearestCentroid

from tlsweep.features import measures as scores


def _evidence_grid(f: np.ndarray, targets: np.ndarray, log_alpha: np.ndarray, log_beta: np.ndarray) -> np.ndarray:
    """log p(y | F, alpha, beta) / N for every (alpha, beta) of the grid and every target column, from the marginal
    y ~ N(0, C), C = I/beta + F F^T/alpha: slogdet and a solve, none of the solver's SVD algebra. C is taken as
    (I + (beta/alpha) F F^T)/beta, whose eigenvalues stay >= 1 where C's own would round below 0."""
    n, gram = len(f), f @ f.T
    out = np.empty((len(log_alpha), len(log_beta), targets.shape[1]))
    for i, la in enumerate(log_alpha):  # one alpha at a time: len(log_beta) N x N matrices in memory
        beta = 10.0 ** log_beta
        scaled = np.eye(n) + (beta / 10.0 ** la)[:, None, None] * gram
        sign, logdet = np.linalg.slogdet(scaled)
        assert (sign > 0).all()
        rhs = np.broadcast_to(targets, (len(beta), *targets.shape))
        quad = np.einsum("nc,bnc->bc", targets, np.linalg.solve(scaled, rhs))
        out[i] = (n * np.log(beta)[:, None] - logdet[:, None] - beta[:, None] * quad - n * np.log(2 * np.pi)) / (2 * n)
    return out


def _brute_force_max(f: np.ndarray, targets: np.ndarray, lo: float = -3.0, hi: float = 9.0) -> np.ndarray:
    """The evidence's maximum per target column, by grids over log10 alpha and log10 beta in [lo, hi]: 121 x 121
    points 0.1 decades apart, then 15 x 15 windows around the best point so far, moved until their best point is
    inside them (so a window follows a ridge the coarse grid undersampled), then 4 times finer, down to a step of
    0.1 / 4**4 = 0.0004 decades."""
    coarse_axis = np.linspace(lo, hi, 121)
    coarse = _evidence_grid(f, targets, coarse_axis, coarse_axis)
    best = []
    for c in range(targets.shape[1]):
        i, j = np.unravel_index(coarse[..., c].argmax(), coarse.shape[:2])
        centre, step = np.array([coarse_axis[i], coarse_axis[j]]), 0.1
        while step > 3e-4:
            while True:
                centre = np.clip(centre, lo + 7 * step, hi - 7 * step)  # the window stays in the box
                axes = [centre[0] + step * np.arange(-7, 8), centre[1] + step * np.arange(-7, 8)]
                e = _evidence_grid(f, targets[:, c:c + 1], *axes)[..., 0]
                i, j = np.unravel_index(e.argmax(), e.shape)
                moved = np.array([axes[0][i], axes[1][j]])
                inside = all(0 < k < 14 or abs(a[k] - lo) < 1e-9 or abs(a[k] - hi) < 1e-9 for k, a in zip((i, j), axes))
                centre = moved
                if inside:
                    break
            value, step = e[i, j], step / 4
        best.append(value)
    return np.array(best)


# (N, D, classes): N > D, N >> D, and N < D, where F F^T has full rank and a class's evidence may be largest at
# beta -> infinity (a fit with no noise), or at alpha -> infinity for a class the features say nothing of (w = 0):
# the grid's edge, 9 decades up, is then within 1e-7 of the limit the fixed point approaches
@pytest.mark.parametrize("n,d,c", [(40, 5, 3), (20, 3, 2), (60, 10, 4), (8, 10, 2), (12, 30, 3), (8, 12, 2)])
def test_logme_is_the_evidence_maximised_by_brute_force(n, d, c):
    rng = np.random.default_rng(n * 100 + d)
    labels = rng.integers(0, c, n)
    f = rng.normal(size=(c, d))[labels] + 1.5 * rng.normal(size=(n, d))
    targets = (labels[:, None] == np.unique(labels)[None, :]).astype(float)
    brute = _brute_force_max(f, targets)
    solved, _, _ = scores.logme_per_class(f, labels)
    # the grids' last step, 0.0004 decades, leaves them below the maximum by at most 4e-8 on these problems
    assert np.allclose(solved, brute, atol=1e-7, rtol=0), solved - brute
    assert (solved >= brute - 1e-9).all()  # no grid point beats the fixed point
    assert scores.logme(f, labels) == pytest.approx(brute.mean(), abs=1e-7)


def test_logme_scores_separated_features_above_the_same_features_with_shuffled_labels():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)  # N=120 < D=256: the regime of 1280-d features of a few hundred images
    f = 3 * rng.normal(size=(4, 256))[labels] + rng.normal(size=(120, 256))
    assert scores.logme(f, labels) > scores.logme(f, rng.permutation(labels)) + 0.1


def _data(seed: int, n_train: int, n_eval: int, d: int, classes: int):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(classes, d))
    y_train, y_eval = rng.integers(0, classes, n_train), rng.integers(0, classes, n_eval)
    noise = 2.0  # overlapping classes: accuracies well below 1, and tied k-NN votes occur
    labels = np.array([3, 7, 11, 20])[:classes]  # labels need not be 0..C-1
    return (means[y_train] + noise * rng.normal(size=(n_train, d)), labels[y_train],
            means[y_eval] + noise * rng.normal(size=(n_eval, d)), labels[y_eval])


@pytest.mark.parametrize("k", [1, 4, scores.KNN_K])
@pytest.mark.parametrize("seed,classes", [(0, 2), (1, 4)])
def test_knn_is_sklearns_cosine_knn(seed, classes, k):
    """Even k with two classes gives tied votes: both go to the smallest label."""
    ftr, ytr, fev, yev = _data(seed, 70, 50, 12, classes)
    want = KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(ftr, ytr).score(fev, yev)
    assert scores.knn_acc(ftr, ytr, fev, yev, k=k) == pytest.approx(want)
    loo = np.mean([KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(np.delete(ftr, i, 0), np.delete(ytr, i))
                   .predict(ftr[i:i + 1])[0] == ytr[i] for i in range(len(ftr))])
    assert scores.knn_acc(ftr, ytr, k=k) == pytest.approx(loo)


def test_knn_past_its_query_cap_classifies_a_fixed_subset_against_every_train_sample(monkeypatch):
    ftr, ytr, fev, yev = _data(2, 90, 60, 12, 4)
    monkeypatch.setattr(scores, "KNN_QUERIES", 25)
    monkeypatch.setattr(scores, "_TRAIN_ROWS", 13)  # train met 13 rows at a time: a last chunk of 12, under k+...
    monkeypatch.setattr(scores, "_SIMILARITIES", 7 * 13)  # ...and blocks of 7 queries: both edges are exercised
    pick = np.sort(np.random.default_rng(0).choice(60, 25, replace=False))
    clf = KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(ftr, ytr)
    assert scores.knn_acc(ftr, ytr, fev, yev, k=5) == pytest.approx(clf.score(fev[pick], yev[pick]))
    left_out = np.sort(np.random.default_rng(0).choice(90, 25, replace=False))
    loo = np.mean([KNeighborsClassifier(n_neighbors=5, metric="cosine").fit(np.delete(ftr, i, 0), np.delete(ytr, i))
                   .predict(ftr[i:i + 1])[0] == ytr[i] for i in left_out])
    assert scores.knn_acc(ftr, ytr, k=5) == pytest.approx(loo)


@pytest.mark.parametrize("leave_one_out", [False, True])
def test_knn_and_ncc_hold_no_float64_copy_of_the_train_features(monkeypatch, leave_one_out):
    """Features of a large folder can be a memory-mapped float32 file: the scores read them a chunk at a time, so
    their float64 working memory is a few chunks, not twice the features."""
    import tracemalloc
    rng = np.random.default_rng(5)
    train = rng.normal(size=(20_000, 256)).astype(np.float32)  # 20 MB; a float64 copy would be 40 MB
    labels = rng.integers(0, 4, len(train))
    held = (None, None) if leave_one_out else (train[:500], labels[:500])
    monkeypatch.setattr(scores, "_TRAIN_ROWS", 512)
    monkeypatch.setattr(scores, "_SIMILARITIES", 100 * 512)  # the similarity block: bounded apart from the features
    monkeypatch.setattr(scores, "KNN_QUERIES", 500)
    for fn in (scores.knn_acc, scores.ncc_acc):
        tracemalloc.start()
        try:
            fn(train, labels, *held)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 0.5 * train.nbytes, (fn.__name__, peak)


def test_logme_from_the_gram_matrix_equals_logme_from_the_svd(monkeypatch):
    """N > D reads F^T F in blocks of rows (memory O(D^2)); it gives the SVD's evidence to float rounding, a
    rank-deficient F (a repeated feature) included."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 3000)
    f = rng.normal(size=(5, 40))[labels] + rng.normal(size=(3000, 40))
    f[:, -1] = f[:, 0]  # rank 39
    gram = scores.logme_per_class(f, labels)
    monkeypatch.setattr(scores, "_spectrum", scores._spectrum_svd)
    svd = scores.logme_per_class(f, labels)
    for a, b in zip(gram, svd):
        assert np.allclose(a, b, rtol=1e-7, atol=0)


@pytest.mark.parametrize("seed,classes", [(2, 2), (3, 4)])
def test_ncc_is_sklearns_nearest_centroid(seed, classes):
    ftr, ytr, fev, yev = _data(seed, 40, 50, 12, classes)
    ytr[0] = 99  # a class of one: leave-one-out cannot predict it for its only sample
    assert scores.ncc_acc(ftr, ytr, fev, yev) == pytest.approx(NearestCentroid().fit(ftr, ytr).score(fev, yev))
    loo = np.mean([NearestCentroid().fit(np.delete(ftr, i, 0), np.delete(ytr, i)).predict(ftr[i:i + 1])[0] == ytr[i]
                   for i in range(len(ftr))])
    assert scores.ncc_acc(ftr, ytr) == pytest.approx(loo)


def _hyperbolic_tau(x: np.ndarray, y: np.ndarray) -> float:
    """Vigna's additive hyperbolic weighted tau without ties, pair by pair: a pair weighs 1/(r_i+1) + 1/(r_j+1),
    r the rank by decreasing x; averaged with the same ranked by y (scipy's rank=True)."""
    def one(rank_by):
        r = np.argsort(np.argsort(-rank_by))
        num = den = 0.0
        for i in range(len(x)):
            for j in range(i + 1, len(x)):
                w = 1 / (r[i] + 1) + 1 / (r[j] + 1)
                num += w * np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
                den += w
        return num / den
    return (one(x) + one(y)) / 2


def test_rank_agreement_matches_scipy_and_the_definitions():
    score = np.array([0.31, 1.20, -0.52, 0.93, 0.12, 2.05, 0.47])  # e.g. LogME of seven backbones
    acc = np.array([0.71, 0.85, 0.60, 0.74, 0.80, 0.88, 0.66])  # their accuracy after transfer
    assert scores.weighted_tau(score, acc) == pytest.approx(stats.weightedtau(score, acc)[0], abs=1e-12)
    assert scores.weighted_tau(score, acc) == pytest.approx(_hyperbolic_tau(score, acc), abs=1e-12)
    d = stats.rankdata(score) - stats.rankdata(acc)
    n = len(score)
    assert scores.spearman_rho(score, acc) == pytest.approx(stats.spearmanr(score, acc)[0], abs=1e-12)
    assert scores.spearman_rho(score, acc) == pytest.approx(1 - 6 * (d ** 2).sum() / (n * (n * n - 1)), abs=1e-12)
    assert scores.weighted_tau(score, score * 3) == pytest.approx(1.0)
    assert scores.weighted_tau(score, -score) == pytest.approx(-1.0)


def test_scores_import_no_torch():
    import subprocess
    import sys

    code = "import sys, tlsweep.features.measures; sys.exit('torch' in sys.modules or 'scipy.stats' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
