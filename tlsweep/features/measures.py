"""Transferability scores of frozen features: how well a backbone's features suit a task, read from the features
alone, before any training (LogME, k-NN and nearest-class-mean accuracy), and how well a score ranks backbones by the
accuracy they reach after transfer (weighted Kendall tau, Spearman rho).

Features are an (N, D) array, labels an (N,) array of class labels. Pure numpy (scipy.stats for the rank
statistics, imported when they are asked for): whoever extracts the features owns torch, nothing here imports it.
"""
from __future__ import annotations

import numpy as np

# k of knn_acc: the k-NN evaluation of DINO (Caron et al., ICCV 2021) found 20 neighbours best among 10, 20, 100, 200
KNN_K = 20
_BLOCK = 1024  # eval rows per block of ncc_acc's distances (N_eval x classes)
_SIMILARITIES = 2**23  # knn_acc's block of eval x train similarities: 64 MB of float64, whatever N
# train rows turned into float64 at a time (k-NN's unit rows, NCC's class sums): the features may be a memory-mapped
# float32 file larger than RAM, and a float64 copy of all of them is twice their size
_TRAIN_ROWS = 4096
# knn_acc's queries: a fixed-seed subset of this many where there are more. Its cost is queries x N_train x D: all
# 90,000 of a 100k-image folder's train split, left out one at a time, took minutes where 10,000 take seconds, and
# the accuracy of 10,000 queries is known to within about a point (its binomial standard error is at most 0.5)
KNN_QUERIES = 10_000


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021).

    Per class, a Bayesian linear regression from the features onto the class's one-vs-rest target
    (w ~ N(0, I/alpha), y ~ N(Fw, I/beta)); its log evidence, maximised over alpha and beta and divided by N,
    averaged over the classes. Higher is better. alpha and beta come from the fixed-point iteration of You et al.,
    "Ranking and Tuning Pre-trained Models: A New Paradigm for Exploiting Model Hubs" (JMLR 2022), on the SVD of F,
    so that N < D (1280-d features of a few hundred images) costs one thin SVD.
    """
    return float(logme_per_class(features, labels)[0].mean())


def logme_per_class(features: np.ndarray, labels: np.ndarray, tol: float = 1e-10,
                    max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(evidence / N, alpha, beta) per class, classes in sorted order; `logme` is the evidence's mean.

    The iteration is MacKay's: gamma = sum_i beta s_i / (alpha + beta s_i) over the eigenvalues s_i of F^T F,
    alpha <- gamma / |m|^2, beta <- (N - gamma) / |Fm - y|^2, with m the posterior mean. It stops when alpha/beta
    moves by less than `tol` (relative) or when the evidence gains less than `tol` per sample: where the evidence
    is largest at beta -> infinity (N < D: some w fits y exactly), alpha/beta keeps shrinking towards 0 while the
    evidence has already reached its limit.
    """
    y = np.asarray(labels)
    features = np.asarray(features)
    if features.ndim != 2 or y.shape != (len(features),):
        raise ValueError(f"features must be (N, D) and labels (N,); got {features.shape} and {y.shape}")
    n, d = features.shape
    classes = np.unique(y)
    s, z2 = _spectrum(features, y, classes) if n > d else _spectrum_svd(features, y, classes)
    s = s[:, None]
    off = np.maximum(np.bincount(np.searchsorted(classes, y), minlength=len(classes)) - z2.sum(0), 0.0)
    zero = d - len(s)  # eigenvalues of F^T F that are 0 because N < D: each adds log(alpha) to log|A|

    def evidence(alpha: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        lam = alpha / beta
        den = s + lam  # (alpha + beta s_i) / beta
        gamma = (s / den).sum(0)
        m2 = (s * z2 / den ** 2).sum(0)  # |m|^2, m = beta A^-1 F^T y
        res2 = (z2 * (lam / den) ** 2).sum(0) + off  # |F m - y|^2
        # log|A| over all D eigenvalues of A = alpha I + beta F^T F, the zero ones of F^T F included: the JMLR
        # reference code sums only the k nonzero ones, which overstates the evidence by (D - k)/2 log(alpha) when N < D
        logdet = np.log(alpha + beta * s).sum(0) + zero * np.log(alpha)
        e = (d * np.log(alpha) + n * np.log(beta) - beta * res2 - alpha * m2 - logdet - n * np.log(2 * np.pi)) / 2
        return e / n, gamma, m2, res2

    tiny = np.finfo(np.float64).tiny
    alpha, beta = np.ones(len(classes)), np.ones(len(classes))
    ev, gamma, m2, res2 = evidence(alpha, beta)
    for _ in range(max_iter):
        new_alpha = gamma / np.maximum(m2, tiny)
        new_beta = (n - gamma) / np.maximum(res2, tiny)
        new_ev, gamma, m2, res2 = evidence(new_alpha, new_beta)
        step = np.abs(new_alpha / new_beta * beta / alpha - 1)
        alpha, beta = new_alpha, new_beta
        done = (step < tol) | (np.abs(new_ev - ev) < tol)
        ev = new_ev
        if done.all():
            break
    return ev, alpha, beta


def _spectrum_svd(features: np.ndarray, y: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues of F^T F, the targets' energy along each singular direction, k x C), from F's SVD: for N <= D."""
    f = np.asarray(features, dtype=np.float64)
    targets = (y[:, None] == classes[None, :]).astype(np.float64)  # one-vs-rest, N x C
    u, sv, _ = np.linalg.svd(f, full_matrices=False)  # k = min(N, D) singular values
    return sv ** 2, (u.T @ targets) ** 2


def _spectrum(features: np.ndarray, y: np.ndarray, classes: np.ndarray,
              rows: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """The same from F^T F (D x D), for N > D, as the LogME authors' code does there: F is read in blocks of rows, so
    memory is O(D^2), not O(N D) (an SVD of 100,000 x 1,280 float64 features held several GB). u_i^T Y is
    v_i^T F^T Y / sqrt(s_i); a direction with s_i at rounding level holds no fit, and its energy goes to the residual
    (as an SVD's zero singular directions' does)."""
    d = features.shape[1]
    gram, fty = np.zeros((d, d)), np.zeros((d, len(classes)))
    code = np.searchsorted(classes, y)
    for start in range(0, len(features), rows):
        block = np.asarray(features[start:start + rows], dtype=np.float64)
        gram += block.T @ block
        fty += block.T @ (code[start:start + rows, None] == np.arange(len(classes))[None, :])  # F^T Y
    s, v = np.linalg.eigh(gram)
    s = np.maximum(s, 0.0)
    real = s > s.max() * d * np.finfo(np.float64).eps
    z2 = np.zeros((d, len(classes)))
    z2[real] = (v[:, real].T @ fty) ** 2 / s[real, None]
    return np.where(real, s, 0.0), z2


def _unit(f: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (a zero row stays zero), as float64."""
    f = np.array(f, dtype=np.float64)
    f /= _norms(f)[:, None]
    return f


def _norms(f: np.ndarray) -> np.ndarray:
    """Each row's length in float64 (1 for a zero row, so that it divides to zero), read _TRAIN_ROWS at a time."""
    out = np.empty(len(f))
    for start in range(0, len(f), _TRAIN_ROWS):
        rows = np.asarray(f[start:start + _TRAIN_ROWS], dtype=np.float64)
        out[start:start + _TRAIN_ROWS] = np.sqrt(np.einsum("ij,ij->i", rows, rows))  # not linalg.norm: no squared copy
    return np.where(out > 0, out, 1.0)


def _check_pair(eval_f, eval_y) -> bool:
    """Leave-one-out on train?"""
    if (eval_f is None) != (eval_y is None):
        raise ValueError("give both eval_f and eval_y, or neither (leave-one-out on train)")
    return eval_f is None


def knn_acc(train_f: np.ndarray, train_y: np.ndarray, eval_f: np.ndarray | None = None,
            eval_y: np.ndarray | None = None, k: int = KNN_K) -> float:
    """k-nearest-neighbour accuracy under cosine similarity with an unweighted majority vote: k = 20 as in DINO's
    k-NN evaluation (Caron et al., ICCV 2021), whose vote is weighted, the rule here is scikit-learn's
    KNeighborsClassifier(metric="cosine"). A tied vote goes to the smallest class label (scikit-learn's rule).

    With no eval split, leave-one-out on train: each sample's neighbours are the other samples. k is capped at the
    number of candidate neighbours. Past KNN_QUERIES eval (or left-out train) samples, a fixed-seed subset of that
    many is classified, against every train sample.
    """
    loo = _check_pair(eval_f, eval_y)
    train_y = np.asarray(train_y)
    classes, code = np.unique(train_y, return_inverse=True)
    n_train = len(train_f)
    k = min(k, n_train - loo)
    if k < 1:
        raise ValueError("knn_acc needs at least one neighbour: two training samples for leave-one-out")
    norms = _norms(train_f)
    # the queries: every eval sample (every train sample, left out in turn), or a fixed-seed subset of KNN_QUERIES
    n_queries = n_train if loo else len(eval_f)
    queries = np.arange(n_queries)
    if n_queries > KNN_QUERIES:
        queries = np.sort(np.random.default_rng(0).choice(n_queries, KNN_QUERIES, replace=False))
    if loo:
        evals = np.asarray(train_f[queries], dtype=np.float64) / norms[queries, None]
    else:
        evals = _unit(np.asarray(eval_f)[queries])
    eval_y = (train_y if loo else np.asarray(eval_y))[queries]
    # a block of queries meets train _TRAIN_ROWS rows at a time and keeps its k most similar so far: memory is a
    # block of similarities and one chunk of unit train rows, whatever N
    chunk = min(n_train, _TRAIN_ROWS)
    block = max(1, _SIMILARITIES // chunk)
    correct = 0
    for start in range(0, len(evals), block):
        q, own = evals[start:start + block], queries[start:start + block]
        rows = np.arange(len(q))
        best_sim, best_idx = np.empty((len(q), 0)), np.empty((len(q), 0), dtype=np.intp)
        for first in range(0, n_train, chunk):
            train = np.array(train_f[first:first + chunk], dtype=np.float64)  # a copy, scaled in place
            train /= norms[first:first + chunk, None]
            sim = q @ train.T
            if loo:
                mine = (own >= first) & (own < first + len(train))
                sim[rows[mine], own[mine] - first] = -np.inf
            sim = np.concatenate([best_sim, sim], 1)
            idx = np.concatenate([best_idx, np.broadcast_to(np.arange(first, first + len(train)), sim.shape[:1] +
                                                            (len(train),))], 1)
            keep = np.argpartition(-sim, min(k, sim.shape[1]) - 1, axis=1)[:, :k]
            best_sim, best_idx = np.take_along_axis(sim, keep, 1), np.take_along_axis(idx, keep, 1)
        votes = np.bincount((rows[:, None] * len(classes) + code[best_idx]).ravel(),
                            minlength=len(q) * len(classes)).reshape(len(q), len(classes))
        correct += int((classes[votes.argmax(1)] == eval_y[start:start + block]).sum())  # argmax: first of a tie
    return correct / len(evals)


def ncc_acc(train_f: np.ndarray, train_y: np.ndarray, eval_f: np.ndarray | None = None,
            eval_y: np.ndarray | None = None) -> float:
    """Nearest-class-mean accuracy: Euclidean distance to each class's mean feature, as scikit-learn's
    NearestCentroid (its default metric); a tie goes to the smallest class label.

    With no eval split, leave-one-out on train: a sample's own class mean is taken without it, so a class with one
    sample is never predicted for that sample.
    """
    loo = _check_pair(eval_f, eval_y)
    train_y = np.asarray(train_y)
    eval_f, eval_y = (train_f, train_y) if loo else (eval_f, np.asarray(eval_y))
    classes, code, count = np.unique(train_y, return_inverse=True, return_counts=True)
    means = np.zeros((len(classes), train_f.shape[1]))
    for start in range(0, len(train_f), _TRAIN_ROWS):  # float64 sums, a chunk at a time
        np.add.at(means, code[start:start + _TRAIN_ROWS], np.asarray(train_f[start:start + _TRAIN_ROWS],
                                                                     dtype=np.float64))
    means /= count[:, None]
    correct = 0
    for start in range(0, len(eval_f), _BLOCK):
        x = np.asarray(eval_f[start:start + _BLOCK], dtype=np.float64)
        dist = (x ** 2).sum(1)[:, None] - 2 * x @ means.T + (means ** 2).sum(1)[None, :]  # squared
        if loo:
            # without x, its class mean moves away from it: x - mean' = (x - mean) n / (n - 1)
            own, n = code[start:start + _BLOCK], count[code[start:start + _BLOCK]]
            rows = np.arange(len(x))
            dist[rows, own] = np.where(n > 1, dist[rows, own] * (n / np.maximum(n - 1, 1)) ** 2, np.inf)
        correct += int((classes[dist.argmin(1)] == eval_y[start:start + _BLOCK]).sum())
    return correct / len(eval_f)


def weighted_tau(score: np.ndarray, accuracy: np.ndarray) -> float:
    """Weighted Kendall tau with hyperbolic weights (Vigna, WWW 2015), as scipy.stats.weightedtau: how well a score
    ranks models by their accuracy after transfer, swaps among the top models weighing most. LogME's measure of a
    score (You et al., ICML 2021)."""
    from scipy import stats  # its import (docs/speed.md, Fixed cost): only a caller that ranks pays it

    return float(stats.weightedtau(score, accuracy)[0])


def spearman_rho(score: np.ndarray, accuracy: np.ndarray) -> float:
    """Spearman's rank correlation of a score with accuracy after transfer, as scipy.stats.spearmanr."""
    from scipy import stats

    return float(stats.spearmanr(score, accuracy)[0])
