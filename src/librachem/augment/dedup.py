"""Near-duplicate detection for ``augment``: MinHash over character shingles (datasketch).

Texts are case- and space-folded, cut into character ``shingle``-grams, and hashed with
``num_perm`` permutations (seeded: same input, same signatures). Pairs whose estimated
Jaccard similarity reaches the threshold are near-duplicates. Character shingles (not
words) because prompts are short: one changed word must move the estimate
(datasketch docs, "MinHash LSH").
"""

from __future__ import annotations

from collections.abc import Iterable

from datasketch import MinHash, MinHashLSH


def minhash(text: str, *, shingle: int = 5, num_perm: int = 64, seed: int = 1) -> MinHash:
    """The MinHash of ``text``'s character shingles (a text shorter than one shingle is one)."""
    norm = " ".join(text.lower().split())
    grams = {norm[i:i + shingle] for i in range(max(len(norm) - shingle + 1, 1))}
    mh = MinHash(num_perm=num_perm, seed=seed)
    mh.update_batch([g.encode("utf-8") for g in grams])
    return mh


class NearDuplicateIndex:
    """An LSH index of texts; :meth:`query` returns keys of near-duplicates already added.

    Args:
        threshold: Jaccard threshold in (0, 1].
        shingle / num_perm: see :func:`minhash`.
    """

    def __init__(self, threshold: float, *, shingle: int = 5, num_perm: int = 64) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.shingle, self.num_perm = shingle, num_perm
        try:
            self._lsh: MinHashLSH | None = MinHashLSH(threshold=threshold, num_perm=num_perm)
        except ValueError:  # thresholds near 1 leave LSH < 2 bands: compare every pair
            self._lsh = None
        self._hashes: dict[str, MinHash] = {}

    def _mh(self, text: str) -> MinHash:
        return minhash(text, shingle=self.shingle, num_perm=self.num_perm)

    def add(self, key: str, text: str) -> None:
        if key in self._hashes:
            return
        mh = self._mh(text)
        if self._lsh is not None:
            self._lsh.insert(key, mh)
        self._hashes[key] = mh

    def add_all(self, items: Iterable[tuple[str, str]]) -> None:
        for key, text in items:
            self.add(key, text)

    def query(self, text: str) -> list[str]:
        """Keys whose estimated Jaccard similarity with ``text`` reaches the threshold
        (LSH candidates checked against the estimate, so no band false positives)."""
        mh = self._mh(text)
        candidates = self._lsh.query(mh) if self._lsh is not None else self._hashes
        return sorted(k for k in candidates
                      if self._hashes[k].jaccard(mh) >= self.threshold)
