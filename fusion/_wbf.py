"""Weighted boxes fusion: ensemble-boxes 1.0.9's algorithm, with its clustering loop compiled by numba.

Why a port: ensemble-boxes is pure Python. Measured here (bench/bench_fuse.py) it takes 0.2 to
0.5 s per image of 10 prediction sets x 300 boxes on one core, so 10 to 25 minutes for 3,000 test
images, and far too long to try several settings on 15,000 out-of-fold images. The port keeps the
library's arithmetic step by step (tests/test_fusion.py compares both on fixed inputs):

* prefilter: boxes scoring below ``skip_box_thr`` are dropped, x/y swapped when reversed, clipped
  to [0, 1], zero-area boxes dropped; each box's score is multiplied by its set's weight;
* per label, in order of first appearance, boxes sorted by ``np.argsort(score)[::-1]`` (numpy's,
  as the library does, so ties fall the same way);
* each box joins the cluster with the highest IoU (first on equal IoU) if that IoU is above
  ``iou_thr``, else opens a cluster; a cluster's box is the score-weighted mean of its boxes,
  accumulated in float32 like the library's ``get_weighted_box``; its score the mean (or max)
  of the weighted scores, then rescaled per ``conf_type``;
* the result sorted by ``argsort(score)[::-1]``.

The numba function is compiled on first use and cached on disk (``cache=True``).
"""

from __future__ import annotations

import numpy as np

from vinbig.boxes import WBF_CONF_TYPES as CONF_TYPES

_kernel = None


def _get_kernel():
    """The compiled clustering loop (compiled once per process, then loaded from numba's cache)."""
    global _kernel
    if _kernel is None:
        from numba import njit

        _kernel = njit(cache=True, nogil=True, error_model="numpy")(_cluster)
    return _kernel


def _cluster(coords, ws, w, seg, iou_thr, use_max):
    """Cluster boxes label by label. coords (n, 4), ws = score x weight, w = weight, both (n,),
    in processing order; seg (L+1,) bounds of each label's run.

    Returns per cluster (first k rows): box (float64 holding the library's values), score before
    rescaling, weight sum as the library stores it, box count; and each box's cluster.
    """
    n = coords.shape[0]
    box = np.zeros((n, 4))
    score = np.zeros(n)
    wsum = np.zeros(n)
    count = np.zeros(n, dtype=np.int64)
    acc = np.zeros((n, 4), dtype=np.float32)  # get_weighted_box's float32 running sum of score * box
    conf = np.zeros(n)  # its float64 sum of scores
    cmax = np.zeros(n)
    wraw = np.zeros(n)  # float64 sum of weights
    member = np.empty(n, dtype=np.int64)
    k = 0
    for s in range(seg.shape[0] - 1):
        first = k
        for j in range(seg[s], seg[s + 1]):
            x1, y1, x2, y2 = coords[j, 0], coords[j, 1], coords[j, 2], coords[j, 3]
            area_b = (x2 - x1) * (y2 - y1)
            best = -1
            best_iou = -2.0
            for c in range(first, k):
                xa = max(box[c, 0], x1)
                ya = max(box[c, 1], y1)
                xb = min(box[c, 2], x2)
                yb = min(box[c, 3], y2)
                inter = max(xb - xa, 0.0) * max(yb - ya, 0.0)
                area_a = (box[c, 2] - box[c, 0]) * (box[c, 3] - box[c, 1])
                iou = inter / (area_a + area_b - inter)
                if iou != iou:  # NaN (a cluster of zero scores has NaN coordinates): np.argmax picks it
                    best_iou = iou
                    best = c
                    break
                if iou > best_iou:
                    best_iou = iou
                    best = c
            sj = ws[j]
            if best >= 0 and not best_iou <= iou_thr:
                c = best
                for q in range(4):
                    acc[c, q] = np.float32(np.float64(acc[c, q]) + sj * coords[j, q])
                conf[c] += sj
                cmax[c] = max(cmax[c], sj)
                wraw[c] += w[j]
                count[c] += 1
                for q in range(4):
                    box[c, q] = np.float64(np.float32(np.float64(acc[c, q]) / conf[c]))
                if use_max:
                    score[c] = np.float64(np.float32(cmax[c]))
                else:
                    score[c] = np.float64(np.float32(conf[c] / count[c]))
                wsum[c] = np.float64(np.float32(wraw[c]))
                member[j] = c
            else:
                for q in range(4):
                    acc[k, q] = np.float32(sj * coords[j, q])
                    box[k, q] = coords[j, q]
                conf[k] = sj
                cmax[k] = sj
                wraw[k] = w[j]
                count[k] = 1
                score[k] = sj
                wsum[k] = w[j]
                member[j] = k
                k += 1
    return box[:k], score[:k], wsum[:k], count[:k], member


