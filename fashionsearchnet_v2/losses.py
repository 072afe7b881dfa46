"""Loss functions of FashionSearchNet-v2 (paper §3.2–3.4, Eqs. 2, 4–9) and in-batch triplet mining.

Every loss returns one value per example, shape `[batch]`, and never averages: the training loop reduces
with `tf.nn.compute_average_loss` (sum / global batch size), which is what tf.distribute needs. The
paper's sums over the N training images (Eqs. 2, 6, 8) therefore become means over the global batch,
which only rescales the learning rate.

Names follow the paper: L_C (classification on GAP(conv7), Eq. 2), L_TC (the same loss on the fc10
classifier outputs), L_T (soft-triplet ranking of attribute regions, Eq. 6), L_G (global ranking, Eq. 8),
joined by Eq. 9's λ weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf

__all__ = [
    "LOSS_NAMES",
    "classification_loss",
    "soft_triplet",
    "mine_triplets",
    "attribute_ranking_loss",
    "global_ranking_loss",
    "joint_loss",
]

#: Eq. 9's terms. Their weights per stage (§3.4) are the config's (`configs.TrainConfig.lambda_*`): stage 1
#: trains the AAM classifiers with L_C only; stage 2 the joint loss, λ_C = 1, λ_T = 1.5, λ_TC = 1, λ_G = 0;
#: stage 3 learns the global representation with L_G alone.
LOSS_NAMES = ("L_C", "L_T", "L_TC", "L_G")

# Added under the square root so its gradient stays finite when two embeddings coincide
# (d/dx sqrt(x) = 1 / (2 sqrt(x)) is infinite at 0, and 0 * inf = NaN in the chain rule).
_SQRT_EPS = 1e-12


def classification_loss(logits: list[tf.Tensor], labels: tf.Tensor) -> tf.Tensor:
    """Σ_a softmax cross-entropy over labelled attributes (Eq. 2: L_C; on fc10 outputs it is L_TC).

    Args:
      logits: A tensors `[batch, classes_a]`.
      labels: int `[batch, A]`, class index per attribute, -1 = unlabelled (contributes 0).

    Returns:
      float32 `[batch]`.
    """
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank is not None and labels.shape[-1] is not None and labels.shape[-1] != len(logits):
        raise ValueError(f"labels have {labels.shape[-1]} attributes but got {len(logits)} logits")
    total = tf.zeros(tf.shape(labels)[:1], tf.float32)
    for a, z in enumerate(logits):
        y = tf.cast(labels[:, a], tf.int32)
        known = y >= 0
        # -1 is not a valid class: give it class 0 and zero the result (the gradient through the
        # discarded branch of tf.where is zero as well).
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.maximum(y, 0), logits=tf.cast(z, tf.float32)
        )
        total += tf.where(known, ce, 0.0)
    return total


def _distance(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Euclidean distance over the last axis with a gradient that is finite at x == y."""
    return tf.sqrt(tf.reduce_sum(tf.square(x - y), axis=-1) + _SQRT_EPS)


def soft_triplet(
    anchor: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor, squared: bool = False
) -> tf.Tensor:
    """Soft-triplet ranking loss d+ (Eqs. 4–6), elementwise over leading axes.

    d+ = exp(‖a−p‖) / (exp(‖a−p‖) + exp(‖a−n‖)) = sigmoid(‖a−p‖ − ‖a−n‖), the stable form. It lies in
    (0, 1) and goes to 0 as the negative gets farther than the positive.

    Args:
      anchor, positive, negative: `[..., dim]`.
      squared: if True return (d+)², Hoffer & Ailon's ‖(d+, d− − 1)‖² = 2 (d+)² up to the constant; the
        default is d+ itself, as Eq. 6 is written.

    Returns:
      float32 `[...]`.
    """
    anchor, positive, negative = (tf.cast(t, tf.float32) for t in (anchor, positive, negative))
    d_plus = tf.sigmoid(_distance(anchor, positive) - _distance(anchor, negative))
    return tf.square(d_plus) if squared else d_plus


