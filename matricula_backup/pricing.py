"""Deep Archive prices in one place (us-east-1, USD, as published by AWS in 2025).

Check the current prices of your region before quoting them; these are for
estimates printed by the tool, never for decisions it takes on its own.
"""

from __future__ import annotations

GB = 1024**3

STORAGE_PER_GB_MONTH = 0.00099
PUT_PER_1000 = 0.05  # PUT, COPY, POST, LIST into DEEP_ARCHIVE
GET_PER_1000 = 0.0004  # GET, HEAD
TRANSFER_OUT_PER_GB = 0.09  # to the internet; free inside the region

# Restores from Deep Archive: no Expedited tier.
RESTORE_PER_GB = {"Standard": 0.02, "Bulk": 0.0025}
RESTORE_PER_1000 = {"Standard": 0.10, "Bulk": 0.025}
RESTORE_HOURS = {"Standard": 12, "Bulk": 48}


def restore_cost(tier: str, objects: int, size: int) -> float:
    """What asking S3 to restore ``objects`` objects of ``size`` bytes in all costs."""
    return objects / 1000 * RESTORE_PER_1000[tier] + size / GB * RESTORE_PER_GB[tier]


def download_cost(objects: int, size: int) -> float:
    """GET requests plus transfer out of AWS for the restored copies."""
    return objects / 1000 * GET_PER_1000 + size / GB * TRANSFER_OUT_PER_GB
