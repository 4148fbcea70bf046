"""Run the counting S3 proxy of the tests and benchmarks (testkit/proxy.py) on its own.

It counts S3 requests by operation (testkit/classify.py has the labels), adds
``--delay-ms`` of latency to every request and caps each connection at
``--bandwidth-mib`` MiB/s per direction; it binds 127.0.0.1 only. At Ctrl-C it
prints the counts.

    python benchmarks/proxy.py --upstream http://127.0.0.1:5000 --port 0 --delay-ms 20
    python benchmarks/proxy.py --upstream http://127.0.0.1:5000 --delay-ms 20 --bandwidth-mib 25
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testkit.proxy import S3Proxy  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="the S3 server, http://127.0.0.1:PORT")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to every request")
    parser.add_argument(
        "--bandwidth-mib", type=float, default=0.0, help="MiB/s per connection and direction"
    )
    args = parser.parse_args()
    proxy = S3Proxy(args.upstream, args.delay_ms, args.port, args.bandwidth_mib)
    print(proxy.url, flush=True)
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        print(dict(proxy.requests), flush=True)


if __name__ == "__main__":
    main()