def active_triplets(anchor: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor) -> tf.Tensor:
    """Which soft triplets still give a gradient: d+ (1 − d+) ≥ 1% of its maximum 1/4.

    d+ = sigmoid(x), x = ‖a−p‖ − ‖a−n‖, and dd+/dx = d+ (1 − d+); below 1% of 1/4 (|x| > 5.99) a triplet
    moves the weights by less than a hundredth of what an undecided one does: saturated.

    Args:
      anchor, positive, negative: `[..., dim]`.

    Returns:
      float32 `[...]`, 1.0 where active.
    """
    d_plus = soft_triplet(anchor, positive, negative)
    return tf.cast(d_plus * (1.0 - d_plus) >= 0.0025, tf.float32)


def _uniform(shape, rng) -> tf.Tensor:
    if isinstance(rng, tf.random.Generator):
        return rng.uniform(shape)
    return tf.random.stateless_uniform(shape, seed=rng)


def mine_triplets(labels: tf.Tensor, rng) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """In-batch triplets of regions, per attribute (§3.2 "rule for picking triplets", §4.1).

    For anchor i and attribute a with label y = labels[i, a] >= 0: the positive is a uniformly random
    j != i with labels[j, a] == y, the negative a uniformly random k with labels[k, a] >= 0 and != y.
    Uniform choice = argmax of i.i.d. uniform scores over the allowed candidates. Pure TF; works in
    `tf.function` with a dynamic batch.

    Args:
      labels: int `[batch, A]`, -1 = unlabelled.
      rng: a `tf.random.Generator` (stateful; new triplets each call) or a stateless seed, int
        `[2]` (same seed, same triplets).

    Returns:
      pos_idx int32 `[batch, A]`, neg_idx int32 `[batch, A]`, valid bool `[batch, A]`: valid when the
      anchor is labelled and both a positive and a negative exist. Where not valid, pos_idx and neg_idx
      are the anchor itself (always in range, harmless to gather; the losses mask them out).
    """
    labels = tf.cast(tf.convert_to_tensor(labels), tf.int32)
    batch = tf.shape(labels)[0]
    attributes = tf.shape(labels)[1]
    anchor = labels[:, None, :]  # [batch (i), 1, A]
    cand = labels[None, :, :]  # [1, batch (j), A]
    labelled = anchor >= 0
    not_self = tf.logical_not(tf.eye(batch, dtype=tf.bool))[:, :, None]  # [i, j, 1]
    same = labelled & tf.equal(anchor, cand) & not_self  # [i, j, A]
    diff = labelled & (cand >= 0) & tf.not_equal(anchor, cand)  # [i, j, A]; j == i is never here

    scores = _uniform(tf.stack([batch, batch, attributes]), rng)  # in [0, 1)
    self_idx = tf.range(batch)[:, None] * tf.ones_like(labels)  # [batch, A] = i

    def pick(mask):
        # Masked candidates score -1, below every allowed one; rows without any fall back to i.
        idx = tf.argmax(tf.where(mask, scores, -1.0), axis=1, output_type=tf.int32)
        exists = tf.reduce_any(mask, axis=1)
        return tf.where(exists, idx, self_idx), exists

    pos_idx, has_pos = pick(same)
    neg_idx, has_neg = pick(diff)
    return pos_idx, neg_idx, has_pos & has_neg


def _gather_per_attribute(fc10: tf.Tensor, idx: tf.Tensor) -> tf.Tensor:
    """out[i, a] = fc10[idx[i, a], a]: `[batch, A, dim]`, `[batch, A]` -> `[batch, A, dim]`."""
    attr = tf.range(tf.shape(idx)[1])[None, :] * tf.ones_like(idx)
    return tf.gather_nd(fc10, tf.stack([idx, attr], axis=-1))


