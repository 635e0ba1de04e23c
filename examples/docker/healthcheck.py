"""The image's HEALTHCHECK: exit 0 when dbvip's ``/healthz`` answers 200, else 1.

Asks the address in ``DBVIP_HTTP_LISTEN`` (the image sets it); a wildcard host
(0.0.0.0, [::]) is asked on loopback. Standard library only: the slim image
has no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def healthz_url(listen: str) -> str:
    host, _, port = listen.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    host = WILDCARDS.get(host, host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/healthz"


def main() -> int:
    listen = os.environ.get("DBVIP_HTTP_LISTEN", "")
    if not listen:
        print("healthcheck: DBVIP_HTTP_LISTEN is not set", file=sys.stderr)
        return 1
    url = healthz_url(listen)
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return 0 if reply.status == 200 else 1
    except (urllib.error.URLError, OSError) as e:
        print(f"healthcheck: {url}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
