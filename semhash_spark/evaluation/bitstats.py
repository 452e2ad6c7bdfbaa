"""Bit statistics of a set of codes: balance, pairwise correlation, address concentration (collapse signs)."""

from __future__ import annotations

import numpy as np

from semhash_spark import codes as codes_mod


def bit_statistics(packed: np.ndarray, bits: int, address_bits: int = 20) -> dict:
    """Per-bit balance (``|mean - 0.5|``: min, max, mean), the mean absolute correlation of distinct bit pairs,
    the bits that are (nearly) constant, and the share of the codes in the largest ``address_bits`` bucket."""
    packed = codes_mod.as_codes(packed, bits)
    n = packed.shape[0]
    if n == 0:
        raise ValueError("bit statistics need at least one code")
    b = codes_mod.unpack_bits(packed, bits).astype(np.float64)
    dev = np.abs(b.mean(0) - 0.5)
    s = b - b.mean(0)
    sd = s.std(0)
    live = sd > 0
    if live.sum() >= 2:
        c = (s[:, live].T @ s[:, live]) / n / np.outer(sd[live], sd[live])
        k = c.shape[0]
        mean_abs_corr = float((np.abs(c).sum() - np.trace(np.abs(c))) / (k * (k - 1)))
    else:
        mean_abs_corr = 0.0
    width = min(address_bits, bits)
    _, counts = np.unique(codes_mod.prefix(packed, width), return_counts=True)
    return {
        "codes": int(n),
        "balance_min": round(float(dev.min()), 4),
        "balance_max": round(float(dev.max()), 4),
        "balance_mean": round(float(dev.mean()), 4),
        "constant_bits": int((dev > 0.49).sum()),
        "mean_abs_correlation": round(mean_abs_corr, 4),
        "address_bits": int(width),
        "largest_bucket_share": round(float(counts.max() / n), 4),
        "distinct_addresses": int(len(counts)),
    }


def collapse_signs(stats: dict, *, max_bucket_share: float, max_constant_fraction: float, bits: int) -> list[str]:
    """What in ``stats`` says the codes have collapsed (empty when nothing does)."""
    signs = []
    if stats["largest_bucket_share"] > max_bucket_share:
        signs.append(
            f"the largest {stats['address_bits']}-bit address holds {stats['largest_bucket_share']:.1%} "
            f"of the codes (limit {max_bucket_share:.1%})"
        )
    if stats["constant_bits"] > max_constant_fraction * bits:
        signs.append(f"{stats['constant_bits']} of {bits} bits are nearly constant")
    return signs