def _descending(key: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Order of items by `key` (groups), then the library's ``np.argsort(values)[::-1]`` within each group.

    Without equal values inside a group that is simply descending `values`; groups holding equal values
    are sorted again by numpy itself, one by one, since its argsort breaks ties in its own way.
    """
    order = np.argsort(-values)
    order = order[np.argsort(key[order], kind="stable")]
    k, v = key[order], values[order]
    tied = np.flatnonzero((k[1:] == k[:-1]) & (v[1:] == v[:-1]))
    if len(tied):
        bounds = np.searchsorted(k, np.arange(k[-1] + 2))
        for g in np.unique(k[tied]):
            a, b = bounds[g], bounds[g + 1]
            members = np.sort(order[a:b])  # the group's items in input order
            order[a:b] = members[np.argsort(values[members])[::-1]]
    return order


def wbf_batch(boxes, scores, labels, model, offsets, group, group_weights, iou_thr: float = 0.55,
              skip_box_thr: float = 0.0, conf_type: str = "avg"):
    """Weighted boxes fusion of many images at once, each exactly as ``ensemble_boxes.weighted_boxes_fusion``.

    Image i owns rows ``offsets[i]:offsets[i + 1]`` of the flat arrays: boxes (n, 4) normalized, scores,
    labels, model (index into the image's weights), model by model in the library's order. Image i's
    weights are ``group_weights[group[i]]`` (one per model, including models that gave no box).
    Returns, image by image and by score within an image: image index, boxes (k, 4), scores, labels.
    """
    if conf_type not in CONF_TYPES:
        raise ValueError(f"conf_type {conf_type!r}: use one of {list(CONF_TYPES)}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    model = np.asarray(model, dtype=np.int64)
    group = np.asarray(group, dtype=np.int64)
    gw = [np.asarray(w, dtype=np.float64) for w in group_weights]
    n_models = np.array([len(w) for w in gw])
    padded = np.zeros((len(gw), max(n_models.max(initial=0), 1)))
    for g, w in enumerate(gw):
        padded[g, :len(w)] = w
    g_sum = np.array([w.sum() for w in gw])
    g_max = np.array([w.max() if len(w) else 1.0 for w in gw])

    # prefilter: swap, clip, drop low scores and zero areas; scores times the model's weight
    img = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    x1 = np.clip(np.minimum(boxes[:, 0], boxes[:, 2]), 0.0, 1.0)
    x2 = np.clip(np.maximum(boxes[:, 0], boxes[:, 2]), 0.0, 1.0)
    y1 = np.clip(np.minimum(boxes[:, 1], boxes[:, 3]), 0.0, 1.0)
    y2 = np.clip(np.maximum(boxes[:, 1], boxes[:, 3]), 0.0, 1.0)
    keep = np.flatnonzero(~(scores < skip_box_thr) & ((x2 - x1) * (y2 - y1) != 0.0))
    if not len(keep):
        return np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    coords = np.stack([x1, y1, x2, y2], axis=1)[keep]
    im, lab, mod = img[keep], labels[keep], model[keep]
    w = padded[group[im], mod]
    ws = scores[keep] * w

    # one run per (image, label): labels of an image in order of first appearance
    lab0 = lab - lab.min()
    run_key = im * (lab0.max() + 1) + lab0
    runs, first, run_of = np.unique(run_key, return_index=True, return_inverse=True)
    run_rank = np.empty(len(runs), dtype=np.int64)
    run_rank[np.lexsort((first, im[first]))] = np.arange(len(runs))
    box_run = run_rank[run_of]
    proc = _descending(box_run, ws)  # within a run, the library's argsort(score)[::-1]
    seg = np.searchsorted(box_run[proc], np.arange(len(runs) + 1))

    box, score, wsum, count, member = _get_kernel()(
        coords[proc], ws[proc], w[proc], seg, float(iou_thr), conf_type == "max")
    first_box = proc[np.unique(member, return_index=True)[1]]  # the box that opened each cluster
    cl_img, cl_label = im[first_box], lab[first_box]
    g = group[cl_img]

    score = score.copy()
    if conf_type == "max":
        score = score / g_max[g]
    elif conf_type == "avg":
        score = score * np.minimum(n_models[g], count) / g_sum[g]
    else:
        # Cluster by cluster, summing the weights of the models present (or absent) with numpy as the
        # library does: a sum in another order can differ in the last bit and reorder tied scores.
        pairs = np.unique(np.stack([member, mod[proc]], axis=1), axis=0)  # (cluster, model), sorted
        starts = np.searchsorted(pairs[:, 0], np.arange(len(score) + 1))
        for c in range(len(score)):
            models, weights = pairs[starts[c]:starts[c + 1], 1], gw[g[c]]
            if conf_type == "box_and_model_avg":
                score[c] = score[c] * count[c] / wsum[c]
                score[c] = score[c] * weights[models].sum() / g_sum[g[c]]
            else:  # absent_model_aware_avg
                absent = np.ones(len(weights), dtype=bool)
                absent[models] = False
                score[c] = score[c] * count[c] / (wsum[c] + weights[absent].sum())
    order = _descending(cl_img, score)  # per image, the library's final argsort()[::-1]
    return cl_img[order], box[order], score[order], cl_label[order]


def wbf(boxes, scores, labels, model, weights, iou_thr: float = 0.55, skip_box_thr: float = 0.0,
        conf_type: str = "avg"):
    """Weighted boxes fusion of one image, as ``ensemble_boxes.weighted_boxes_fusion``.

    The boxes of all models are given flat, model by model in the library's order: boxes (n, 4)
    normalized, scores (n,), labels (n,), model (n,) index into weights (one weight per model,
    including models that gave no box). Returns boxes (k, 4), scores (k,), labels (k,) int.
    """
    n = len(np.asarray(scores))
    _, box, score, label = wbf_batch(boxes, scores, labels, model, [0, n], [0], [weights], iou_thr, skip_box_thr,
                                     conf_type)
    return box, score, label
