"""Deep Archive prices in one place, overridable in config.json's ``pricing``.

Defaults: us-east-1 list prices in USD (2025). Check your region's before
relying on them; the tool only prints estimates with them and never decides
anything by them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

GB = 1024**3
KB = 1024
# Each archived object carries 40 KB of S3 metadata: 8 KB billed at STANDARD,
# 32 KB at Deep Archive rates.
OVERHEAD_STANDARD_BYTES = 8 * KB
OVERHEAD_ARCHIVE_BYTES = 32 * KB
RESTORE_HOURS = {"Standard": 12, "Bulk": 48}


@dataclass(frozen=True)
class Prices:
    storage_per_gb_month: float = 0.00099  # Deep Archive
    standard_storage_per_gb_month: float = 0.023  # for the 8 KB per object
    put_per_1000: float = 0.05  # PUT, COPY, POST, LIST into DEEP_ARCHIVE
    get_per_1000: float = 0.0004  # GET, HEAD
    transfer_out_per_gb: float = 0.09  # to the internet; free inside the region
    restore_bulk_per_gb: float = 0.0025
    restore_bulk_per_1000: float = 0.025
    restore_standard_per_gb: float = 0.02
    restore_standard_per_1000: float = 0.10

    @classmethod
    def keys(cls) -> set[str]:
        return {field.name for field in fields(cls)}

    def restore_cost(self, tier: str, objects: int, size: int) -> float:
        """Asking S3 to restore ``objects`` objects of ``size`` bytes in all."""
        per_gb, per_1000 = (
            (self.restore_bulk_per_gb, self.restore_bulk_per_1000)
            if tier == "Bulk"
            else (self.restore_standard_per_gb, self.restore_standard_per_1000)
        )
        return objects / 1000 * per_1000 + size / GB * per_gb

    def download_cost(self, objects: int, size: int) -> float:
        """GET requests plus transfer out of AWS."""
        return objects / 1000 * self.get_per_1000 + size / GB * self.transfer_out_per_gb

    def archive_per_month(self, objects: int, size: int) -> float:
        """Storage of ``objects`` current versions of ``size`` bytes, with the overhead."""
        archived = size + objects * OVERHEAD_ARCHIVE_BYTES
        standard = objects * OVERHEAD_STANDARD_BYTES
        return (
            archived / GB * self.storage_per_gb_month
            + standard / GB * self.standard_storage_per_gb_month
        )

    def requests_cost(self, requests: int) -> float:
        return requests / 1000 * self.put_per_1000


# Requests billed at the PUT/LIST rate; GETs and HEADs are two orders cheaper.
BILLED_AS_PUT = {
    "PutObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "ListObjectVersions",
    "ListObjectsV2",
    "CreateBucket",
    "PutBucketVersioning",
    "PutBucketLifecycleConfiguration",
    "PutPublicAccessBlock",
    "PutBucketEncryption",
    "PutObjectLockConfiguration",
    "PutObjectRetention",  # extending Object Lock: one per current version when due
}


def usd(amount: float) -> str:
    """$12.34, $0.12, or $0.00012 for the small sums of small runs."""
    if amount == 0:
        return "$0"
    return f"${amount:.2f}" if amount >= 0.01 else f"${amount:.5f}"
