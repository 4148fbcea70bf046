"""Everything that talks to S3. Import the module you need:

- ``client``: connect (the run's one boto3 client), the Store, request counting,
  error texts;
- ``buckets``: create and check buckets (versioning, lifecycle, Object Lock, policy);
- ``upload``: single and multipart uploads, checksums, retentions (``parts`` sends
  the parts of one file in parallel windows, ``crt`` single PUTs through the AWS CRT);
- ``objects``: delete, list, HEAD, restore requests and downloads.

No other module of the package calls boto3 or the CRT (tests/test_architecture.py).
"""
