"""Duplicate reviews: a normalised key for exact duplicates (:func:`dedup_key`) and a MinHash + LSH
finder of near duplicates (:class:`NearDuplicates`, which says why it is ours and not ``datasketch``).
"""

from __future__ import annotations

import heapq
import re
import unicodedata

import numpy as np
from steam_persona.reviews.text import lowered


_NOT_WORD = re.compile(r"[\W_]+")


def dedup_key(text: str) -> str:
    """Normalised text for exact-duplicate detection: NFKC, lower case, no whitespace, punctuation
    or symbols (so ``"好玩！！"`` and ``"好玩!"`` collide). Lower-cased first (the rules before have
    the lower-cased text cached)."""
    key = _NOT_WORD.sub("", lowered(text))  # punctuation first: what is left is mostly NFKC-normal already
    if not unicodedata.is_normalized("NFKC", key):
        key = _NOT_WORD.sub("", unicodedata.normalize("NFKC", key)).lower()
    return key


class NearDuplicates:
    """MinHash + LSH near-duplicate finder over character shingles.

    Method: Broder (1997), "On the resemblance and containment of documents" (MinHash estimates
    the Jaccard similarity of shingle sets); banding as in Leskovec, Rajaraman & Ullman, *Mining of
    Massive Datasets*, ch. 3.4. ``num_perm`` = ``bands`` × ``rows``; a pair becomes a candidate when
    one band matches, and is a duplicate when the estimated Jaccard is ≥ ``threshold``.

    Why our own and not ``datasketch``: ~60 lines of numpy hash a whole batch of reviews at once
    (every shingle under every permutation in one vectorised op); datasketch updates one shingle
    at a time in Python, which would dominate ``prepare``'s time on 100k reviews.
    """

    def __init__(self, threshold: float = 0.8, shingle: int = 5, bands: int = 16, rows: int = 4,
                 seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        n = bands * rows
        self.threshold, self.shingle, self.bands, self.rows = threshold, shingle, bands, rows
        # multiply-shift hashing (Dietzfelbinger et al. 1997): h -> (a*h + b mod 2^64) >> 32, a odd
        self._a = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._b = rng.integers(0, 2**63, n, dtype=np.uint64)

    def signature(self, key: str) -> np.ndarray | None:
        """MinHash signature (``uint32[bands*rows]``) of a normalised text, or ``None`` when it is
        shorter than ``shingle + 2`` characters."""
        sigs, _ = self.signatures([key])
        return sigs[0] if len(sigs) else None

    def signatures(self, keys: list[str], batch: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """Signatures of many texts: ``(uint32[m, bands*rows], int64[m])``, the second holding the
        indexes in ``keys`` of the ``m`` texts long enough to shingle. Computed ``batch`` texts at a
        time in a few numpy ops (one ``(bands*rows, shingles)`` matrix per batch, the minimum per
        text by ``np.minimum.reduceat``); 128 texts keep that matrix in the CPU cache (~9 MB)."""
        parts = [self._batch(keys[s:s + batch]) for s in range(0, len(keys), batch)]
        sigs = [p for p, _ in parts if len(p)]
        rows = [idx + s for (p, idx), s in zip(parts, range(0, len(keys), batch)) if len(p)]
        if not sigs:
            return np.zeros((0, self.bands * self.rows), np.uint32), np.zeros(0, np.int64)
        return np.concatenate(sigs), np.concatenate(rows)

    def _batch(self, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        k = self.shingle
        lengths = np.fromiter((len(t) for t in keys), dtype=np.int64, count=len(keys))
        ok = lengths >= k + 2
        if not ok.any():
            return np.zeros((0, self.bands * self.rows), np.uint32), np.zeros(0, np.int64)
        # polynomial rolling hash of every k-character window of the concatenation, mod 2^31 - 1
        cp = np.frombuffer("".join(keys).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
        n = len(cp) - k + 1
        hashes = np.zeros(n, dtype=np.uint64)
        for j in range(k):
            hashes = (hashes * np.uint64(1000003) + cp[j:j + n]) % np.uint64(0x7FFFFFFF)
        # keep the windows that lie inside one text, for texts long enough to shingle
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        counts = np.where(ok, lengths - k + 1, 0)
        doc = np.repeat(np.arange(len(keys)), counts)
        pos = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + starts[doc]
        # one universal hash per (a, b) pair (uint64 arithmetic wraps mod 2^64); min per text, then
        # the shift (it keeps order, so the shifted minimum is the minimum of the shifted hashes),
        # whose 32 bits are kept as uint32: half the memory of every text's signature
        perm = np.multiply.outer(self._a, hashes[pos])
        perm += self._b[:, None]
        mins = np.minimum.reduceat(perm, (np.cumsum(counts) - counts)[ok], axis=1)
        mins >>= np.uint64(32)
        return mins.T.astype(np.uint32), np.flatnonzero(ok)

    def first_copies(self, keys: list[str]) -> list[int | None]:
        """For each text, the index of an earlier text it nearly duplicates, else ``None``.

        Texts are taken in order; a text is compared with the first *kept* (not itself a duplicate)
        earlier text sharing each of its bands, band by band, and is a duplicate of the first whose
        estimated Jaccard is ≥ ``threshold``. Texts too short to shingle are never duplicates.
        Vectorised: each text is compared with the *first* earlier text of each of its bands in one
        numpy pass; that first text is the one to compare with unless it was itself a duplicate, so
        only the texts that matched one, and the later texts sharing a band first seen in a
        duplicate, go through the text-by-text loop (:meth:`_resolve`; ~3 % of the texts).
        """
        sigs, rows = self.signatures(keys)
        out: list[int | None] = [None] * len(keys)
        if not len(sigs):
            return out
        ids, new = self._band_ids(sigs)
        first = np.where(new, -1, 0).astype(np.int32)  # per band: the first text with the same band row (-1: this text)
        for b in range(self.bands):
            where = np.full(int(ids[:, b].max()) + 1, -1, np.int32)
            where[ids[new[:, b], b]] = np.flatnonzero(new[:, b])
            first[:, b] = np.where(new[:, b], -1, where[ids[:, b]])
        for i, like in self._resolve(sigs, ids, first).items():
            out[int(rows[i])] = int(rows[like])
        return out

    def _similar(self, sigs: np.ndarray, first: np.ndarray, chunk: int = 65536) -> np.ndarray:
        """``bool[m, bands]``: whether each text's estimated Jaccard with ``first`` (its bands' first
        texts) reaches the threshold; ``chunk`` pairs at a time (a ``chunk x bands*rows`` compare)."""
        need = self.threshold * sigs.shape[1]
        like = np.zeros(first.shape, bool)
        ti, tb = np.nonzero(first >= 0)
        for s in range(0, len(ti), chunk):
            i, b = ti[s:s + chunk], tb[s:s + chunk]
            like[i, b] = np.count_nonzero(sigs[i] == sigs[first[i, b]], axis=1) >= need
        return like

    def _resolve(self, sigs: np.ndarray, ids: np.ndarray, first: np.ndarray) -> dict[int, int]:
        """``{duplicate: the kept text it copies}`` by the text-by-text rule, visiting only the texts
        whose answer can differ from "kept": those similar to a band's first text, and those sharing a
        band row first seen in a text that turned out a duplicate (that row's owner is then the first
        kept text with it, recorded in ``owner``). Visited in text order (a heap)."""
        need = self.threshold * sigs.shape[1]
        like = self._similar(sigs, first)
        dup: dict[int, int] = {}
        owner: dict[tuple[int, int], int] = {}  # (band, row id) first seen in a duplicate -> first kept text
        by_row: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # band -> (sorted row ids, their texts)
        heap = np.flatnonzero(like.any(axis=1)).tolist()
        visited = set()
        while heap:
            i = heapq.heappop(heap)
            if i in visited:
                continue
            visited.add(i)
            for b, f in enumerate(first[i].tolist()):
                j = owner.get((b, int(ids[i, b])), -1) if f in dup else f
                if j >= 0 and (like[i, b] if j == f else np.count_nonzero(sigs[i] == sigs[j]) >= need):
                    dup[i] = j
                    break
            if i not in dup:
                for b, f in enumerate(first[i].tolist()):
                    if f in dup:
                        owner.setdefault((b, int(ids[i, b])), i)
                continue
            for b in np.flatnonzero(first[i] < 0).tolist():  # rows first seen here: their later texts
                if b not in by_row:
                    order = np.argsort(ids[:, b], kind="stable")
                    by_row[b] = ids[order, b], order
                row, order = by_row[b]
                lo, hi = np.searchsorted(row, ids[i, b], "left"), np.searchsorted(row, ids[i, b], "right")
                for t in order[lo:hi].tolist():
                    if t > i:
                        heapq.heappush(heap, t)
        return dup

    def _band_ids(self, sigs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(int32[m, bands], bool[m, bands])``: ids equal where two texts' band rows are equal, and
        whether a text is its band's first (int32: ``m`` texts fit, at half the memory of int64). Bands are sorted by a 64-bit mix of their rows (~3x faster
        than sorting the rows as bytes); a collision, checked for, falls back to the bytes."""
        m = len(sigs)
        ids = np.empty((m, self.bands), np.int32)
        new = np.empty((m, self.bands), bool)
        for b in range(self.bands):
            band = sigs[:, b * self.rows:(b + 1) * self.rows]
            _, first, inv = np.unique((band * self._a[:self.rows]).sum(axis=1), return_index=True, return_inverse=True)
            if not np.array_equal(band, band[first[inv.ravel()]]):
                _, first, inv = np.unique(np.ascontiguousarray(band).view(f"V{band.itemsize * self.rows}").ravel(),
                                          return_index=True, return_inverse=True)
            ids[:, b] = inv.ravel()
            new[:, b] = first[ids[:, b]] == np.arange(m)
        return ids, new
