"""The validation split that stage 3's open choices are made on: carved out of the training split.

The paper's query and gallery are for the final tables only (WORKSPACE.md, decision 59). Stage 3 carves a
share of the training images by a hash of their ids (the same images for every seed and every run on
the same dataset), keeps them out of its triplets and out of its memory block, and scores itself on them
with the paper's protocol: the carved images are split again into validation queries and a validation
gallery, every manipulation of a validation query whose target is in the validation gallery is searched,
and Top-K is read as in Table 1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from fashionsearchnet_v2.model import memory_block
from fashionsearchnet_v2.retrieval import metrics, search

# Salts of the two hashes: which training images are validation, and which of those are queries.
_CARVE_SALT = b"fsnv2-validation:"
_QUERY_SALT = b"fsnv2-validation-query:"


def _unit_hash(ids: Sequence, salt: bytes) -> np.ndarray:
    """A number in [0, 1) per id, uniform and fixed by the id's text (not by its position or a seed)."""
    out = np.empty(len(ids), np.float64)
    for i, x in enumerate(ids):
        text = x.decode() if isinstance(x, bytes) else str(x)
        digest = hashlib.blake2b(salt + text.encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "big") / 2.0**64
    return out


def carve(ids: Sequence, fraction: float) -> np.ndarray:
    """[N] bool: which training images are validation images (about `fraction` of them)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    return _unit_hash(ids, _CARVE_SALT) < fraction


def query_mask(ids: Sequence, query_share: float) -> np.ndarray:
    """[N] bool over validation images: which are validation queries (the rest is the gallery)."""
    if not 0.0 < query_share < 1.0:
        raise ValueError(f"validation query share must be in (0, 1), got {query_share}")
    return _unit_hash(ids, _QUERY_SALT) < query_share


def top20_share(validation_gallery: int, test_gallery: int) -> int:
    """The K that reads the validation gallery's share that Top-20 reads of the test gallery (at least 1;
    20 when the dataset has no test gallery)."""
    return max(1, round(20 * validation_gallery / test_gallery)) if test_gallery else 20


class ValidationSearches:
    """The validation protocol on fixed features: validation queries × their manipulations, ranked in
    the validation gallery.

    Args:
        fc10: [N, ...] the validation images' features ([N, A, D] attribute representations for stage 3,
            [N, F] stage-1 features for AMNet).
        labels: [N, A] int, -1 = unlabelled.
        ids: [N] the images' ids (which are queries is decided by their hash).
        num_values: values per attribute; attribute_names: A names.
        query_share: share of validation images used as queries.
        ks: the K of Top-K reported.
        manipulation: (query labels [n, A], attributes [n], values [n]) -> t [n, C], the indicator the
            model reads (AMNet's signed one); None: one-hot at the new value (FashionSearchNet-v2's).
    """

    def __init__(
        self, fc10, labels, ids, num_values, attribute_names, query_share=1 / 3, ks=(20,), manipulation=None
    ):
        fc10, labels = np.asarray(fc10, np.float32), np.asarray(labels)
        is_query = query_mask(ids, query_share)
        self.query_fc10, self.query_labels = fc10[is_query], labels[is_query]
        self.gallery_fc10, self.gallery_labels = fc10[~is_query], labels[~is_query]
        self.num_values, self.attribute_names = list(num_values), list(attribute_names)
        self.manipulations = metrics.enumerate_manipulations(
            self.query_labels, self.gallery_labels, self.num_values
        )
        self.ks = tuple(k for k in ks if k <= len(self.gallery_labels)) or (max(1, len(self.gallery_labels)),)
        m = self.manipulations
        if manipulation is not None:
            self._t = np.asarray(
                manipulation(self.query_labels[m.query_index], m.attribute, m.value), np.float32
            ).reshape(len(m), sum(self.num_values))
        else:
            self._t = memory_block.manipulations(m.attribute, m.value, self.num_values)

    def __len__(self) -> int:
        return len(self.manipulations)

    def describe(self) -> str:
        return (
            f"{len(self.query_labels)} validation queries, {len(self.gallery_labels)} validation gallery "
            f"images, {len(self)} searches"
        )

    def evaluate(self, vectors: Callable[[np.ndarray, np.ndarray | None], np.ndarray]) -> dict:
        """`search.evaluate`'s results dict (with the unmanipulated baseline and the gain) for the
        representation `vectors(fc10 [n, A, D], t [n, C] or None) -> [n, r]`."""
        if len(self) == 0:
            raise ValueError(
                f"the validation split has no search ({self.describe()}): raise the validation fraction"
            )
        m = self.manipulations
        gallery = vectors(self.gallery_fc10, None)
        return search.evaluate(
            lambda idx: vectors(self.query_fc10[m.query_index[idx]], self._t[idx]),
            gallery,
            self.gallery_labels,
            m,
            self.attribute_names,
            self.ks,
            ndcg_k=min(30, len(self.gallery_labels)),
            unmanipulated_vectors_fn=lambda idx: vectors(self.query_fc10[m.query_index[idx]], None),
        )