def attribute_ranking_loss(
    fc10: tf.Tensor,
    pos_idx: tf.Tensor,
    neg_idx: tf.Tensor,
    valid: tf.Tensor,
    squared: bool = False,
    anchors: tf.Tensor | None = None,
) -> tf.Tensor:
    """L_T (Eq. 6): Σ_a over valid triplets of soft_triplet(anchor[i, a], fc10[pos, a], fc10[neg, a]).

    Args:
      fc10: `[batch, A, dim]` attribute representations f_{c10,a} of the batch's images.
      pos_idx, neg_idx: int `[n, A]` rows of `fc10` (from `mine_triplets`).
      valid: bool `[n, A]`; invalid attributes contribute 0.
      squared: use (d+)² instead of d+ (see `soft_triplet`).
      anchors: `[n, A, dim]`, the anchors' representations; default `fc10` itself (n = batch). A worker
        of a multi-worker run passes its own rows here and the whole gathered batch as `fc10`.

    Returns:
      float32 `[n]`. Gradients reach the anchor, positive and negative rows alike.
    """
    fc10 = tf.convert_to_tensor(fc10)
    anchors = fc10 if anchors is None else tf.convert_to_tensor(anchors)
    pos_idx = tf.cast(pos_idx, tf.int32)
    neg_idx = tf.cast(neg_idx, tf.int32)
    loss = soft_triplet(
        anchors,
        _gather_per_attribute(fc10, pos_idx),
        _gather_per_attribute(fc10, neg_idx),
        squared=squared,
    )  # [n, A]
    return tf.reduce_sum(tf.where(valid, loss, 0.0), axis=1)


def attribute_triplets_active(fc10, pos_idx, neg_idx, valid, anchors=None) -> tuple[tf.Tensor, tf.Tensor]:
    """(active, valid) counts of L_T's triplets, int32 scalars (see `active_triplets`); arguments as in
    `attribute_ranking_loss`."""
    fc10 = tf.convert_to_tensor(fc10)
    anchors = fc10 if anchors is None else tf.convert_to_tensor(anchors)
    pos, neg = (_gather_per_attribute(fc10, tf.cast(i, tf.int32)) for i in (pos_idx, neg_idx))
    active = tf.cast(active_triplets(anchors, pos, neg), tf.bool) & valid
    return tf.reduce_sum(tf.cast(active, tf.int32)), tf.reduce_sum(tf.cast(valid, tf.int32))


def global_ranking_loss(
    query: tf.Tensor, positive: tf.Tensor, negative: tf.Tensor, squared: bool = False
) -> tf.Tensor:
    """L_G (Eq. 8): soft_triplet(F_{I,t}, F_{I+}, F_{I−}) per example.

    Args:
      query: `[batch, r]` manipulated query representation F_{I,t} (Eq. 7).
      positive: `[batch, r]` F of an image matching every attribute after the manipulation.
      negative: `[batch, r]` F of a random image.
      squared: use (d+)² instead of d+.

    Returns:
      float32 `[batch]`.
    """
    return soft_triplet(query, positive, negative, squared=squared)


def joint_loss(
    parts: Mapping[str, tf.Tensor], weights: Mapping[str, float]
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """L_joint = λ_C L_C + λ_T L_T + λ_TC L_TC + λ_G L_G (Eq. 9), per example.

    Args:
      parts: name -> `[batch]` loss, names from `LOSS_NAMES`.
      weights: name -> λ (python number). Every part needs a weight, and a non-zero weight needs its
        part, so a misspelt or forgotten loss fails loudly instead of silently training without it.
        Parts with weight 0 are left out of the sum (0 · NaN would still poison it).

    Returns:
      (total `[batch]`, the unweighted parts as a dict, for logging).
    """
    if not parts:
        raise ValueError("joint_loss needs at least one part")
    unknown = (set(parts) | set(weights)) - set(LOSS_NAMES)
    if unknown:
        raise ValueError(f"unknown loss names {sorted(unknown)}; expected a subset of {LOSS_NAMES}")
    unweighted = sorted(set(parts) - set(weights))
    if unweighted:
        raise ValueError(f"losses {unweighted} have no weight")
    missing = sorted(name for name, lam in weights.items() if lam != 0 and name not in parts)
    if missing:
        raise ValueError(f"losses {missing} have non-zero weights but were not computed")
    total = None
    for name in LOSS_NAMES:
        if name in parts and weights[name] != 0:
            term = float(weights[name]) * tf.cast(parts[name], tf.float32)
            total = term if total is None else total + term
    if total is None:  # everything weighted 0: a zero loss of the right shape
        total = tf.zeros_like(tf.cast(next(iter(parts.values())), tf.float32))
    return total, dict(parts)
